"""Stochastic depth against timm itself, on fresh draws, when timm is installed.

Not a CI dependency: skipped unless torch and timm import (a separate venv,
see tools/make_drop_path_fixtures.py); test_drop_path.py checks the
committed fixture without them. Here timm's own networks (no stem swap)
run in train mode with `drop_path_rate`; the masks its DropPath draws are
read back and forced into the JAX network, whose logits must agree.
"""

import importlib.util
import os

import numpy as np
import pytest

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')

import jax  # pylint: disable=g-import-not-at-top

import se_flax  # pylint: disable=g-import-not-at-top
from se_flax import convert  # pylint: disable=g-import-not-at-top
from se_flax import layers  # pylint: disable=g-import-not-at-top
from se_flax import testing  # pylint: disable=g-import-not-at-top
from se_flax.layers import drop_path  # pylint: disable=g-import-not-at-top
from tests import test_drop_path  # pylint: disable=g-import-not-at-top


def _load_generator():
  path = os.path.join(
      os.path.dirname(__file__), '..', 'tools', 'make_drop_path_fixtures.py'
  )
  spec = importlib.util.spec_from_file_location('make_drop_path', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


ref = _load_generator()

ARCHS = (
    'resnet18 resnet34 resnet50 resnet101 resnet152 seresnet18 seresnet34 '
    'seresnet50 seresnet101 seresnet152 resnext50_32x4d resnext101_32x4d '
    'seresnext50_32x4d seresnext101_32x4d senet154'
).split()


@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('rate', [0.05, 0.2, 0.37, 0.999])
def test_block_rates_equal_timms(arch, rate):
  with torch.device('meta'):
    want = ref.timm_block_rates(timm.create_model(arch, drop_path_rate=rate))
  model = se_flax.create_model(arch, drop_path_rate=rate)
  got = drop_path.block_rates(rate, model.stage_sizes)
  assert [r for stage in got for r in stage] == want


def _compare(name, timm_model, rate, images, torch_seed, rules='auto'):
  """Max |JAX - timm| train-mode logits with timm's masks, and the scale."""
  state = {
      k: v.numpy()
      for k, v in timm_model.state_dict().items()
      if not k.endswith('num_batches_tracked')
  }
  variables = convert.from_timm(state, name)
  want, masks = ref.train_logits(timm_model, images, torch_seed)
  dropped = sum(int((~m).sum()) for m in masks.values())
  assert dropped, 'pick a torch seed under which timm drops something'
  model = se_flax.create_model(
      name,
      num_classes=want.shape[-1],
      drop_path_rate=rate,
  )
  with layers.layer_rules(rules):
    got, keep = test_drop_path.train_fn(model)(
        variables, images, jax.random.key(0), masks
    )
  assert sorted(keep) == sorted(masks)
  return np.abs(np.asarray(got) - want).max(), np.abs(want).max()


def _timm(arch, rate, seed):
  model = timm.create_model(arch, drop_path_rate=rate, num_classes=10)
  keys = [
      (k, tuple(v.shape), str(v.dtype)) for k, v in model.state_dict().items()
  ]
  return ref.load(model, testing.random_state_dict(keys, seed))


@pytest.mark.parametrize(
    'arch,rate,torch_seed',
    [
        ('resnet50', 0.3, 0),
        ('seresnet50', 0.3, 1),
        ('seresnext50_32x4d', 0.25, 2),
        ('senet154', 0.2, 3),
    ],
)
def test_train_logits_equal_timms(arch, rate, torch_seed):
  images = testing.random_images(7, 4, 64).transpose(0, 2, 3, 1)
  model = _timm(arch, rate, seed=5)
  err, scale = _compare(arch, model, rate, images, torch_seed)
  print(f'{arch}: max abs {err:.3g}, rel {err / scale:.3g}')
  assert err <= 3e-5 * max(scale, 1.0), (err, scale)


@pytest.mark.parametrize('rules', layers.LAYER_RULES)
@pytest.mark.parametrize('seed,torch_seed', [(1, 4), (2, 11)])
def test_tiny_train_logits_equal_timms(seed, torch_seed, rules):
  c = ref.TINY
  model = ref.load(
      ref.tiny_timm(c['rate'], c['num_classes']),
      ref.random_weights(c['name'], c['num_classes'], seed),
  )
  images = testing.random_images(seed, c['batch'], c['size'])
  images = images.transpose(0, 2, 3, 1)
  err, scale = _compare(c['name'], model, c['rate'], images, torch_seed, rules)
  print(f'tiny seed {seed} {rules}: max abs {err:.3g}, rel {err / scale:.3g}')
  assert err <= test_drop_path.ATOL, (err, scale)
