"""timm <-> Flax key layouts beyond the golden logits (all timm families).

The golden fixtures list timm's own keys and shapes: every timm-backed model
must produce exactly that list, which is checked here without drawing the
(large) weights. Numerical equality is test_golden.py's job.
"""

import json
import pathlib

import numpy as np
import pytest

import se_flax
from se_flax import convert, testing

FIXTURES = pathlib.Path(__file__).parent / 'fixtures' / 'golden'


def _timm_keys(name):
  meta = json.loads((FIXTURES / f'{name}.json').read_text())
  return {
      k: tuple(shape)
      for k, shape, _ in meta['keys']
      if not k.endswith('num_batches_tracked')
  }


@pytest.mark.parametrize(
    'name',
    [
        'inception_resnet_v2',
        'vgg16_bn',
        'mobilenetv1_100',
        'seresnet18',
        'legacy_seresnet18',
    ],
)
def test_layout_is_timms_key_list(name):
  layout = convert.timm_layout(name)
  assert {k: leaf.torch_shape for k, leaf in layout.items()} == (
      _timm_keys(name)
  )


def test_4d_convs_are_not_taken_for_se_fcs():
  # IRv2's residual 1x1 `conv2d` (bias, no BN) and VGG's head convs are
  # convs in both frameworks; only 2-D Dense kernels under `se` are the
  # (out, in, 1, 1) SE FCs of timm.
  irv2 = convert.timm_layout('inception_resnet_v2')
  assert irv2['repeat.0.conv2d.weight'].kind == 'conv'
  assert irv2['repeat.0.conv2d.weight'].torch_shape == (320, 128, 1, 1)
  assert irv2['classif.weight'].kind == 'linear'
  vgg = convert.timm_layout('vgg16_bn')
  assert vgg['pre_logits.fc1.weight'].torch_shape == (4096, 512, 7, 7)
  assert vgg['pre_logits.fc2.weight'].kind == 'conv'
  assert vgg['head.fc.weight'].kind == 'linear'
  se = convert.timm_layout('seresnet18')
  assert se['layer1.0.se.fc1.weight'].kind == 'se_fc'
  assert se['fc.weight'].kind == 'linear'


def test_mobilenet_round_trip_and_num_classes():
  keys = [(k, s, 'float32') for k, s in _timm_keys('mobilenetv1_100').items()]
  keys = [
      (
          k,
          (10, 1024)
          if k == 'classifier.weight'
          else (10,)
          if k == 'classifier.bias'
          else s,
          d,
      )
      for k, s, d in keys
  ]
  state = testing.random_state_dict(keys, seed=3)
  variables = convert.from_timm(state, 'mobilenetv1_100')
  assert variables['params']['fc']['kernel'].shape == (1024, 10)
  back = convert.to_timm(variables, 'mobilenetv1_100')
  assert back.pop('bn1.num_batches_tracked') == 0
  back = {
      k: v for k, v in back.items() if not k.endswith('num_batches_tracked')
  }
  assert set(back) == set(state)
  for key, value in state.items():
    np.testing.assert_array_equal(back[key], value)
  assert np.array_equal(
      variables['params']['stage1_block0']['conv_dw']['kernel'],
      state['blocks.1.0.conv_dw.weight'].transpose(2, 3, 1, 0),
  )


@pytest.mark.parametrize(
    'name,match',
    [
        ('bn_inception', 'timm has no BNInception'),
        ('shufflenet_g3', 'timm has no ShuffleNetV1'),
        ('se_vgg16_bn', 'no SE variant of VGG'),
        ('se_mobilenetv1_100', 'no SE variant of MobileNetV1'),
        ('se_inception_resnet_v2', 'no SE variant of InceptionResNetV2'),
    ],
)
def test_models_without_a_timm_twin_are_refused(name, match):
  assert name in se_flax.list_models()
  with pytest.raises(NotImplementedError, match=match):
    convert.from_timm({}, name)


def test_wrong_family_keys_fail_without_a_resnet_hint():
  state = {
      k: np.zeros(s, np.float32)
      for k, s in _timm_keys('mobilenetv1_100').items()
  }
  with pytest.raises(
      ValueError, match="no classifier weight 'head.fc"
  ) as error:
    convert.from_timm(state, 'vgg16_bn')
  assert 'legacy' not in str(error.value)
