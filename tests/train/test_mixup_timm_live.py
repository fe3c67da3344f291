"""Live comparison of se_flax.train.mixup with timm's batch Mixup.

Not a CI dependency: skipped unless torch and timm import (run it in the
torch venv: /work/torch-venv/bin/python -m pytest -p no:xdist -o addopts=''
tests/train/test_mixup_timm_live.py). The committed fixtures
(test_mixup.py) cover the same code without them.

timm draws with numpy's global RNG; here its draws are se_flax's, from
fresh keys (tools/make_mixup_fixtures.py swaps timm's `np.random` for a
scripted one), on fresh random ImageNet-sized batches, and the outputs must
agree bit for bit.
"""

import importlib.util
import os

import numpy as np
import pytest

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')

import jax  # pylint: disable=g-import-not-at-top

from se_flax.train import mixup  # pylint: disable=g-import-not-at-top


def _load_tool():
  path = os.path.join(
      os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
      'tools',
      'make_mixup_fixtures.py',
  )
  spec = importlib.util.spec_from_file_location('make_mixup_fixtures', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


tool = _load_tool()

# RSB A1/A2/A3 (mixup 0.2/0.1/0.1, cutmix 1.0), and the other branches.
CONFIGS = {
    'rsb_a1': dict(mixup_alpha=0.2, cutmix_alpha=1.0, label_smoothing=0.0),
    'rsb_a3': dict(mixup_alpha=0.1, cutmix_alpha=1.0, label_smoothing=0.1),
    'prob_switch': dict(
        mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.6, switch_prob=0.7
    ),
    'cutmix_uncorrected': dict(
        mixup_alpha=0.0, cutmix_alpha=0.4, correct_lam=False
    ),
    'minmax': dict(mixup_alpha=0.5, cutmix_minmax=(0.3, 0.9)),
}
NUM_CLASSES = 1000
SHAPE = (8, 224, 160, 3)  # not square: a swapped axis shows
STEPS = 16

_apply = jax.jit(mixup.apply, static_argnums=0)
_draw = jax.jit(mixup.draw, static_argnums=(0, 2))


def _batch(dtype, seed):
  rng = np.random.default_rng(seed)
  if dtype == 'uint8':
    images = rng.integers(0, 256, SHAPE, dtype=np.uint8)
  else:
    images = rng.standard_normal(SHAPE).astype(np.float32)
  return images, rng.integers(0, NUM_CLASSES, SHAPE[0]).astype(np.int32)


@pytest.mark.parametrize('dtype', ['uint8', 'float32'])
@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_mixup_is_timms(name, dtype):
  """STEPS batches per config, keys from fold_in(seed, step) as a train
  step would; both branches and the unmixed case must turn up."""
  cfg = mixup.MixupConfig(num_classes=NUM_CLASSES, **CONFIGS[name])
  seed = int.from_bytes(os.urandom(4), 'little')
  print(f'seed {seed}')
  hw = SHAPE[1:3]
  kinds = set()
  for step in range(STEPS):
    key = jax.random.fold_in(jax.random.key(seed), step)
    images, labels = _batch(dtype, (seed, step))
    draws = _draw(cfg, key, hw)
    # mixup() is apply(draw()); apart here so timm gets the same draws
    # (beta's last bit can depend on the compilation).
    got_images, got_targets = _apply(cfg, draws, images, labels)
    want_images, want_targets, bounds = tool.timm_mixup(
        cfg, draws, images, labels
    )
    if bounds:
      assert bounds == tool.expected_bounds(cfg, draws, hw)
    use_cutmix, lam, _, _ = mixup.mix_weights(cfg, draws, hw)
    kinds.add('cutmix' if use_cutmix else 'none' if lam == 1 else 'mixup')
    msg = f'{name} {dtype} seed {seed} step {step}'
    np.testing.assert_array_equal(
        np.asarray(got_images), want_images, err_msg=msg
    )
    np.testing.assert_array_equal(
        np.asarray(got_targets), want_targets, err_msg=msg
    )
  print(name, dtype, sorted(kinds))
  assert kinds & {'cutmix', 'mixup'}


def test_edge_draws_are_timms():
  """Box thresholds, lambda 0 / 1, the prob and switch boundaries, on the
  live size (the fixture's edge cases, at 224 x 160)."""
  for case, name, dtype, values in tool.edge_draws(SHAPE[1:3]):
    cfg = tool.config(name)
    draws = tool.draws_to_jax(values)
    images, labels = _batch(dtype, 0)
    labels = labels % cfg.num_classes
    want_images, want_targets, _ = tool.timm_mixup(cfg, draws, images, labels)
    got_images, got_targets = _apply(cfg, draws, images, labels)
    np.testing.assert_array_equal(np.asarray(got_images), want_images, case)
    np.testing.assert_array_equal(np.asarray(got_targets), want_targets, case)
