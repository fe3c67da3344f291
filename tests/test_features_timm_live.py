"""Live comparison with timm's `features_only` networks, when timm imports.

Not a CI dependency: skipped unless torch and timm import (run it in the
torch venv, where TensorFlow is absent). The committed fixtures
(test_features.py) cover the same code without them.
"""

import numpy as np
import pytest

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')

import jax  # pylint: disable=g-import-not-at-top

import se_flax  # pylint: disable=g-import-not-at-top
from se_flax import convert  # pylint: disable=g-import-not-at-top
from se_flax.models import feature_info, resnet  # pylint: disable=g-import-not-at-top
from tests import timm_reference  # pylint: disable=g-import-not-at-top

TIMM_RESNETS = sorted(n for n in resnet.CONFIGS if timm.is_model(n))


@pytest.mark.parametrize('name', TIMM_RESNETS)
def test_feature_info_is_timms(name):
  reference = timm.create_model(name, pretrained=False, features_only=True)
  expected = [
      {k: d[k] for k in ('num_chs', 'reduction', 'module')}
      for d in reference.feature_info.get_dicts()
  ]
  assert feature_info(name) == expected
  assert list(reference.feature_info.out_indices) == list(range(len(expected)))


def _timm_outputs(model, features_model, x):
  """(features_only maps as NHWC numpy, pooled pre-logits) of timm."""
  with torch.no_grad():
    maps = [m.numpy().transpose(0, 2, 3, 1) for m in features_model(x)]
    pooled = model.forward_head(model.forward_features(x), pre_logits=True)
  return maps, pooled.numpy()


@pytest.mark.parametrize(
    'name,size,out_indices',
    [
        ('seresnet34', 97, None),
        ('legacy_seresnet50', 99, (1, 2, 3, 4)),
        ('seresnext50_32x4d', 64, (2, 4)),
    ],
)
def test_features_only_outputs_match(name, size, out_indices):
  model = timm_reference.random_model(name)
  state = model.state_dict()
  extra = {} if out_indices is None else {'out_indices': out_indices}
  reference = timm.create_model(
      name, pretrained=False, features_only=True, **extra
  ).eval()
  reference.load_state_dict({k: state[k] for k in reference.state_dict()})
  x = torch.randn(2, 3, size, size)
  expected, expected_pooled = _timm_outputs(model, reference, x)

  variables = convert.from_timm({k: v.numpy() for k, v in state.items()}, name)
  net = se_flax.create_model(name)
  images = x.numpy().transpose(0, 2, 3, 1)
  with jax.disable_jit():
    maps = net.apply(
        variables,
        images,
        train=False,
        method='features',
        out_indices=out_indices,
    )
    pooled = net.apply(variables, images, train=False, method='pre_logits')
  assert len(maps) == len(expected)
  for i, (m, e) in enumerate(zip(maps, expected)):
    assert m.shape == e.shape, i
    assert np.abs(np.asarray(m) - e).max() <= 1e-4 * np.abs(e).max(), i
  gap = np.abs(np.asarray(pooled) - expected_pooled).max()
  assert gap <= 1e-4 * np.abs(expected_pooled).max()


@pytest.mark.parametrize(
    'name,size',
    [('mobilenetv1_100', 67), ('inception_resnet_v2', 139), ('vgg16_bn', 65)],
)
def test_other_backbones_match_features_only(name, size):
  model = timm_reference.random_model(name)
  state = model.state_dict()
  reference = timm.create_model(
      name, pretrained=False, features_only=True
  ).eval()
  # VGG's features_only net flattens `features.N` to `features_N`.
  reference.load_state_dict(
      {
          k: state[k if k in state else k.replace('_', '.', 1)]
          for k in reference.state_dict()
      }
  )
  assert feature_info(name) == [
      {k: d[k] for k in ('num_chs', 'reduction', 'module')}
      for d in reference.feature_info.get_dicts()
  ]
  x = torch.randn(2, 3, size, size)
  expected, expected_pooled = _timm_outputs(model, reference, x)
  variables = convert.from_timm({k: v.numpy() for k, v in state.items()}, name)
  net = se_flax.create_model(name)
  parts = jax.jit(
      lambda v, x: (
          net.apply(v, x, train=False, method='features'),
          net.apply(v, x, train=False, method='pre_logits'),
      )
  )
  maps, pooled = parts(variables, x.numpy().transpose(0, 2, 3, 1))
  assert [m.shape for m in maps] == [e.shape for e in expected]
  for i, (m, e) in enumerate(zip(maps, expected)):
    assert np.abs(np.asarray(m) - e).max() <= 1e-4 * np.abs(e).max(), i
  gap = np.abs(np.asarray(pooled) - expected_pooled).max()
  assert gap <= 1e-4 * np.abs(expected_pooled).max()
