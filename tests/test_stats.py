"""Parameter and MAC counts against docs/architectures.md (Counts) and the paper."""

import flax.linen as nn
import pytest

from se_flax import layers, model_stats

# (params, SE params, MACs at 224, SE MACs, BN running statistics).
SPEC_TABLE = {
    'legacy_seresnet18': (11_778_592, 89_080, 1_814_160_384, 87_040, 9_600),
    'seresnet18': (11_779_624, 90_112, 1_814_161_408, 88_064, 9_600),
    'legacy_seresnet34': (21_958_868, 161_196, 3_663_918_592, 157_184, 17_024),
    'seresnet34': (21_960_416, 162_744, 3_663_920_128, 158_720, 17_024),
    'legacy_seresnet50': (
        28_088_024,
        2_530_992,
        3_860_488_192,
        2_514_944,
        53_120,
    ),
    'seresnet50': (28_088_024, 2_530_992, 4_091_699_200, 2_514_944, 53_120),
    'resnet50': (25_557_032, 0, 4_089_184_256, 0, 53_120),
    'legacy_seresnet101': (
        49_326_872,
        4_777_712,
        7_574_937_600,
        4_743_168,
        105_344,
    ),
    'seresnet101': (49_326_872, 4_777_712, 7_806_148_608, 4_743_168, 105_344),
    'legacy_seresnet152': (
        66_821_848,
        6_629_040,
        11_288_993_792,
        6_578_176,
        151_424,
    ),
    'seresnet152': (66_821_848, 6_629_040, 11_520_204_800, 6_578_176, 151_424),
    'legacy_seresnext26_32x4d': (
        16_790_280,
        1_400_800,
        2_472_099_840,
        1_392_640,
        38_528,
    ),
    'legacy_seresnext50_32x4d': (
        27_559_896,
        2_530_992,
        4_232_994_816,
        2_514_944,
        68_224,
    ),
    'seresnext50_32x4d': (
        27_559_896,
        2_530_992,
        4_232_994_816,
        2_514_944,
        68_224,
    ),
    'legacy_seresnext101_32x4d': (
        48_955_416,
        4_777_712,
        7_974_739_968,
        4_743_168,
        137_856,
    ),
    'seresnext101_32x4d': (
        48_955_416,
        4_777_712,
        7_974_739_968,
        4_743_168,
        137_856,
    ),
    'legacy_senet154': (
        115_088_984,
        6_629_040,
        20_688_363_520,
        6_578_176,
        247_552,
    ),
    'senet154': (115_088_984, 6_629_040, 20_688_363_520, 6_578_176, 247_552),
}

# The paper's names are the Caffe networks (prototxt columns of the spec).
PAPER_ALIASES = {
    'se_resnet50': 'legacy_seresnet50',
    'se_resnet101': 'legacy_seresnet101',
    'se_resnet152': 'legacy_seresnet152',
    'se_resnext50_32x4d': 'legacy_seresnext50_32x4d',
    'se_resnext101_32x4d': 'legacy_seresnext101_32x4d',
}


@pytest.mark.parametrize('name', sorted(SPEC_TABLE))
def test_spec_row(name):
  s = model_stats(name)
  assert (s.params, s.se_params, s.macs, s.se_macs, s.batch_stats) == (
      SPEC_TABLE[name]
  )


@pytest.mark.parametrize('alias', sorted(PAPER_ALIASES))
def test_paper_alias_is_the_caffe_network(alias):
  s = model_stats(alias)
  assert (s.params, s.se_params, s.macs, s.se_macs, s.batch_stats) == (
      SPEC_TABLE[PAPER_ALIASES[alias]]
  )


def test_paper_resnet50_baseline():
  # Spec §2: the SE-ResNet-50 prototxt with SE removed (paper: 3.86 GFLOPs).
  s = model_stats('se_resnet50', se=None)
  assert (s.params, s.macs, s.se_params) == (25_557_032, 3_857_973_248, 0)


@pytest.mark.parametrize(
    'baseline,se_model',
    [
        ('resnet50', 'seresnet50'),
        ('resnet101', 'seresnet101'),
        ('resnext50_32x4d', 'seresnext50_32x4d'),
    ],
)
def test_plain_twin_is_the_se_model_without_se(baseline, se_model):
  plain, with_se = model_stats(baseline), model_stats(se_model)
  assert with_se.params - with_se.se_params == plain.params
  assert model_stats(se_model, se=None) == plain


def test_se_stage_ablation_weights():
  # docs/paper_notes.md, Table 13 (derived): SE weights per stage at r=16, no biases.
  per_stage = {1: 24_576, 2: 131_072, 3: 786_432, 4: 1_572_864}
  for stage, weights in per_stage.items():
    s = model_stats('se_resnet50', se={'use_bias': False}, se_stages=(stage,))
    assert s.se_params == weights
  s = model_stats('se_resnet50', se={'use_bias': False}, se_stages=(1, 2, 3))
  assert s.se_params == 942_080


def test_se_3x3_ablation_weights():
  # docs/paper_notes.md, Table 15: SE after the 3x3 conv adds 157,184 weights.
  s = model_stats('se_resnet50', se={'use_bias': False}, se_position='3x3')
  assert s.se_params == 157_184
  assert round((25_557_032 + s.se_params) / 1e6, 2) == 25.71


@pytest.mark.parametrize(
    'r,paper_millions',
    [(2, 45.7), (4, 35.7), (8, 30.7), (16, 28.1), (32, 26.9)],
)
def test_reduction_ratio_params(r, paper_millions):
  # docs/paper_notes.md, Table 10: the printed values run about 0.1M above Eq. 5.
  s = model_stats('se_resnet50', se={'reduction': r, 'use_bias': False})
  assert s.se_params == 2 * 2_514_944 * 16 // (2 * r)
  assert abs(s.params / 1e6 - paper_millions) <= 0.15


def test_no_squeeze_ablation_macs():
  # docs/paper_notes.md, Table 16: NoSqueeze runs the FCs at every position, 4.27 GFLOPs.
  s = model_stats('se_resnet50', se={'squeeze': 'none', 'use_bias': False})
  assert s.params == model_stats('se_resnet50', se={'use_bias': False}).params
  assert round(s.macs / 1e9, 2) == 4.27


def test_stats_at_other_sizes_scale_spatially():
  s224, s448 = model_stats('resnet50', 224), model_stats('resnet50', 448)
  fc = 2048 * 1000
  assert s448.macs - fc == 4 * (s224.macs - fc)
  assert s448.params == s224.params


class _RectangularNet(nn.Module):

  @nn.compact
  def __call__(self, x, *, train):
    del train
    x = layers.Conv2d(8, (1, 7), name='a')(x)
    return layers.Conv2d(4, (3, 1), 2, groups=2, name='b')(x)


def test_rectangular_kernel_macs():
  # out.size * C_in / groups * kh * kw: 32x32x8 * 3*1*7, 16x16x4 * 4*3*1.
  s = model_stats(_RectangularNet(), 32)
  assert s.macs == 32 * 32 * 8 * 3 * 7 + 16 * 16 * 4 * 4 * 3
  assert s.params == 7 * 3 * 8 + 3 * 4 * 4
