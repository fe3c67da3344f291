"""ResNet, ResNeXt, SE-ResNet, SE-ResNeXt and SENet-154 in one definition.

One `ResNet` covers both conventions of the released weights:
- Caffe / paper (timm `legacy_*`): stride on the first 1x1 conv of SE-ResNet
  bottlenecks, ceil-mode 3x3/2 max pool without padding;
- torchvision / timm `resnet.py` ("v1.5"): stride on the 3x3 conv, max pool
  padded by one.
SE-ResNeXt and SENet-154 put the stride on the grouped 3x3 conv in both.
`se=None` gives the plain baseline of the same network.
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax

from se_flax import layers
from se_flax.layers import ModuleDef
from se_flax.layers import drop_path as drop_path_lib
from se_flax.models import base

SE_POSITIONS = ('standard', 'pre', 'post', 'identity', '3x3')


class Block(nn.Module):
  """A residual block: basic (two 3x3) or bottleneck (1x1, 3x3, 1x1).

  Attributes:
    planes: base width p; the block outputs p (basic) or 4p (bottleneck).
    width: channels of the 3x3 conv(s); `conv1_width` those of the first
      conv of a bottleneck (SENet-154 halves it).
    strides: spatial stride of the block.
    stride_on: '1x1' (Caffe SE-ResNet) or '3x3' (everything else).
    groups: cardinality of the bottleneck's 3x3 conv.
    downsample_kernel: kernel of the projection shortcut when it strides
      (1, or 3 in SENet-154); a stride-1 projection is always 1x1.
    relu_before_se: the legacy SE-ResNet-18/34 quirk.
    se: SE factory or None; se_position: one of `SE_POSITIONS`.
    drop_path_rate: stochastic depth of the branch (timm's `DropPath`:
      after SE, before the add); applied unless `deterministic`.
  """

  planes: int
  bottleneck: bool
  width: int
  conv1_width: int
  strides: int
  stride_on: str
  groups: int
  downsample_kernel: int
  relu_before_se: bool
  zero_init_last_bn: bool
  conv: ModuleDef
  norm: ModuleDef
  se: Optional[ModuleDef]
  se_position: str
  drop_path_rate: float = 0.0
  deterministic: bool = True

  @nn.compact
  def __call__(self, x):
    out_features = self.planes * 4 if self.bottleneck else self.planes
    se = self.se if self.se is not None else None
    last_bn_init = (
        nn.initializers.zeros
        if self.zero_init_last_bn
        else nn.initializers.ones
    )

    # Standard SE right after the branch's last BN: one fused layer in
    # training (`layers.excite_after_norm`).
    se_after_bn = (
        se is not None
        and self.se_position == 'standard'
        and not self.relu_before_se
    )

    def last_bn(name, y):
      norm = self.norm(name, scale_init=last_bn_init)
      if se_after_bn:
        return layers.excite_after_norm(norm, se(name='se'), y)
      return norm(y)

    branch_in = x
    if se is not None and self.se_position == 'pre':
      branch_in = se(name='se')(x)

    if self.bottleneck:
      stride1 = self.strides if self.stride_on == '1x1' else 1
      y = self.conv(self.conv1_width, 1, stride1, name='conv1')(branch_in)
      y = nn.relu(self.norm('bn1')(y))
      y = self.conv(
          self.width,
          3,
          self.strides // stride1,
          groups=self.groups,
          name='conv2',
      )(y)
      y = nn.relu(self.norm('bn2')(y))
      if se is not None and self.se_position == '3x3':
        y = se(name='se')(y)
      y = self.conv(out_features, 1, name='conv3')(y)
      y = last_bn('bn3', y)
    else:
      y = self.conv(self.width, 3, self.strides, name='conv1')(branch_in)
      y = nn.relu(self.norm('bn1')(y))
      if se is not None and self.se_position == '3x3':
        y = se(name='se')(y)
      y = self.conv(out_features, 3, name='conv2')(y)
      y = last_bn('bn2', y)
      if self.relu_before_se:
        y = nn.relu(y)

    if se is not None and self.se_position == 'standard' and not se_after_bn:
      y = se(name='se')(y)

    if self.drop_path_rate > 0.0 and not self.deterministic:
      y = drop_path_lib.DropPath(self.drop_path_rate, name='drop_path')(
          y, deterministic=False
      )

    shortcut = x
    if self.strides != 1 or x.shape[-1] != out_features:
      kernel = self.downsample_kernel if self.strides > 1 else 1
      shortcut = self.conv(
          out_features, kernel, self.strides, name='downsample_conv'
      )(x)
      shortcut = self.norm('downsample_bn')(shortcut)
    if se is not None and self.se_position == 'identity':
      shortcut = se(name='se')(shortcut)

    # Standard SE: XLA fuses the per-channel scale into this add (Caffe's
    # Axpy layer did the same by hand).
    out = nn.relu(y + shortcut)
    if se is not None and self.se_position == 'post':
      out = se(name='se')(out)
    return out


class ResNet(base.Network):
  """ResNet-family classifier on NHWC images; returns float32 logits.

  `features`, `pre_logits` and `head` (`base.Network`) run parts of it;
  `feature_info()` describes the feature maps as timm does.

  Attributes (and those of `base.Network`):
    stage_sizes: blocks per stage, e.g. (3, 4, 6, 3) for 50 layers.
    bottleneck: bottleneck blocks (50+ layers) or basic blocks (18/34).
    cardinality, base_width: ResNeXt groups and width per group; the 3x3
      width is `floor(planes * base_width / 64) * cardinality`.
    block_reduce_first: the first 1x1 conv has width / this (SENet-154: 2).
    stage_planes: base widths of the stages.
    stem: '7x7' (one 7x7/2 conv) or 'deep' (three 3x3 convs, SENet-154).
    stem_width: channels of the stem (deep stem: 64, 64, 2 * stem_width).
    stem_pool: 'ceil' (Caffe, `legacy_*`) or 'pad' (torchvision, timm).
    stride_on: '1x1' (Caffe SE-ResNet) or '3x3'.
    downsample_kernel: 3 for SENet-154's 3x3/2 projections, else 1.
    relu_before_se: legacy SE-ResNet-18/34 basic blocks.
    se_position: where SE sits in a block (paper Table 14/15).
    se_stages: 1-based stages that carry SE (paper Table 13).
    se_blocks_off: blocks without SE, by the paper's names SE_stage_block
      (stages conv2_x..conv5_x = 2..5, 1-based blocks), e.g.
      ('SE_5_2', 'SE_5_3'): the ablation §7.2 suggests.
    zero_init_last_bn: init the last BN scale of each branch to zero.
    drop_path_rate: stochastic depth (timm's `drop_path_rate`): the rate of
      the last block, linear in the block index from 0 at the first
      (`drop_path.block_rates`); training only, 'dropout' RNG stream.
  """

  stage_sizes: Sequence[int]
  bottleneck: bool = True
  cardinality: int = 1
  base_width: int = 64
  block_reduce_first: int = 1
  stage_planes: Sequence[int] = (64, 128, 256, 512)
  stem: str = '7x7'
  stem_width: int = 64
  stem_pool: str = 'pad'
  stride_on: str = '3x3'
  downsample_kernel: int = 1
  relu_before_se: bool = False
  se_position: str = 'standard'
  se_stages: Sequence[int] = (1, 2, 3, 4)
  se_blocks_off: Sequence[str] = ()
  zero_init_last_bn: bool = True
  drop_path_rate: float = 0.0

  def __post_init__(self):
    # Fail at construction (before any tracing) on a misnamed option.
    self._check_fields()
    super().__post_init__()

  def _check_fields(self):
    if self.stem not in ('7x7', 'deep'):
      raise ValueError(f"stem must be '7x7' or 'deep', got {self.stem!r}")
    if self.stem_pool not in ('ceil', 'pad'):
      raise ValueError(
          f"stem_pool must be 'ceil' or 'pad', got " f'{self.stem_pool!r}'
      )
    if self.stride_on not in ('1x1', '3x3'):
      raise ValueError(
          f"stride_on must be '1x1' or '3x3', got " f'{self.stride_on!r}'
      )
    if self.se_position not in SE_POSITIONS:
      raise ValueError(
          f'se_position must be one of {SE_POSITIONS}, got '
          f'{self.se_position!r}'
      )
    drop_path_lib.check_rate(self.drop_path_rate)
    if len(self.stage_planes) != len(self.stage_sizes):
      raise ValueError(
          'stage_planes and stage_sizes differ in length: '
          f'{self.stage_planes} vs {self.stage_sizes}'
      )
    blocks = {
        _paper_block_name(i, j)
        for i, n in enumerate(self.stage_sizes)
        for j in range(n)
    }
    unknown = sorted(set(self.se_blocks_off) - blocks)
    if isinstance(self.se_blocks_off, str) or unknown:
      raise ValueError(
          'se_blocks_off must name blocks as SE_stage_block, stages 2..'
          f'{len(self.stage_sizes) + 1}, got {self.se_blocks_off!r}'
      )

  def backbone(self, x: jax.Array, *, train: bool) -> list[jax.Array]:
    """(N, H, W, 3) -> [stem activation, stage 1, .., stage 4] NHWC maps.

    The stem's is taken before its max pool (stride 2), then the stages
    at strides 4, 8, 16, 32: timm's `features_only` maps.
    """
    conv, norm, se = self.layer_factories(train)
    x = Stem(self.stem, self.stem_width, conv, norm, name='stem')(x)
    maps = [x]
    if self.stem_pool == 'ceil':
      x = layers.max_pool_ceil(x)
    else:
      x = layers.max_pool_padded(x)
    rates = drop_path_lib.block_rates(self.drop_path_rate, self.stage_sizes)
    for i, (num_blocks, planes) in enumerate(
        zip(self.stage_sizes, self.stage_planes)
    ):
      width = int(planes * self.base_width / 64) * self.cardinality
      for j in range(num_blocks):
        x = Block(
            planes=planes,
            bottleneck=self.bottleneck,
            width=width,
            conv1_width=width // self.block_reduce_first,
            strides=2 if i > 0 and j == 0 else 1,
            stride_on=self.stride_on,
            groups=self.cardinality,
            downsample_kernel=self.downsample_kernel,
            relu_before_se=self.relu_before_se,
            zero_init_last_bn=self.zero_init_last_bn,
            conv=conv,
            norm=norm,
            se=(
                se
                if i + 1 in self.se_stages
                and _paper_block_name(i, j) not in self.se_blocks_off
                else None
            ),
            se_position=self.se_position,
            drop_path_rate=rates[i][j],
            deterministic=not train,
            name=f'stage{i + 1}_block{j}',
        )(x)
      maps.append(x)
    return maps

  @nn.nowrap
  def feature_info(self) -> list[dict[str, Any]]:
    """timm's `feature_info` of this network: the maps of `features`.

    Module names are those of timm's senet.py (`layer0`, the Caffe
    networks, which pool in ceil mode) or resnet.py (`act1`); both put the
    stem first (reduction 2), then `layer1`.. (4, 8, 16, 32).
    """
    caffe = self.stem_pool == 'ceil'  # The rule convert.py keys by too.
    stem_chs = 2 * self.stem_width if self.stem == 'deep' else self.stem_width
    info = [
        dict(
            num_chs=stem_chs, reduction=2, module='layer0' if caffe else 'act1'
        )
    ]
    for i, planes in enumerate(self.stage_planes):
      info.append(
          dict(
              num_chs=planes * 4 if self.bottleneck else planes,
              reduction=4 * 2**i,
              module=f'layer{i + 1}',
          )
      )
    return info


def _paper_block_name(stage: int, block: int) -> str:
  """0-based stage and block -> the paper's SE_stage_block ('SE_5_2')."""
  return f'SE_{stage + 2}_{block + 1}'


class Stem(nn.Module):
  """7x7/2 conv (or three 3x3 convs) + BN + ReLU; `ResNet` max-pools it."""

  kind: str
  width: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x):
    if self.kind == '7x7':
      x = self.conv(self.width, 7, 2, name='conv1')(x)
      return nn.relu(self.norm('bn1')(x))
    widths = (self.width, self.width, 2 * self.width)
    for k, features in enumerate(widths, start=1):
      x = self.conv(features, 3, 2 if k == 1 else 1, name=f'conv{k}')(x)
      x = nn.relu(self.norm(f'bn{k}')(x))
    return x


# The registry entries. `se` holds SqueezeExcite fields (None: no SE).
_TIMM = dict(stem_pool='pad', stride_on='3x3', zero_init_last_bn=True)
# Caffe / Cadene / timm `senet.py`; timm adds dropout 0.2 to every legacy
# model, the Caffe networks only to SENet-154 (see the paper aliases below).
_LEGACY = dict(
    stem_pool='ceil', stride_on='1x1', zero_init_last_bn=False, drop_rate=0.2
)
_SE_TIMM = dict(hidden_rule='divisible', divisor=8)
_SE_PAPER = dict(hidden_rule='floor')
_DEPTHS = {
    18: (2, 2, 2, 2),
    26: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
_RESNEXT = dict(cardinality=32, base_width=4)
_SENET154 = dict(
    stage_sizes=_DEPTHS[152],
    cardinality=64,
    base_width=4,
    block_reduce_first=2,
    stem='deep',
    downsample_kernel=3,
    stride_on='3x3',
)


def _resnet(depth, **kwargs):
  return dict(
      stage_sizes=_DEPTHS[depth], bottleneck=depth not in (18, 34), **kwargs
  )


CONFIGS = {}
for _d in (18, 34, 50, 101, 152):
  CONFIGS[f'resnet{_d}'] = _resnet(_d, se=None, **_TIMM)
  CONFIGS[f'seresnet{_d}'] = _resnet(_d, se=_SE_TIMM, **_TIMM)
  CONFIGS[f'legacy_seresnet{_d}'] = _resnet(
      _d, se=_SE_PAPER, relu_before_se=_d < 50, **_LEGACY
  )
for _d in (50, 101):
  CONFIGS[f'resnext{_d}_32x4d'] = _resnet(_d, se=None, **_RESNEXT, **_TIMM)
  CONFIGS[f'seresnext{_d}_32x4d'] = _resnet(
      _d, se=_SE_TIMM, **_RESNEXT, **_TIMM
  )
for _d in (26, 50, 101):
  CONFIGS[f'legacy_seresnext{_d}_32x4d'] = dict(
      _resnet(_d, se=_SE_PAPER, **_RESNEXT, **_LEGACY), stride_on='3x3'
  )
CONFIGS['legacy_senet154'] = dict(_LEGACY, **_SENET154, se=_SE_PAPER)
CONFIGS['senet154'] = dict(_TIMM, **_SENET154, se=_SE_TIMM)

# The paper's names: the Caffe networks (legacy_* without timm's dropout).
for _paper, _legacy in (
    ('se_resnet50', 'legacy_seresnet50'),
    ('se_resnet101', 'legacy_seresnet101'),
    ('se_resnet152', 'legacy_seresnet152'),
    ('se_resnext50_32x4d', 'legacy_seresnext50_32x4d'),
    ('se_resnext101_32x4d', 'legacy_seresnext101_32x4d'),
):
  CONFIGS[_paper] = dict(CONFIGS[_legacy], drop_rate=0.0)

# Small networks for tests, the quickstart and CPU experiments.
_TINY = dict(
    stage_sizes=(1, 1, 1, 1),
    bottleneck=False,
    stage_planes=(16, 32, 64, 128),
    stem_width=16,
    **_TIMM,
)
CONFIGS['resnet_tiny'] = dict(_TINY, se=None)
CONFIGS['seresnet_tiny'] = dict(_TINY, se=_SE_TIMM)
del _d, _paper, _legacy
