"""MobileNet (v1) and SE-MobileNet, the paper's "1.0 MobileNet-224" (Table 3).

The plain network is timm's `mobilenetv1_100` function for function, which
is also Howard et al.'s Table 1 network: a 3x3/2 conv to 32 channels, then
13 depthwise-separable blocks (3x3 depthwise -> BN -> ReLU6 -> 1x1
pointwise -> BN -> ReLU6, no skip), global average and one FC 1024 -> 1000
with bias. Differences from the MobileNet paper, none in the counts: ReLU6
(TF-slim and timm) where the paper's figure says ReLU, PyTorch's symmetric
padding for the stride-2 convs (TF uses 'SAME'), and the classifier is the
paper's 1000-way FC, not TF-slim's 1001-way 1x1 conv.

SE-MobileNet: one SE unit (hidden C // 16) on the output of every block,
after the pointwise conv's ReLU6 ("after the non-linearity", as for VGG;
MobileNet has no residual to sit in front of). The paper's 4.7M decides
the placement:

    block outputs C:   64, 128 x 2, 256 x 2, 512 x 6, 1024 x 2
    SE weights 2C^2/16: 512 + 2*2,048 + 2*8,192 + 6*32,768 + 2*131,072
                      = 479,744 (+ 6,324 biases)
    4,231,976 + 486,068 = 4,718,044 -> 4.7M (paper: 4.2M -> 4.7M)

SE after the depthwise conv instead (C = 32, 64, 128 x 2, 256 x 2, 512 x 6,
1024) would add 354,070 (348,800 weights): 4.59M, printed 4.6M, not the
paper's.

MACs at 224 px: 568,740,352 for MobileNet (569 M, the paper's 569 MFLOPs).
SE adds 479,744 MACs in its FCs and gates 2,709,504 elements: 568.74 +
0.48 + 2.71 = 571.93 -> 572, the paper's SE-MobileNet figure when the
gating multiply is counted (the FCs alone would print 569).
"""

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax

from se_flax.layers import ModuleDef
from se_flax.models import base

# Pointwise widths per stage; each stage but the first starts with stride 2
# (timm's `blocks.0` .. `blocks.4`).
MOBILENET_V1 = ((64,), (128, 128), (256, 256), (512,) * 6, (1024, 1024))


class DepthwiseSeparable(nn.Module):
  """3x3 depthwise -> BN -> ReLU6 -> 1x1 -> BN -> ReLU6 (-> SE)."""

  features: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  se: Optional[ModuleDef]

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    x = self.conv(channels, 3, self.strides, groups=channels, name='conv_dw')(x)
    x = nn.relu6(self.norm('bn1')(x))
    x = self.conv(self.features, 1, name='conv_pw')(x)
    x = nn.relu6(self.norm('bn2')(x))
    if self.se is not None:
      x = self.se(name='se')(x)
    return x


class MobileNetV1(base.Network):
  """MobileNet v1 on NHWC images; returns float32 logits.

  Attributes (and those of `base.Network`):
    stages: pointwise widths per stage (stride 2 at the start of every
      stage after the first).
    stem_width: channels of the 3x3/2 stem conv.
    se: SqueezeExcite factory (after every block) or None.
  """

  stages: Sequence[Sequence[int]] = MOBILENET_V1
  stem_width: int = 32

  def backbone(self, x: jax.Array, *, train: bool) -> list[jax.Array]:
    """(N, H, W, 3) -> each stage's output (strides 2, 4, .., 32), NHWC:
    timm's `features_only` maps (`blocks.0` .. `blocks.4`)."""
    conv, norm, se = self.layer_factories(train)
    block = functools.partial(DepthwiseSeparable, conv=conv, norm=norm, se=se)
    x = conv(self.stem_width, 3, 2, name='conv_stem')(x)
    x = nn.relu6(norm('bn1')(x))
    maps = []
    for i, widths in enumerate(self.stages):
      for j, features in enumerate(widths):
        strides = 2 if i > 0 and j == 0 else 1
        x = block(features, strides, name=f'stage{i}_block{j}')(x)
      maps.append(x)
    return maps

  @nn.nowrap
  def feature_info(self) -> list[dict[str, Any]]:
    """timm's `feature_info`: one map per stage, `blocks.{i}`."""
    return [
        dict(num_chs=widths[-1], reduction=2 ** (i + 1), module=f'blocks.{i}')
        for i, widths in enumerate(self.stages)
    ]


# The registry entries. `se` holds SqueezeExcite fields (None: no SE).
CONFIGS = {
    'mobilenetv1_100': dict(se=None),
    'se_mobilenetv1_100': dict(se=dict(hidden_rule='floor', reduction=16)),
}
