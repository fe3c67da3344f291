"""LAMB and BCE against timm itself, on fresh inputs, when timm is installed.

Not a CI dependency: skipped unless torch and timm import (a separate venv,
see tools/make_rsb_fixtures.py); test_lamb.py and test_losses.py check the
committed fixtures without them. The reference functions are the fixture
generator's, run here on other seeds, shapes and hyperparameters.
"""

import importlib.util
import os

import numpy as np
import pytest

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

import se_flax  # pylint: disable=g-import-not-at-top
from se_flax.train import lamb as lamb_lib  # pylint: disable=g-import-not-at-top
from se_flax.train import losses  # pylint: disable=g-import-not-at-top
from tests.train import test_lamb  # pylint: disable=g-import-not-at-top
from tests.train import test_losses  # pylint: disable=g-import-not-at-top


def _load_generator():
  path = os.path.join(
      os.path.dirname(__file__), '..', '..', 'tools', 'make_rsb_fixtures.py'
  )
  spec = importlib.util.spec_from_file_location('make_rsb_fixtures', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


ref = _load_generator()

# The fixture's edge leaves plus ResNet-50-sized ones (a stem conv, a 3x3
# conv, the 2048 -> 1000 classifier, an SE FC pair and BN vectors).
BIG_LEAVES = ref.LEAVES + (
    ('stem/kernel', (7, 7, 3, 64)),
    ('conv2/kernel', (3, 3, 64, 64)),
    ('head/kernel', (2048, 1000)),
    ('head/bias', (1000,)),
    ('se_fc1/kernel', (256, 16)),
    ('se_fc1/bias', (16,)),
    ('bn2/scale', (64,)),
    ('bn2/bias', (64,)),
)


# 10 steps of ~1e-2 each, on up to 2M-element leaves: the float32 noise of
# test_lamb.py's note accumulates to ~1e-6 (the big leaves: torch's norm of
# the 2048 x 1000 kernel is off by 2.7e-5 relative). Still 40x under the
# smallest perturbation (b2 0.999 -> 0.99), checked below.
LIVE_ATOL = 2.5e-6


@pytest.mark.parametrize('foreach', [False, True])
@pytest.mark.parametrize(
    'seed,leaves,wd',
    [
        (11, 'small', 0.01),
        (12, 'small', 0.02),
        (13, 'small', 0.0),
        (14, 'big', 0.02),
        (15, 'big', 0.05),
    ],
)
def test_lamb_matches_timm(seed, leaves, wd, foreach):
  steps = 10
  params, grads, lrs = ref.lamb_inputs(
      seed, steps, ref.LEAVES if leaves == 'small' else BIG_LEAVES
  )
  want = ref.timm_lamb_trajectory(params, grads, lrs, wd, foreach=foreach)
  tx = lamb_lib.lamb(test_lamb.lrs_schedule(lrs), weight_decay=wd)
  got = test_lamb.run_lamb(tx, params, grads, steps)
  abs_err, rel_err = test_lamb.max_error(got, want)
  print(
      f'lamb seed={seed} wd={wd} foreach={foreach}: {abs_err=:.2e} {rel_err=:.2e}'
  )
  test_lamb.assert_close(got, want, atol=LIVE_ATOL)
  if wd:
    mask = lamb_lib.timm_weight_decay_mask(test_lamb._unflatten(params))
    decayed = sorted(k for k, v in test_lamb._flatten(mask).items() if v)
    assert decayed == ref.timm_decayed(params, wd)


@pytest.mark.parametrize(
    'perturbed',
    [
        dict(b2=0.99),
        dict(eps=1e-8),
        dict(weight_decay=0.025),
        dict(max_grad_norm=None),
        dict(weight_decay_mask=None),
    ],
    ids=str,
)
def test_lamb_perturbed_misses_timm(perturbed):
  """The live tolerance is tight enough to see each hyperparameter."""
  steps = 10
  params, grads, lrs = ref.lamb_inputs(14, steps, BIG_LEAVES)
  want = ref.timm_lamb_trajectory(params, grads, lrs, 0.02)
  kwargs = dict(weight_decay=0.02) | perturbed
  tx = lamb_lib.lamb(test_lamb.lrs_schedule(lrs), **kwargs)
  got = test_lamb.run_lamb(tx, params, grads, steps)
  print(f'lamb {perturbed}: abs_err=%.2e' % test_lamb.max_error(got, want)[0])
  with pytest.raises(AssertionError):
    test_lamb.assert_close(got, want, atol=LIVE_ATOL)


@pytest.mark.parametrize('name', ['seresnet50', 'resnet50'])
def test_decay_groups_match_timm_model(name):
  """timm's decay/no-decay split of its own network equals the mask's on
  se_flax's (the same tensors, counted: number and elements per group)."""
  model = timm.create_model(name, pretrained=False)
  groups = timm.optim.param_groups_weight_decay(model, 0.02)
  timm_split = {
      bool(g['weight_decay']): (
          len(g['params']),
          sum(p.numel() for p in g['params']),
      )
      for g in groups
  }
  flax_model = se_flax.create_model(name)
  params = jax.eval_shape(
      lambda: flax_model.init(
          jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False
      )
  )['params']
  mask = jax.tree_util.tree_leaves(lamb_lib.timm_weight_decay_mask(params))
  leaves = jax.tree_util.tree_leaves(params)
  flax_split = {
      decay: (
          sum(m == decay for m in mask),
          sum(
              int(np.prod(x.shape)) for m, x in zip(mask, leaves) if m == decay
          ),
      )
      for decay in (True, False)
  }
  assert flax_split == timm_split


def _bce_case(seed, n, c, dense):
  """Fresh logits and labels, or Mixup soft targets at a random lam."""
  lam = float(np.random.default_rng(seed).beta(1.0, 1.0)) if dense else None
  return ref.bce_inputs(seed, n, c, dense, lam=lam, smoothing_in_targets=0.1)


@pytest.mark.parametrize('seed', [21, 22, 23])
@pytest.mark.parametrize('threshold', [None, 0.2, 0.5])
@pytest.mark.parametrize('smoothing', [0.0, 0.1])
@pytest.mark.parametrize('dense', [False, True])
@pytest.mark.parametrize('n,c', [(16, 10), (8, 1000)])
def test_bce_matches_timm(n, c, dense, smoothing, threshold, seed):
  logits, targets = _bce_case(seed, n, c, dense)
  want_loss, want_grad = ref.timm_bce(logits, targets, smoothing, threshold)
  loss, grad = test_losses.loss_and_grad(logits, targets, smoothing, threshold)
  np.testing.assert_allclose(loss, want_loss, rtol=test_losses.LOSS_RTOL)
  np.testing.assert_allclose(
      grad, want_grad, rtol=0, atol=test_losses.GRAD_ATOL
  )


def test_bce_rsb_batch_with_timm_mixup():
  """RSB's path end to end on timm's side: timm's `Mixup` (mixup 0.1,
  cutmix 1.0, smoothing 0.1) makes the targets, BCE(threshold 0.2) scores
  them; se_flax's loss on the same logits and targets agrees."""
  from timm.data import Mixup  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  np.random.seed(0)
  mixup = Mixup(
      mixup_alpha=0.1, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=1000
  )
  for _ in range(5):
    x = torch.randn(8, 3, 16, 16)
    y = torch.randint(0, 1000, (8,))
    _, targets = mixup(x, y)
    logits = np.random.default_rng(0).normal(0, 3, (8, 1000)).astype(np.float32)
    want_loss, want_grad = ref.timm_bce(logits, targets.numpy(), 0.1, 0.2)
    loss, grad = test_losses.loss_and_grad(logits, targets.numpy(), 0.1, 0.2)
    np.testing.assert_allclose(loss, want_loss, rtol=test_losses.LOSS_RTOL)
    np.testing.assert_allclose(
        grad, want_grad, rtol=0, atol=test_losses.GRAD_ATOL
    )
