"""ShuffleNet (v1) and SE-ShuffleNet, the paper's "ShuffleNet 1x (g = 3)".

timm has no ShuffleNet v1; this one is built from Zhang et al. 2017
(Table 1 and Fig. 2), with the conventions of Megvii's released PyTorch
code where the paper is silent:

- stem: 3x3/2 conv to 24 -> BN -> ReLU -> 3x3/2 max pool (padding 1);
- three stages of 4 / 8 / 4 units, widths 240 / 480 / 960 for g = 3, the
  first unit of each strided;
- unit: grouped 1x1 (bottleneck = stage width / 4) -> BN -> ReLU ->
  channel shuffle -> 3x3 depthwise (stride s) -> BN (no ReLU) -> grouped
  1x1 -> BN; stride 1: `ReLU(x + branch)`; stride 2: `ReLU(concat(avgpool
  3x3/2 (x), branch))` with the branch producing `width - C_in` channels;
- the very first 1x1 (24 input channels) is not grouped, and its output
  is not shuffled (there are no groups to mix);
- global average -> FC 960 -> 1000 (with bias).

SE-ShuffleNet puts the SE unit (hidden C // 16) at the end of each unit's
residual branch, after its last BN and before the add / concat, as in
SE-ResNet. The paper's printed parameters decide this placement:

    branch widths C: 216, 240 x 3 | 240, 480 x 7 | 480, 960 x 3
    SE (weights + biases): 5,845 + 3*7,455 + 7,455 + 7*29,310 + 29,310
                         + 3*116,220 = 618,805
    ShuffleNet 1,865,728 -> SE-ShuffleNet 2,484,533

The paper prints 1.8M -> 2.4M. Rounded to one decimal these counts are
1.9M -> 2.5M; cut (not rounded) they are the paper's 1.8M -> 2.4M, and the
SE increment, +0.62M, is the paper's +0.6M. No SE placement changes the
base (Megvii's bias-free classifier would give 1,864,728), and the other
natural placement, SE on the unit outputs after the add / concat (C = 240 x
4, 480 x 8, 960 x 4), adds 729,180: 2.59M, which neither rounds nor cuts to
2.4M. (MobileNet's 4.23 -> 4.72 prints as 4.2 -> 4.7 either way; the
ResNet figures, 25.56 -> 25.6, are rounded.)

MACs at 224 px: 137,460,672 for ShuffleNet. The paper's 140 MFLOPs is the
name of ShuffleNet's complexity level; ShuffleNet's own Table 1 gives 137 M
for 1x, g = 3. SE adds 610,416 MACs in its FCs and gates 1,604,064
elements: 137.46 + 0.61 + 1.60 = 139.68, i.e. +2.2 M against the paper's
140 -> 142.
"""

import functools
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from se_flax import layers
from se_flax.layers import ModuleDef
from se_flax.models import base


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
  """ShuffleNet's channel shuffle (NHWC): (g, C/g) -> transpose -> flatten.

  Output channel `i * g + j` is input channel `j * (C / g) + i`, so each
  group of the next grouped conv sees one channel from every group.
  """
  n, h, w, c = x.shape
  x = x.reshape(n, h, w, groups, c // groups)
  return jnp.swapaxes(x, 3, 4).reshape(n, h, w, c)


class ShuffleUnit(nn.Module):
  """One ShuffleNet unit; see the module docstring.

  Attributes:
    features: channels out of the unit (the stage width).
    strides: 1 (residual add) or 2 (concat with the pooled input).
    groups: g of the grouped 1x1 convs.
    group_first: whether the first 1x1 is grouped (False only for the
      first unit of the network).
  """

  features: int
  strides: int
  groups: int
  group_first: bool
  conv: ModuleDef
  norm: ModuleDef
  se: Optional[ModuleDef]

  @nn.compact
  def __call__(self, x):
    in_features = x.shape[-1]
    mid = self.features // 4
    out = self.features - in_features if self.strides == 2 else self.features
    y = self.conv(
        mid, 1, groups=self.groups if self.group_first else 1, name='conv1'
    )(x)
    y = nn.relu(self.norm('bn1')(y))
    if self.group_first:
      y = channel_shuffle(y, self.groups)
    y = self.conv(mid, 3, self.strides, groups=mid, name='conv2')(y)
    y = self.norm('bn2')(y)
    y = self.conv(out, 1, groups=self.groups, name='conv3')(y)
    y = self.norm('bn3')(y)
    if self.se is not None:
      y = self.se(name='se')(y)
    if self.strides == 1:
      return nn.relu(x + y)
    shortcut = layers.avg_pool(x, 3, 2, padding=1, count_include_pad=True)
    return nn.relu(jnp.concatenate([shortcut, y], axis=-1))


class ShuffleNetV1(base.Network):
  """ShuffleNet v1 on NHWC images; returns float32 logits.

  Attributes (and those of `base.Network`):
    groups: g of the grouped 1x1 convs (the paper's SE-ShuffleNet: 3).
    stage_widths: output channels per stage (g = 3, 1x: 240, 480, 960).
    stage_sizes: units per stage (4, 8, 4).
    stem_width: channels of the 3x3/2 stem conv (24).
    se: SqueezeExcite factory (end of every unit's branch) or None.
  """

  groups: int = 3
  stage_widths: Sequence[int] = (240, 480, 960)
  stage_sizes: Sequence[int] = (4, 8, 4)
  stem_width: int = 24

  def __post_init__(self):
    # Fail at construction, not in the middle of tracing.
    if len(self.stage_widths) != len(self.stage_sizes):
      raise ValueError(
          'stage_widths and stage_sizes differ in length: '
          f'{self.stage_widths} vs {self.stage_sizes}'
      )
    if any(w % (4 * self.groups) for w in self.stage_widths):
      raise ValueError(
          f'stage widths {self.stage_widths} must be multiples '
          f'of 4 * groups = {4 * self.groups} (bottleneck w/4 '
          'in grouped convs)'
      )
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Args: x: (N, H, W, 3) images. Returns: (N, num_classes) float32."""
    layers.check_nhwc(x, type(self).__name__)
    conv, norm, se = self.layer_factories(train)
    unit = functools.partial(
        ShuffleUnit, groups=self.groups, conv=conv, norm=norm, se=se
    )
    x = x.astype(self.dtype)
    x = conv(self.stem_width, 3, 2, name='conv1')(x)
    x = nn.relu(norm('bn1')(x))
    x = layers.max_pool_padded(x, 3, 2, padding=1)
    for i, (width, size) in enumerate(zip(self.stage_widths, self.stage_sizes)):
      for j in range(size):
        x = unit(
            width,
            2 if j == 0 else 1,
            group_first=i > 0 or j > 0,
            name=f'stage{i + 2}_unit{j}',
        )(x)
    x = layers.global_avg_pool(x)
    return self.classify(x, train=train)


# The registry entries. `se` holds SqueezeExcite fields (None: no SE).
CONFIGS = {
    'shufflenet_g3': dict(se=None),
    'se_shufflenet_g3': dict(se=dict(hidden_rule='floor', reduction=16)),
}
