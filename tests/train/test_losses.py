"""Binary cross-entropy against timm's `BinaryCrossEntropy`, from fixtures.

tests/fixtures/rsb/bce.npz (tools/make_rsb_fixtures.py) holds logits
(with saturating values +-30, +-100), class indices or Mixup soft targets,
and timm's loss and gradient w.r.t. the logits for each case: with and
without smoothing and the RSB threshold 0.2, and soft targets exactly at
the threshold (0.2 is not > 0.2).
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from se_flax.train import losses

FIXTURES = os.path.join(
    os.path.dirname(__file__), '..', 'fixtures', 'rsb', 'bce.{}'
)
# float32: the loss to a few ulps, the gradient ((sigmoid(x) - t) / (N C))
# to well under the smallest perturbation below (1e-4 / (N C) per term).
LOSS_RTOL = 2e-6
GRAD_ATOL = 1e-8

META = json.load(open(FIXTURES.format('json')))
DATA = np.load(FIXTURES.format('npz'))


def case_inputs(name):
  c = META['cases'][name]
  return (
      DATA[f'{name}_logits'],
      DATA[f'{name}_targets'],
      c['smoothing'],
      c['target_threshold'],
  )


def loss_and_grad(logits, targets, smoothing, threshold):
  fn = lambda x: losses.binary_cross_entropy(x, targets, smoothing, threshold)
  loss, grad = jax.value_and_grad(fn)(jnp.asarray(logits))
  return np.asarray(loss), np.asarray(grad)


def assert_matches(name, loss, grad):
  np.testing.assert_allclose(loss, DATA[f'{name}_loss'], rtol=LOSS_RTOL)
  np.testing.assert_allclose(grad, DATA[f'{name}_grad'], rtol=0, atol=GRAD_ATOL)


@pytest.mark.parametrize('name', sorted(META['cases']))
def test_matches_timm(name):
  logits, targets, smoothing, threshold = case_inputs(name)
  assert_matches(name, *loss_and_grad(logits, targets, smoothing, threshold))


def test_cases_cover_rsb():
  cases = META['cases'].values()
  assert any(c['dense'] and c['target_threshold'] == 0.2 for c in cases)
  assert any(not c['dense'] and c['smoothing'] for c in cases)
  assert any(c['mixup_lam'] == 0.2 for c in cases)


def test_per_example_mean_is_the_loss():
  logits, targets, smoothing, threshold = case_inputs('mixup_thresh')
  per = losses.binary_cross_entropy_per_example(
      logits, targets, smoothing, threshold
  )
  assert per.shape == (logits.shape[0],)
  np.testing.assert_allclose(
      per.mean(),
      losses.binary_cross_entropy(logits, targets, smoothing, threshold),
      rtol=1e-6,
  )


def test_int_targets_are_timms_on_off_values():
  t = losses.bce_targets(jnp.array([2, 0]), 4, smoothing=0.1)
  off = np.float32(0.1 / 4)
  want = np.full((2, 4), off, np.float32)
  want[0, 2] = want[1, 0] = np.float32(1 - 0.1 + 0.1 / 4)
  np.testing.assert_array_equal(t, want)
  # Dense targets are used as they are: no smoothing on top of Mixup's.
  dense = jnp.full((2, 4), 0.25)
  np.testing.assert_array_equal(losses.bce_targets(dense, 4, 0.1), dense)


def test_threshold_is_strict():
  t = jnp.array([[0.2, 0.2000001, 0.8, 0.0]], jnp.float32)
  np.testing.assert_array_equal(
      losses.bce_targets(t, 4, target_threshold=0.2), [[0, 1, 1, 0]]
  )


def _wrong(name):
  """Plausible mistakes, each of which must miss the fixture."""
  return {
      'smoothing towards 0.5': lambda x, t, s, th: _bce(
          x,
          losses.bce_targets(t, x.shape[-1], 0.0, None) * (1 - s) + 0.5 * s,
          th,
      ),
      'threshold >=': lambda x, t, s, th: _bce(
          x,
          losses.bce_targets(t, x.shape[-1], s, None),
          th,
          ge=True,
      ),
      'no threshold': lambda x, t, s, th: losses.binary_cross_entropy(
          x, t, s, None
      ),
      'sum over classes': lambda x, t, s, th: x.shape[-1]
      * losses.binary_cross_entropy(x, t, s, th),
      'smoothing / (C - 1)': lambda x, t, s, th: _bce(
          x,
          jnp.where(
              jax.nn.one_hot(t, x.shape[-1]) > 0,
              1 - s,
              s / (x.shape[-1] - 1),
          ),
          th,
      ),
  }[name]


def _bce(x, t, th, ge=False):
  if th is not None:
    t = (t >= th) if ge else (t > th)
  return losses.binary_cross_entropy(x, t.astype(jnp.float32))


@pytest.mark.parametrize(
    'mistake,case',
    [
        ('smoothing towards 0.5', 'int_smooth'),
        ('smoothing / (C - 1)', 'int_smooth'),
        ('threshold >=', 'lam0.2_thresh'),
        ('no threshold', 'mixup_thresh'),
        ('no threshold', 'int_smooth_thresh'),
        ('sum over classes', 'int'),
    ],
)
def test_mistakes_miss_the_fixture(mistake, case):
  logits, targets, smoothing, threshold = case_inputs(case)
  fn = lambda x: _wrong(mistake)(x, targets, smoothing, threshold)
  loss, grad = jax.value_and_grad(fn)(jnp.asarray(logits))
  with pytest.raises(AssertionError):
    assert_matches(case, np.asarray(loss), np.asarray(grad))
