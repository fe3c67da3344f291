"""timm <-> Flax conversion of the ResNet family: layouts, round trips and
refusals."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import se_flax
from se_flax import convert, testing

FIXTURES = pathlib.Path(__file__).parent / 'fixtures' / 'golden'


def _timm_state(name):
  meta = json.loads((FIXTURES / f'{name}.json').read_text())
  return testing.random_state_dict(meta['keys'], meta['seed'])


@pytest.mark.parametrize(
    'name', ['legacy_seresnet18', 'seresnet50', 'senet154']
)
def test_round_trip_is_lossless(name):
  state = _timm_state(name)
  variables = convert.from_timm(state, name)
  back = convert.to_timm(variables, name)
  assert set(back) == set(state)
  for key, value in state.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)
    assert back[key].dtype == value.dtype


def test_layouts():
  state = _timm_state('legacy_seresnet50')
  v = convert.from_timm(state, 'legacy_seresnet50')
  p, s = v['params'], v['batch_stats']
  w = state['layer2.0.conv2.weight']  # (128, 128, 3, 3) OIHW.
  np.testing.assert_array_equal(
      p['stage2_block0']['conv2']['kernel'], w.transpose(2, 3, 1, 0)
  )
  fc1 = state['layer2.0.se_module.fc1.weight']  # (32, 512, 1, 1).
  np.testing.assert_array_equal(
      p['stage2_block0']['se']['fc1']['kernel'], fc1[:, :, 0, 0].T
  )
  np.testing.assert_array_equal(
      p['fc']['kernel'], state['last_linear.weight'].T
  )
  np.testing.assert_array_equal(
      s['stem']['bn1']['var'], state['layer0.bn1.running_var']
  )
  assert p['stage2_block0']['downsample_conv']['kernel'].shape == (
      1,
      1,
      256,
      512,
  )


def test_num_classes_comes_from_the_weights():
  model = se_flax.create_model('seresnet_tiny', num_classes=7)
  variables = model.init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False
  )
  state = convert.to_timm(variables, 'seresnet_tiny')
  assert state['fc.weight'].shape == (7, 128)
  back = convert.from_timm(state, 'seresnet_tiny')
  assert back['params']['fc']['kernel'].shape == (128, 7)


def test_legacy_checkpoint_is_refused_by_the_torchvision_model():
  state = _timm_state('legacy_seresnet50')
  with pytest.raises(ValueError, match='legacy.*different function'):
    convert.from_timm(state, 'seresnet50')
  # The reverse: same shapes after a rename, still refused.
  with pytest.raises(ValueError, match='timm resnet.py keys'):
    convert.from_timm(_timm_state('seresnet50'), 'legacy_seresnet50')


def test_mismatch_lists_missing_unexpected_and_shapes():
  state = dict(_timm_state('seresnet18'))
  del state['layer1.0.conv1.weight']
  state['layer9.0.conv1.weight'] = np.zeros((1,), np.float32)
  state['layer1.1.se.fc1.weight'] = np.zeros((4, 64, 1, 1), np.float32)
  with pytest.raises(ValueError) as err:
    convert.from_timm(state, 'seresnet18')
  text = str(err.value)
  assert '1 missing keys: layer1.0.conv1.weight' in text
  assert '1 unexpected keys: layer9.0.conv1.weight' in text
  # timm's seresnet18 rounds layer1's SE width up to 8 (docs/architectures.md, The SE unit).
  assert (
      'layer1.1.se.fc1.weight: got (4, 64, 1, 1), expected (8, 64, 1, 1)'
      in text
  )


def test_safetensors_file(tmp_path):
  from safetensors.numpy import save_file

  state = _timm_state('legacy_seresnet18')
  path = str(tmp_path / 'weights.safetensors')
  save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, path)
  model, variables = convert.load_timm_checkpoint(path, 'legacy_seresnet18')
  assert model.num_classes == 1000
  np.testing.assert_array_equal(
      variables['params']['fc']['kernel'], state['last_linear.weight'].T
  )
  with pytest.raises(FileNotFoundError):
    convert.load_state_dict(str(tmp_path / 'missing.safetensors'))
