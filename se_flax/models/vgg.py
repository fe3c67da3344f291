"""VGG-16 with BatchNorm and SE-VGG-16 (paper Table 2: "trained with BN").

The plain network is timm's `vgg16_bn` function for function: thirteen
3x3 convs (with bias) -> BN -> ReLU in five stages closed by 2x2/2 max
pools, then timm's convolutional head (`ConvMlp`): fc1 a 7x7 VALID conv to
4096 -> ReLU -> dropout -> fc2 a 1x1 conv -> ReLU -> global average ->
dropout -> fc. At 224 px the head sees exactly 7x7 and is torchvision's
Linear 25088 -> 4096 -> 4096 -> 1000; a feature map smaller than 7 is first
resized by PyTorch's adaptive average pool to `max(7, H) x max(7, W)`.

SE-VGG-16 places an SE unit "after the non-linearity following each conv"
(paper §6): after every conv -> BN -> ReLU of the thirteen, so 13 units
(widths 64, 64, 128, 128, 256 x 3, 512 x 6, hidden C // 16).

Counts at 224 px (batch 1; see `stats.py`): VGG-16-BN has 138,365,992
parameters and 15,470,264,320 MACs, the paper's 15.47 GFLOPs. The SE units
add 230,792 parameters (226,304 weights + 4,488 biases), 226,304 MACs and
gate 13,547,520 elements. The paper's 15.48 for SE-VGG-16 is matched when
the gating multiply is counted as well: 15.4705 + 0.0135 = 15.484 G (the
SE FCs alone reach only 15.4705, which prints as 15.47). The paper gives no
parameter count for either.
"""

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax

from se_flax import layers
from se_flax.layers import ModuleDef
from se_flax.models import base

# Conv widths per stage (VGG "configuration D" = VGG-16).
VGG16 = (
    (64, 64),
    (128, 128),
    (256, 256, 256),
    (512, 512, 512),
    (512, 512, 512),
)


class ConvUnit(nn.Module):
  """3x3 conv (with bias) -> BN -> ReLU (-> SE), the unit of VGG-BN."""

  features: int
  conv: ModuleDef
  norm: ModuleDef
  se: Optional[ModuleDef]

  @nn.compact
  def __call__(self, x):
    x = self.conv(self.features, 3, use_bias=True, name='conv')(x)
    x = nn.relu(self.norm('bn')(x))
    if self.se is not None:
      x = self.se(name='se')(x)
    return x


class VGG(base.Network):
  """VGG with BatchNorm on NHWC images; returns float32 logits.

  Attributes (and those of `base.Network`):
    stages: conv widths per stage; each stage ends with a 2x2/2 max pool.
    head_width: width of the two hidden FCs (4096).
    head_kernel: fc1's kernel, the grid it expects (7).
    se: SqueezeExcite factory (after every conv's ReLU) or None.
    drop_rate: dropout after fc1's ReLU and before the classifier, as in
      timm (0 by default; the original VGG trained with 0.5).
  """

  stages: Sequence[Sequence[int]] = VGG16
  head_width: int = 4096
  head_kernel: int = 7

  def backbone(self, x: jax.Array, *, train: bool) -> list[jax.Array]:
    """(N, H, W, 3) -> timm's `features_only` maps, NHWC.

    Each stage's output before its max pool (strides 1, 2, 4, 8, 16), then
    the last pool's (32), which feeds the head.
    """
    conv, norm, se = self.layer_factories(train)
    unit = functools.partial(ConvUnit, conv=conv, norm=norm, se=se)
    maps = []
    for i, widths in enumerate(self.stages, start=1):
      for j, features in enumerate(widths, start=1):
        x = unit(features, name=f'conv{i}_{j}')(x)
      maps.append(x)
      x = layers.max_pool_padded(x, 2, 2, padding=0)
    maps.append(x)
    return maps

  def pool(self, x: jax.Array, *, train: bool) -> jax.Array:
    """timm's ConvMlp + global average: (N, h, w, C) -> (N, head_width).

    The classifier's dropout follows in `classify` (timm's `forward_head(
    ..., pre_logits=True)` has applied it already).
    """
    conv, _, _ = self.layer_factories(train)
    k = self.head_kernel
    h, w = x.shape[1:3]
    if h < k or w < k:
      # timm keeps fc1's input at least k x k (small images, 32x upsampled
      # in effect); PyTorch's adaptive bins, not a resize.
      x = layers.adaptive_avg_pool(x, (max(k, h), max(k, w)))
    x = conv(self.head_width, k, padding=0, use_bias=True, name='fc1')(x)
    x = nn.relu(x)
    x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
    x = nn.relu(conv(self.head_width, 1, use_bias=True, name='fc2')(x))
    return layers.global_avg_pool(x)

  @nn.nowrap
  def feature_info(self) -> list[dict[str, Any]]:
    """timm's `feature_info`: the ReLU closing each stage, then the pool.

    timm's names index its `features` Sequential: (conv, BN, ReLU) per
    conv and a max pool per stage.
    """
    info, index = [], -1
    for i, widths in enumerate(self.stages):
      index += 3 * len(widths)
      info.append(
          dict(num_chs=widths[-1], reduction=2**i, module=f'features.{index}')
      )
      index += 1
    info.append(
        dict(
            num_chs=self.stages[-1][-1],
            reduction=2 ** len(self.stages),
            module=f'features.{index}',
        )
    )
    return info


# The registry entries. `se` holds SqueezeExcite fields (None: no SE).
CONFIGS = {
    'vgg16_bn': dict(se=None),
    'se_vgg16_bn': dict(se=dict(hidden_rule='floor', reduction=16)),
}
