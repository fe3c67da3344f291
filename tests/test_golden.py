"""Golden logits: se_flax vs timm on the same (seeded random) weights.

The fixtures (tools/make_golden_fixtures.py, run with torch + timm) hold
timm's key names and shapes and its float64 logits at an even and an odd
input size; the weights and images are rebuilt here from the seed.
"""

import json
import pathlib

import jax
import numpy as np
import pytest

import se_flax
from se_flax import convert, testing

FIXTURES = pathlib.Path(__file__).parent / 'fixtures' / 'golden'
NAMES = sorted(p.stem for p in FIXTURES.glob('*.json'))
# The deepest networks cost ~10 s each on 2 cores; they run under -m slow,
# their shallower twins (same blocks, same conventions) by default.
# inception_resnet_v2 (~35 s) and vgg16_bn (~20 s: drawing and converting
# 138M weights alone takes ~12 s) have no cheaper twin; their structure is
# covered by tests/test_backbones.py.
SLOW = {
    'legacy_seresnet152',
    'seresnet152',
    'resnet152',
    'resnet101',
    'seresnet101',
    'legacy_seresnet101',
    'resnext101_32x4d',
    'seresnext101_32x4d',
    'legacy_seresnext101_32x4d',
    'inception_resnet_v2',
    'vgg16_bn',
}
# Eager mode compiles each primitive once per shape, cheap for the repeated
# blocks of ResNets; MobileNet's layers nearly all differ in shape, so one
# jit-compiled program is ~3x faster there.
JIT = {'mobilenetv1_100'}
RTOL = 1e-4  # Of max |logit|; timm's own fp32 vs fp64 gap is <= 3e-6.


def _params(names):
  return [
      pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names
  ]


def _load(name):
  meta = json.loads((FIXTURES / f'{name}.json').read_text())
  reference = np.load(FIXTURES / f'{name}.npz')
  return meta, reference


@pytest.mark.parametrize('name', _params(NAMES))
def test_golden_logits(name):
  assert (
      name in se_flax.list_models()
  ), f'fixture {name}.json names a model the registry does not have'
  meta, reference = _load(name)
  state = testing.random_state_dict(meta['keys'], meta['seed'])
  assert testing.state_dict_fingerprint(state) == meta['weights_fingerprint']
  variables = convert.from_timm(state, name)
  model = se_flax.create_model(name, num_classes=meta['num_classes'])
  for size in meta['input_sizes']:
    images = testing.random_images(meta['seed'], meta['batch'], size)
    images = images.transpose(0, 2, 3, 1)
    if name in JIT:
      logits = np.asarray(
          jax.jit(lambda v, x: model.apply(v, x, train=False))(
              variables, images
          )
      )
    else:
      # Eager op-by-op: compiling a 150-layer network costs more than
      # running it once at 64 px.
      with jax.disable_jit():
        logits = np.asarray(model.apply(variables, images, train=False))
    expected = reference[f'logits_{size}']
    scale = np.abs(expected).max()
    assert np.abs(logits - expected).max() <= RTOL * scale, (name, size)
    np.testing.assert_array_equal(logits.argmax(-1), expected.argmax(-1))


@pytest.mark.parametrize('name', ['legacy_seresnet50', 'legacy_seresnet18'])
def test_the_spec_traps_change_the_function(name):
  """Swapping a Caffe detail for the torchvision one breaks equality."""
  meta, reference = _load(name)
  variables = convert.from_timm(
      testing.random_state_dict(meta['keys'], meta['seed']), name
  )
  size = meta['input_sizes'][0]
  images = testing.random_images(meta['seed'], meta['batch'], size)
  images = images.transpose(0, 2, 3, 1)
  wrong = {
      'legacy_seresnet50': dict(stem_pool='pad'),
      'legacy_seresnet18': dict(relu_before_se=False),
  }[name]
  model = se_flax.create_model(name, **wrong)
  logits = np.asarray(
      jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
  )
  expected = reference[f'logits_{size}']
  assert np.abs(logits - expected).max() > 1e-2 * np.abs(expected).max()
