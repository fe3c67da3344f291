"""BN-Inception / SE-BN-Inception and Inception-ResNet-v2 / SE-IRv2.

BN-Inception follows `SE-BN-Inception.prototxt` (docs/architectures.md) layer for
layer: ceil-mode max pools, 3x3 average pools that count the padding, and
(SE-BN-Inception) an SE unit on the concatenated output of each of the ten
Inception modules, with hidden width `C // 16`: 16, 20, 36, 36, 36, 38, 38,
66, 64, 64.

Inception-ResNet-v2 is timm's `inception_resnet_v2` function for function
(BN eps 1e-3, VALID convs and pools in the stem and reductions, mixed_5b's
average pool without the padding in the divisor, residual scales 0.17 /
0.10 / 0.20 and a last Block8 with scale 1 and no ReLU). SE-IRv2 applies
the paper's SE-ResNet schema to each of its 40 residual Inception blocks:

    out = act(x + scale * SE(conv2d(concat(branches))))

i.e. the SE unit gates the output of the block's 1x1 projection `conv2d`
(the end of the non-identity branch), before the residual scale and the
addition; the identity path is never gated. The stem and the three
non-residual modules (mixed_5b, mixed_6a, mixed_7a) carry no SE.

Counts (`stats.py`: conv and FC MACs, batch 1) next to the paper's Table 2:

    BN-Inception            224 px  11,285,224 params  2,032,600,064 MACs
                                    paper: 2.03 GFLOPs
    SE-BN-Inception         224 px  11,931,622 params  2,033,239,424 MACs
                                    (= the prototxt, architectures.md)
                                    paper: 2.04 GFLOPs
    Inception-ResNet-v2     299 px  55,843,464 params  13,155,794,016 MACs
                                    (= timm) paper: 11.75 GFLOPs
    SE-Inception-ResNet-v2  299 px  64,387,444 params  13,164,289,376 MACs
                                    paper: 11.76 GFLOPs

Gaps. SE-BN-Inception's SE FCs add 0.0006 G and its gating multiplies
0.0012 G (2.0344 G, still 2.03); the printed 2.04 needs the squeeze's
adds counted as well (+0.0012 G: 2.0356). VGG's and MobileNet's SE figures
are met by the gating multiplies alone (vgg.py, mobilenet.py), so the
paper's convention is not uniform. Inception-ResNet-v2's 13.16 G (timm's
figure too) exceeds the paper's 11.75 by 12%, which no per-layer counting
convention closes (every other op adds to it); the paper's re-
implementation must differ from the TF/timm network in a way it does not
describe. Its SE increment, +0.0085 G in the FCs, is the paper's +0.01
(the gating multiplies, 11,539,840, would make it +0.02). The paper prints
no parameter count for either pair.
"""

import functools
from typing import Any, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from se_flax import layers
from se_flax.layers import ModuleDef
from se_flax.models import base

Kernel = Union[int, Tuple[int, int]]


class ConvBN(nn.Module):
  """Conv (no bias) -> BN -> ReLU: timm's ConvNormAct, Caffe's conv/BN/Scale.

  `padding=None` pads `k // 2` per axis (Caffe `pad`, PyTorch `padding`);
  0 is a VALID conv.
  """

  features: int
  kernel_size: Kernel
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  padding: Optional[int] = None

  @nn.compact
  def __call__(self, x):
    x = self.conv(
        self.features,
        self.kernel_size,
        self.strides,
        padding=self.padding,
        name='conv',
    )(x)
    return nn.relu(self.norm('bn')(x))


def _cat(*branches):
  return jnp.concatenate(branches, axis=-1)


# --------------------------------------------------------------------------
# BN-Inception (Caffe, SE-BN-Inception.prototxt).
# --------------------------------------------------------------------------

# name, 1x1, 3x3 (reduce, out), double 3x3 (reduce, out), pool, pool_proj,
# stride. A stride-2 module has no 1x1 and no projection (docs/architectures.md).
_BN_INCEPTION_MODULES = (
    ('inception_3a', 64, (64, 64), (64, 96), 'avg', 32, 1),
    ('inception_3b', 64, (64, 96), (64, 96), 'avg', 64, 1),
    ('inception_3c', 0, (128, 160), (64, 96), 'max', 0, 2),
    ('inception_4a', 224, (64, 96), (96, 128), 'avg', 128, 1),
    ('inception_4b', 192, (96, 128), (96, 128), 'avg', 128, 1),
    ('inception_4c', 160, (128, 160), (128, 160), 'avg', 128, 1),
    ('inception_4d', 96, (128, 192), (160, 192), 'avg', 128, 1),
    ('inception_4e', 0, (128, 192), (192, 256), 'max', 0, 2),
    ('inception_5a', 352, (192, 320), (160, 224), 'avg', 128, 1),
    ('inception_5b', 352, (192, 320), (192, 224), 'max', 128, 1),
)


class BNInceptionModule(nn.Module):
  """One BN-Inception module, NHWC in and out, SE on the concatenation.

  Branches, concatenated in the prototxt's order: 1x1; 1x1 -> 3x3; 1x1 ->
  3x3 -> 3x3; 3x3 pool (-> 1x1 projection). A stride-2 (reduction) module
  drops the 1x1 branch and the projection and strides the last 3x3 of each
  conv branch; its pool is Caffe's ceil-mode 3x3/2 max pool.
  """

  b1x1: int
  b3x3: Tuple[int, int]
  double3x3: Tuple[int, int]
  pool: str
  pool_proj: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  se: Optional[ModuleDef]

  @nn.compact
  def __call__(self, x):
    unit = functools.partial(ConvBN, conv=self.conv, norm=self.norm)
    s = self.strides
    branches = []
    if self.b1x1:
      branches.append(unit(self.b1x1, 1, name='b1x1')(x))
    y = unit(self.b3x3[0], 1, name='b3x3_reduce')(x)
    branches.append(unit(self.b3x3[1], 3, strides=s, name='b3x3')(y))
    y = unit(self.double3x3[0], 1, name='double3x3_reduce')(x)
    y = unit(self.double3x3[1], 3, name='double3x3a')(y)
    branches.append(unit(self.double3x3[1], 3, strides=s, name='double3x3b')(y))
    if s > 1:
      y = layers.max_pool_ceil(x, 3, s)
      if y.shape[1:3] != branches[-1].shape[1:3]:
        # Caffe would refuse this concat too: a 3x3/2 pad-1 conv and a
        # ceil-mode 3x3/2 pool disagree on odd inputs.
        raise ValueError(
            f'{self.name}: input {x.shape[1:3]} gives conv branches '
            f'{branches[-1].shape[1:3]} but the pool {y.shape[1:3]}; '
            'BN-Inception needs an even size here (e.g. 224 px images)'
        )
    elif self.pool == 'avg':
      y = layers.avg_pool(x, 3, 1, padding=1, count_include_pad=True)
    else:
      y = layers.max_pool_padded(x, 3, 1, padding=1)
    if self.pool_proj:
      y = unit(self.pool_proj, 1, name='pool_proj')(y)
    branches.append(y)
    out = _cat(*branches)
    if self.se is not None:
      out = self.se(name='se')(out)
    return out


class BNInception(base.Network):
  """BN-Inception (Ioffe & Szegedy 2015) as Caffe's SE-BN-Inception defines it.

  NHWC images, 224 px at training in the paper (BGR 0-255 minus the means
  104/117/123 for the Caffe weights); returns float32 logits.

  Attributes (and those of `base.Network`):
    se: SqueezeExcite factory (one unit per Inception module, on its
      concatenated output) or None for the plain BN-Inception.
    drop_rate: dropout before the classifier (training only; the deploy
      prototxt has none).
    bn_momentum, bn_epsilon: BatchNorm settings (Flax convention; Caffe's
      eps is 1e-5).
  """

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Args: x: (N, H, W, 3) images. Returns: (N, num_classes) float32."""
    layers.check_nhwc(x, type(self).__name__)
    conv, norm, se = self.layer_factories(train)
    unit = functools.partial(ConvBN, conv=conv, norm=norm)
    x = x.astype(self.dtype)
    x = unit(64, 7, strides=2, name='conv1')(x)
    x = layers.max_pool_ceil(x)
    x = unit(64, 1, name='conv2_reduce')(x)
    x = unit(192, 3, name='conv2')(x)
    x = layers.max_pool_ceil(x)
    for name, b1x1, b3x3, double3x3, pool, proj, s in _BN_INCEPTION_MODULES:
      x = BNInceptionModule(
          b1x1, b3x3, double3x3, pool, proj, s, conv, norm, se, name=name
      )(x)
    # Caffe's pool5/7x7_s1 is this global mean at 224 px.
    x = layers.global_avg_pool(x)
    return self.classify(x, train=train)


# --------------------------------------------------------------------------
# Inception-ResNet-v2 (timm inception_resnet_v2).
# --------------------------------------------------------------------------


class Mixed5b(nn.Module):
  """35x35 stem module: 192 -> 320 channels."""

  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x):
    unit = functools.partial(ConvBN, conv=self.conv, norm=self.norm)
    x0 = unit(96, 1, name='branch0')(x)
    x1 = unit(48, 1, name='branch1_0')(x)
    x1 = unit(64, 5, name='branch1_1')(x1)
    x2 = unit(64, 1, name='branch2_0')(x)
    x2 = unit(96, 3, name='branch2_1')(x2)
    x2 = unit(96, 3, name='branch2_2')(x2)
    # timm (from TF): the border windows average only the real pixels.
    x3 = layers.avg_pool(x, 3, 1, padding=1, count_include_pad=False)
    x3 = unit(64, 1, name='branch3_1')(x3)
    return _cat(x0, x1, x2, x3)


class Mixed6a(nn.Module):
  """Reduction 35 -> 17: 320 -> 1088 channels (VALID 3x3/2 convs, pool)."""

  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x):
    unit = functools.partial(ConvBN, conv=self.conv, norm=self.norm)
    x0 = unit(384, 3, strides=2, padding=0, name='branch0')(x)
    x1 = unit(256, 1, name='branch1_0')(x)
    x1 = unit(256, 3, name='branch1_1')(x1)
    x1 = unit(384, 3, strides=2, padding=0, name='branch1_2')(x1)
    x2 = layers.max_pool_padded(x, 3, 2, padding=0)
    return _cat(x0, x1, x2)


class Mixed7a(nn.Module):
  """Reduction 17 -> 8: 1088 -> 2080 channels."""

  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x):
    unit = functools.partial(ConvBN, conv=self.conv, norm=self.norm)
    x0 = unit(256, 1, name='branch0_0')(x)
    x0 = unit(384, 3, strides=2, padding=0, name='branch0_1')(x0)
    x1 = unit(256, 1, name='branch1_0')(x)
    x1 = unit(288, 3, strides=2, padding=0, name='branch1_1')(x1)
    x2 = unit(256, 1, name='branch2_0')(x)
    x2 = unit(288, 3, name='branch2_1')(x2)
    x2 = unit(320, 3, strides=2, padding=0, name='branch2_2')(x2)
    x3 = layers.max_pool_padded(x, 3, 2, padding=0)
    return _cat(x0, x1, x2, x3)


# Branches of the residual blocks: (name, features, kernel) chains.
_BLOCK35 = (
    (('branch0', 32, 1),),
    (('branch1_0', 32, 1), ('branch1_1', 32, 3)),
    (('branch2_0', 32, 1), ('branch2_1', 48, 3), ('branch2_2', 64, 3)),
)
_BLOCK17 = (
    (('branch0', 192, 1),),
    (
        ('branch1_0', 128, 1),
        ('branch1_1', 160, (1, 7)),
        ('branch1_2', 192, (7, 1)),
    ),
)
_BLOCK8 = (
    (('branch0', 192, 1),),
    (
        ('branch1_0', 192, 1),
        ('branch1_1', 224, (1, 3)),
        ('branch1_2', 256, (3, 1)),
    ),
)
_BLOCKS = {'block35': _BLOCK35, 'block17': _BLOCK17, 'block8': _BLOCK8}


class InceptionResBlock(nn.Module):
  """Block35 / Block17 / Block8: `act(x + scale * SE(conv2d(concat)))`.

  The residual branch is the concatenated Inception branches projected back
  to the input width by `conv2d`, a 1x1 conv with bias and no BN. The SE
  unit (SE-IRv2) gates that projection: the whole non-identity branch, as
  the paper's SE-ResNet module, before the residual scale and the sum.

  Attributes:
    kind: 'block35', 'block17' or 'block8'.
    scale: residual scale (0.17, 0.10, 0.20; 1.0 for the last Block8).
    activate: ReLU after the sum (False only for the last Block8).
  """

  kind: str
  scale: float
  activate: bool
  conv: ModuleDef
  norm: ModuleDef
  se: Optional[ModuleDef]

  @nn.compact
  def __call__(self, x):
    unit = functools.partial(ConvBN, conv=self.conv, norm=self.norm)
    branches = []
    for chain in _BLOCKS[self.kind]:
      y = x
      for name, features, kernel in chain:
        y = unit(features, kernel, name=name)(y)
      branches.append(y)
    y = self.conv(x.shape[-1], 1, use_bias=True, name='conv2d')(_cat(*branches))
    if self.se is not None:
      y = self.se(name='se')(y)
    out = y * self.scale + x  # timm's order of operations.
    return nn.relu(out) if self.activate else out


class InceptionResNetV2(base.Network):
  """Inception-ResNet-v2 (Szegedy et al. 2016) as timm implements it.

  NHWC images (299 px in the paper and timm); returns float32 logits. The
  stem and the reductions use VALID convs and floor-mode 3x3/2 max pools,
  so the grid at 299 px is 149, 147, 73, 71, 35, 17, 8.

  Attributes (and those of `base.Network`):
    repeats: Block35 / Block17 / Block8 counts before the last Block8
      (10, 20, 9); smaller values give test-size networks.
    scales: residual scales of those blocks.
    se: SqueezeExcite factory for every residual block (see the module
      docstring for where), or None for the plain network.
    bn_momentum, bn_epsilon: BatchNorm settings (timm/TF eps: 1e-3).
  """

  repeats: Sequence[int] = (10, 20, 9)
  scales: Sequence[float] = (0.17, 0.10, 0.20)
  bn_epsilon: float = 1e-3

  def __post_init__(self):
    # Fail at construction, not in the middle of tracing.
    if len(self.repeats) != 3 or len(self.scales) != 3:
      raise ValueError(
          'repeats and scales need one entry per block type '
          f'(35, 17, 8), got {self.repeats}, {self.scales}'
      )
    super().__post_init__()

  def backbone(self, x: jax.Array, *, train: bool) -> list[jax.Array]:
    """(N, H, W, 3) -> timm's `features_only` maps, NHWC: conv2d_2b
    (stride 2), conv2d_4a (4), the Block35s (8), the Block17s (16) and
    conv2d_7b (32)."""
    conv, norm, se = self.layer_factories(train)
    unit = functools.partial(ConvBN, conv=conv, norm=norm)
    block = functools.partial(InceptionResBlock, conv=conv, norm=norm, se=se)
    x = unit(32, 3, strides=2, padding=0, name='conv2d_1a')(x)
    x = unit(32, 3, padding=0, name='conv2d_2a')(x)
    x = unit(64, 3, name='conv2d_2b')(x)
    maps = [x]
    x = layers.max_pool_padded(x, 3, 2, padding=0)
    x = unit(80, 1, name='conv2d_3b')(x)
    x = unit(192, 3, padding=0, name='conv2d_4a')(x)
    maps.append(x)
    x = layers.max_pool_padded(x, 3, 2, padding=0)
    x = Mixed5b(conv, norm, name='mixed_5b')(x)
    stages = (
        ('block35', Mixed6a, 'mixed_6a'),
        ('block17', Mixed7a, 'mixed_7a'),
        ('block8', None, None),
    )
    for (kind, reduction, name), repeat, scale in zip(
        stages, self.repeats, self.scales
    ):
      for i in range(repeat):
        x = block(kind, scale, True, name=f'{kind}_{i}')(x)
      if reduction is not None:
        maps.append(x)
        x = reduction(conv, norm, name=name)(x)
    x = block('block8', 1.0, False, name='block8')(x)
    maps.append(unit(1536, 1, name='conv2d_7b')(x))
    return maps

  @nn.nowrap
  def feature_info(self) -> list[dict[str, Any]]:
    """timm's `feature_info` (`repeat`, `repeat_1`: its Block35 and
    Block17 Sequentials)."""
    return [
        dict(num_chs=64, reduction=2, module='conv2d_2b'),
        dict(num_chs=192, reduction=4, module='conv2d_4a'),
        dict(num_chs=320, reduction=8, module='repeat'),
        dict(num_chs=1088, reduction=16, module='repeat_1'),
        dict(num_chs=1536, reduction=32, module='conv2d_7b'),
    ]


_SE = dict(hidden_rule='floor', reduction=16)
BN_INCEPTION_CONFIGS = {
    'bn_inception': dict(se=None),
    'se_bn_inception': dict(se=_SE),
}
INCEPTION_RESNET_V2_CONFIGS = {
    'inception_resnet_v2': dict(se=None),
    'se_inception_resnet_v2': dict(se=_SE),
}
