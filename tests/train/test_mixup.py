"""Mixup/CutMix (se_flax.train.mixup) against timm's committed outputs.

tests/fixtures/mixup/ holds timm 1.0.31's batch `Mixup` (float) and
`FastCollateMixup` (uint8) run on se_flax's draws (written by
tools/make_mixup_fixtures.py); here `apply` must give the same images and
targets bit for bit. The rest checks what timm cannot: the distribution of
the JAX draws, determinism per key, and that the whole thing jits with
static shapes.
"""

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from se_flax.train import mixup

FIXTURES = os.path.join(
    os.path.dirname(os.path.dirname(__file__)), 'fixtures', 'mixup'
)


@functools.lru_cache(maxsize=None)
def _fixture():
  with open(os.path.join(FIXTURES, 'cases.json')) as f:
    meta = json.load(f)
  with np.load(os.path.join(FIXTURES, 'cases.npz')) as z:
    arrays = dict(z)
  return meta, arrays


def _config(meta, name, **overrides) -> mixup.MixupConfig:
  fields = dict(meta['configs'][name], **overrides)
  if fields['cutmix_minmax'] is not None:
    fields['cutmix_minmax'] = tuple(fields['cutmix_minmax'])
  return mixup.MixupConfig(**fields)


def _draws(meta, values) -> mixup.MixDraws:
  ints = ('cut_h', 'cut_w', 'y', 'x')
  return mixup.MixDraws(
      **{
          k: jnp.asarray(v, jnp.int32 if k in ints else jnp.float32)
          for k, v in zip(meta['draw_fields'], values)
      }
  )


_CASES = [c['case'] for c in _fixture()[0]['cases']]
_apply = jax.jit(mixup.apply, static_argnums=0)
_draw = jax.jit(mixup.draw, static_argnums=(0, 2))


def _run_case(meta, arrays, case, **overrides):
  cfg = _config(meta, case['config'], **overrides)
  draws = _draws(meta, arrays[f"{case['case']}/draws"])
  images = arrays[f"input_{case['dtype']}"]
  return _apply(cfg, draws, images, arrays['labels'])


@pytest.mark.parametrize('name', _CASES)
def test_apply_is_timms_bit_for_bit(name):
  meta, arrays = _fixture()
  case = next(c for c in meta['cases'] if c['case'] == name)
  images, targets = _run_case(meta, arrays, case)
  want_images = arrays[f'{name}/images']
  want_targets = arrays[f'{name}/targets']
  assert images.dtype == want_images.dtype
  np.testing.assert_array_equal(np.asarray(images), want_images)
  assert targets.dtype == np.float32
  np.testing.assert_array_equal(np.asarray(targets), want_targets)


@pytest.mark.parametrize(
    'override',
    [
        dict(label_smoothing=0.05),
        dict(correct_lam=False),
        dict(switch_prob=0.6),
        dict(prob=0.69),
    ],
    ids=lambda d: next(iter(d)),
)
def test_fixture_comparison_notices_a_changed_hyperparameter(override):
  """The fixtures are sensitive: a wrong hyperparameter breaks some case."""
  meta, arrays = _fixture()
  differs = False
  for case in meta['cases']:
    images, targets = _run_case(meta, arrays, case, **override)
    differs |= not np.array_equal(
        np.asarray(images), arrays[f"{case['case']}/images"]
    ) or not np.array_equal(
        np.asarray(targets), arrays[f"{case['case']}/targets"]
    )
  assert differs


def test_keys_give_the_recorded_draws():
  """draw(key) reproduces the draws the fixtures used (pinned JAX: a
  change in jax.random shows here, not as a parity failure).

  Integers exactly; the floats to 1e-5: jax.random.beta's float32 result
  depends on how XLA compiles it (eager, jit, and this suite's reduced
  optimisation differ in the last bits; relatively most for tiny draws,
  which come from exp of a large negative log), so one compiled train
  step is deterministic but not bitwise equal to another compilation."""
  meta, arrays = _fixture()
  hw = tuple(meta['shape'][1:3])
  for case in meta['cases']:
    if case['seed'] is None:
      continue
    cfg = _config(meta, case['config'])
    got = _draw(cfg, jax.random.key(case['seed']), hw)
    want = _draws(meta, arrays[f"{case['case']}/draws"])
    for field, g, w in zip(meta['draw_fields'], got, want):
      assert g.dtype == w.dtype, field
      msg = f"{case['case']} {field}"
      if jnp.issubdtype(g.dtype, jnp.integer):
        np.testing.assert_array_equal(g, w, err_msg=msg)
      else:
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7, err_msg=msg)


@pytest.mark.parametrize('size', [12, 16, 32, 160, 224, 288])
def test_cut_size_is_timms_float64_arithmetic(size):
  """int(size * np.sqrt(1 - lam)) in float64, for float32 lam at every
  threshold, one float32 either side, and uniform samples."""
  t = mixup._cut_thresholds(size)  # pylint: disable=protected-access
  rng = np.random.default_rng(size)
  lam = np.concatenate(
      [
          t,
          np.nextafter(t, np.float32(2)),
          np.nextafter(t, np.float32(-1)).clip(0),
          rng.random(20000).astype(np.float32),
          np.float32([0.0, 1e-30, 1e-8, 0.5, 0.75, 1.0]),
      ]
  )
  want = (size * np.sqrt(1.0 - lam.astype(np.float64))).astype(np.int64)
  cut_size = mixup._cut_size  # pylint: disable=protected-access
  got = jax.jit(jax.vmap(lambda l: cut_size(l, size)))(lam)
  np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.parametrize(
    'hw', [(16, 12), (160, 160), (224, 224), (288, 288), (7, 5)]
)
def test_corrected_lambda_is_timms_for_every_area(hw):
  """timm: lam = 1. - area / float(H * W) in float64, then float32 (and
  1 - lam likewise): equal to `_ratio`'s integer quotients under jit (a
  float32 division by the constant is not: XLA uses the reciprocal)."""
  h, w = hw
  area = np.arange(h * w + 1)
  lam64 = 1.0 - area / float(h * w)
  ratio = mixup._ratio  # pylint: disable=protected-access
  f = jax.jit(lambda a: (ratio(h * w - a, h * w), ratio(a, h * w)))
  lam, oml = f(area.astype(np.int32))
  np.testing.assert_array_equal(np.asarray(lam), lam64.astype(np.float32))
  np.testing.assert_array_equal(
      np.asarray(oml), (1.0 - lam64).astype(np.float32)
  )


def _many_draws(cfg, n, hw=(224, 224), seed=0):
  keys = jax.random.split(jax.random.key(seed), n)
  draws = jax.vmap(lambda k: mixup.draw(cfg, k, hw))(keys)
  weights = jax.vmap(lambda d: mixup.mix_weights(cfg, d, hw))(draws)
  return jax.tree.map(np.asarray, draws), jax.tree.map(np.asarray, weights)


@pytest.mark.parametrize('alpha', [0.1, 0.2, 1.0])
def test_lambda_is_beta(alpha):
  """Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)), symmetric; within
  5 standard errors on 20,000 draws."""
  cfg = mixup.MixupConfig(mixup_alpha=alpha)
  n = 20000
  draws, _ = _many_draws(cfg, n)
  lam = draws.lam_mixup.astype(np.float64)
  assert np.all((lam >= 0) & (lam <= 1))
  var = 1 / (4 * (2 * alpha + 1))
  assert abs(lam.mean() - 0.5) < 5 * np.sqrt(var / n)
  # Var of (lam - 1/2)^2 is below 1/16 since |lam - 1/2| <= 1/2.
  assert abs(lam.var() - var) < 5 * 0.25 / np.sqrt(n)
  below = np.mean(lam < 0.25) - np.mean(lam > 0.75)
  assert abs(below) < 5 * np.sqrt(0.5 / n)


def test_switch_prob_and_box():
  """CutMix in ~switch_prob of batches; box centre uniform; box area at
  most (1 - lam) H W and, away from the borders, the floor'd square."""
  cfg = mixup.MixupConfig(mixup_alpha=0.2, cutmix_alpha=1.0, switch_prob=0.5)
  n, (h, w) = 20000, (224, 160)
  draws, (use_cutmix, lam, oml, box) = _many_draws(cfg, n, (h, w))
  assert abs(use_cutmix.mean() - 0.5) < 5 * np.sqrt(0.25 / n)
  # Which lambda was used: CutMix's Beta(1, 1) is uniform.
  raw = np.where(use_cutmix, draws.lam_cutmix, draws.lam_mixup)
  np.testing.assert_array_equal(lam[~use_cutmix], raw[~use_cutmix])
  np.testing.assert_allclose(
      np.mean(draws.lam_cutmix < 0.3), 0.3, atol=5 * np.sqrt(0.21 / n)
  )
  for v, size in ((draws.y, h), (draws.x, w)):
    assert v.min() == 0 and v.max() == size - 1
    assert abs(v.mean() - (size - 1) / 2) < 5 * size / np.sqrt(12 * n)
  yl, yh, xl, xh = box
  area = (yh - yl) * (xh - xl)
  c = use_cutmix
  np.testing.assert_allclose(lam[c], 1 - area[c] / (h * w), rtol=0, atol=1e-6)
  np.testing.assert_allclose(oml[c] + lam[c], 1, atol=1e-6)
  r = np.sqrt(1 - raw.astype(np.float64))
  assert np.all(area[c] <= (1 - raw[c]) * h * w * (1 + 1e-6))
  inner = c & (yl > 0) & (yh < h) & (xl > 0) & (xh < w)
  assert inner.sum() > n // 20
  np.testing.assert_array_equal(
      area[inner], (np.floor(h * r) * np.floor(w * r))[inner]
  )
  # Clipping only shrinks the box: corrected lambda above raw on average.
  assert lam[c].mean() > raw[c].mean() + 0.05


def test_prob_gates_the_batch():
  cfg = mixup.MixupConfig(mixup_alpha=1.0, prob=0.3)
  n = 20000
  _, (use_cutmix, lam, oml, _) = _many_draws(cfg, n)
  unmixed = (lam == 1) & (oml == 0)
  assert not use_cutmix.any()
  assert abs(unmixed.mean() - 0.7) < 5 * np.sqrt(0.21 / n)


def _batch(dtype, n=8, hw=(24, 20), classes=10, seed=0):
  rng = np.random.default_rng(seed)
  shape = (n, *hw, 3)
  if dtype == np.uint8:
    images = rng.integers(0, 256, shape, dtype=np.uint8)
  else:
    images = rng.standard_normal(shape).astype(dtype)
  return images, rng.integers(0, classes, (n,)).astype(np.int32)


_RSB = mixup.MixupConfig(
    mixup_alpha=0.1, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10
)


@pytest.mark.parametrize('dtype', [np.uint8, np.float32])
def test_same_key_same_batch(dtype):
  """The key determines the batch: two compilations of the same step agree
  bit for bit; different keys differ. (draw and apply compiled apart may
  differ in beta's last bit: see test_keys_give_the_recorded_draws.)"""
  images, labels = _batch(dtype)
  first = jax.jit(mixup.mixup, static_argnums=0)
  second = jax.jit(lambda c, k, x, y: mixup.mixup(c, k, x, y), static_argnums=0)
  outs = {}
  for seed in range(6):
    key = jax.random.key(seed)
    a = first(_RSB, key, images, labels)
    b = second(_RSB, key, images, labels)
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x, y)
    outs[seed] = a
  distinct = {np.asarray(o[0]).tobytes() for o in outs.values()}
  assert len(distinct) == len(outs)
  for im, t in outs.values():
    assert im.shape == images.shape and im.dtype == images.dtype
    assert t.shape == (8, 10) and t.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(t).sum(1), 1, atol=1e-6)


def test_static_shapes_in_a_traced_step():
  """One compiled program for every key: no dynamic slices, no host
  callbacks; the box is a mask."""
  images, labels = _batch(np.uint8)
  jaxpr = jax.make_jaxpr(functools.partial(mixup.mixup, _RSB))(
      jax.random.key(0), images, labels
  )
  prims = {e.primitive.name for e in jaxpr.jaxpr.eqns}
  sub = str(jaxpr)
  for banned in ('dynamic_slice', 'dynamic_update_slice', 'callback'):
    assert banned not in sub, banned
  assert 'cond' not in prims and 'while' not in prims

  @jax.jit
  def step(key, step_index, images, labels):
    key = jax.random.fold_in(key, step_index)
    return mixup.mixup(_RSB, key, images, labels)

  for i in range(4):
    step(jax.random.key(1), i, images, labels)
  assert step._cache_size() == 1  # pylint: disable=protected-access


def test_cutmix_copies_the_partner_inside_the_box():
  """Direct check of the layout (NHWC, partner = flipped batch)."""
  cfg = mixup.MixupConfig(
      mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=10
  )
  images, _ = _batch(np.uint8)
  labels = np.arange(8, dtype=np.int32)
  draws = mixup.MixDraws(
      *(jnp.float32(v) for v in (0.0, 0.0, 1.0, 0.75)),
      *(jnp.int32(v) for v in (0, 0, 5, 7)),
  )
  out, targets = mixup.apply(cfg, draws, images, labels)
  # cut = int(24 * 0.5) = 12 rows about y 5 -> [0, 11); int(20 * .5) = 10
  # columns about x 7 -> [2, 12).
  want = images.copy()
  want[:, 0:11, 2:12] = images[::-1, 0:11, 2:12]
  np.testing.assert_array_equal(np.asarray(out), want)
  lam = 1 - 11 * 10 / (24 * 20)
  np.testing.assert_allclose(
      np.asarray(targets).max(1), np.maximum(lam, 1 - lam), rtol=1e-6
  )


def test_config_checks():
  with pytest.raises(ValueError):
    mixup.MixupConfig(mixup_alpha=0.0, cutmix_alpha=0.0)
  assert (
      mixup.MixupConfig(
          mixup_alpha=0.0, cutmix_minmax=(0.2, 0.8)
      ).effective_cutmix_alpha
      == 1.0
  )
  assert dataclasses.replace(_RSB, prob=0.5) != _RSB
  images, labels = _batch(np.uint8, n=7)
  with pytest.raises(ValueError, match='even'):
    mixup.mixup(_RSB, jax.random.key(0), images, labels)
