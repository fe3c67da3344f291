"""Generates the LAMB and BCE fixtures in ``tests/fixtures/rsb/``.

Needs PyTorch and timm, never TensorFlow (a separate venv, e.g.
/work/torch-venv with torch, timm and the project's JAX pins)::

  /work/torch-venv/bin/python tools/make_rsb_fixtures.py

The live test (tests/train/test_lamb_losses_timm_live.py) imports the
reference functions below and runs them on fresh random inputs.

Files:

* ``lamb.npz`` + ``lamb.json``: for each case, the initial parameters, the
  gradients and learning rates of each step, and the parameters after each
  step of timm's ``Lamb`` as ``train.py --opt lamb --weight-decay WD``
  builds it (``create_optimizer_v2``: ``param_groups_weight_decay``, then
  ``Lamb`` with its defaults), with timm's single-tensor update (its CPU
  default) and its foreach update (its CUDA default). float32, as timm.
* ``bce.npz`` + ``bce.json``: logits, targets (class indices or dense soft
  targets), timm's ``BinaryCrossEntropy(smoothing, target_threshold)`` loss
  and its gradient with respect to the logits, in float32.
"""

import json
import os

import numpy as np
import timm
import timm.data.mixup
import timm.loss
import timm.optim
import torch

OUT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), '..', 'tests', 'fixtures', 'rsb'
)

# Flax-style leaf paths and shapes (conv kernels HWIO). The optimizer is
# elementwise plus per-tensor norms, so layouts do not matter; the names
# and ranks drive timm's decay grouping (ndim <= 1 or '.bias': no decay).
LEAVES = (
    ('conv/kernel', (3, 3, 4, 8)),  # decay, trust ratio
    ('bn/scale', (8,)),  # 1-D: no decay
    ('bn/bias', (8,)),
    ('fc/kernel', (16, 10)),
    ('fc/bias', (10,)),
    ('pos/bias', (2, 3)),  # 2-D but named bias: no decay (name rule)
    ('zero/kernel', (4, 4)),  # starts at 0: ||p|| = 0, trust ratio 1
    ('dead/kernel', (3, 3)),  # 0 and zero gradients: both norms 0
    ('still/kernel', (5, 5)),  # zero gradients: the update is WD * p only
    ('tiny/bias', (6,)),  # gradients ~1e-7: eps dominates sqrt(v_hat)
)
ZERO_INIT = ('zero/kernel', 'dead/kernel')
ZERO_GRAD = ('dead/kernel', 'still/kernel')


def lamb_inputs(seed: int, steps: int, leaves=LEAVES):
  """(params, grads, lrs): params {path: (shape)}, grads {path: (S, *shape)},
  lrs (S,), all float32. Even steps have global gradient norm ~8 (clipped at
  1), odd steps ~0.3 (unclipped); learning rates vary per step, like a
  warmup-then-decay schedule."""
  rng = np.random.default_rng(seed)
  params, grads = {}, {}
  for path, shape in leaves:
    p = rng.normal(0, 0.5, shape)
    params[path] = (0 * p if path in ZERO_INIT else p).astype(np.float32)
    g = rng.normal(0, 1, (steps,) + shape)
    if path in ZERO_GRAD:
      g = 0 * g
    if path == 'tiny/bias':
      g = g * 1e-7
    grads[path] = g
  # Per-step global norm targets: clipping on (8) and off (0.3) in turn.
  for s in range(steps):
    norm = np.sqrt(sum(np.sum(grads[k][s] ** 2) for k in grads))
    target = 8.0 if s % 2 == 0 else 0.3
    for k in grads:
      grads[k][s] = grads[k][s] * (target / norm)
  grads = {k: v.astype(np.float32) for k, v in grads.items()}
  lrs = np.linspace(2e-3, 8e-3, steps)[rng.permutation(steps)]
  return params, grads, lrs.astype(np.float32)


def _module(params):
  """An nn.Module whose named_parameters are 'conv.kernel', ... ."""
  root = torch.nn.Module()
  for path, value in params.items():
    owner, name = path.split('/')
    if not hasattr(root, owner):
      root.add_module(owner, torch.nn.Module())
    getattr(root, owner).register_parameter(
        name, torch.nn.Parameter(torch.tensor(value))
    )
  return root


def timm_lamb_trajectory(
    params, grads, lrs, weight_decay, foreach=False, **lamb_kwargs
):
  """timm's Lamb on `grads` step by step: {path: (S, *shape)} float32, the
  parameters after each step. `lamb_kwargs` go to `Lamb` (none for RSB)."""
  module = _module(params)
  opt = timm.optim.create_optimizer_v2(
      module,
      opt='lamb',
      lr=float(lrs[0]),
      weight_decay=weight_decay,
      foreach=foreach,
      **lamb_kwargs,
  )
  assert type(opt) is timm.optim.Lamb, type(opt)
  named = dict(module.named_parameters())
  out = {path: [] for path in params}
  for s, lr in enumerate(lrs):
    for group in opt.param_groups:
      group['lr'] = float(lr)  # what timm's scheduler does each update
    for path in params:
      named[path.replace('/', '.')].grad = torch.tensor(grads[path][s])
    opt.step()
    for path in params:
      out[path].append(named[path.replace('/', '.')].detach().numpy().copy())
  return {k: np.stack(v) for k, v in out.items()}


def timm_decayed(params, weight_decay):
  """The paths timm's param_groups_weight_decay puts in a decay group."""
  module = _module(params)
  groups = timm.optim.param_groups_weight_decay(module, weight_decay)
  ids = {id(p) for g in groups if g['weight_decay'] for p in g['params']}
  return sorted(
      n.replace('.', '/') for n, p in module.named_parameters() if id(p) in ids
  )


# (name, weight_decay): RSB A1 and A2/A3, and no decay at all (timm then
# skips decay and the trust ratio on every leaf).
LAMB_CASES = (('wd0.01', 0.01), ('wd0.02', 0.02), ('wd0', 0.0))
LAMB_STEPS = 6


def mixup_targets(labels, lam, num_classes, smoothing):
  """timm Mixup's batch-mode soft targets (N, C) float32: timm's own
  `mixup_target`, the smoothed one-hot mixed with the flipped batch's."""
  return timm.data.mixup.mixup_target(
      torch.tensor(labels), num_classes, lam=lam, smoothing=smoothing
  ).numpy()


def timm_bce(logits, targets, smoothing, target_threshold):
  """timm's BinaryCrossEntropy loss and its gradient w.r.t. the logits."""
  fn = timm.loss.BinaryCrossEntropy(
      smoothing=smoothing, target_threshold=target_threshold
  )
  x = torch.tensor(logits, requires_grad=True)
  t = torch.tensor(targets)
  loss = fn(x, t)
  loss.backward()
  return loss.detach().numpy(), x.grad.numpy()


def bce_inputs(seed, n, c, dense, lam=0.7, smoothing_in_targets=0.1):
  """(logits (N, C) float32, targets): int32 labels (N,) or Mixup soft
  targets (N, C). Logits include saturating values (+-30, +-100)."""
  rng = np.random.default_rng(seed)
  logits = rng.normal(0, 3, (n, c)).astype(np.float32)
  logits.flat[rng.choice(n * c, min(8, n * c), replace=False)] = [
      30,
      -30,
      100,
      -100,
      17,
      -17,
      0,
      0,
  ][: min(8, n * c)]
  labels = rng.integers(0, c, (n,))
  if not dense:
    return logits, labels.astype(np.int32)
  return logits, mixup_targets(labels, lam, c, smoothing_in_targets)


# (name, dense, lam, smoothing in Mixup, BCE smoothing, threshold, N, C).
# 'lam0.2' puts soft targets exactly at the RSB threshold: `>` keeps them 0.
BCE_CASES = (
    ('int', False, None, None, 0.0, None, 8, 10),
    ('int_smooth', False, None, None, 0.1, None, 8, 10),
    ('int_smooth_thresh', False, None, None, 0.1, 0.2, 8, 10),
    ('int_1000', False, None, None, 0.1, None, 4, 1000),
    ('mixup', True, 0.7, 0.1, 0.1, None, 8, 10),
    ('mixup_thresh', True, 0.7, 0.1, 0.1, 0.2, 8, 10),
    ('mixup_thresh_1000', True, 0.85, 0.1, 0.1, 0.2, 4, 1000),
    ('lam0.2_thresh', True, 0.2, 0.0, 0.1, 0.2, 8, 10),
    ('lam0.9_thresh', True, 0.9, 0.0, 0.0, 0.2, 8, 10),
)


def main():
  os.makedirs(OUT, exist_ok=True)
  versions = {'timm': timm.__version__, 'torch': torch.__version__}

  arrays, meta = {}, {'versions': versions, 'steps': LAMB_STEPS, 'cases': {}}
  params, grads, lrs = lamb_inputs(0, LAMB_STEPS)
  paths = [p for p, _ in LEAVES]
  for i, path in enumerate(paths):
    arrays[f'init_{i}'] = params[path]
    arrays[f'grads_{i}'] = grads[path]
  arrays['lrs'] = lrs
  for name, wd in LAMB_CASES:
    for foreach in (False, True):
      traj = timm_lamb_trajectory(params, grads, lrs, wd, foreach=foreach)
      impl = 'foreach' if foreach else 'single'
      for i, path in enumerate(paths):
        arrays[f'{name}_{impl}_{i}'] = traj[path]
    meta['cases'][name] = {
        'weight_decay': wd,
        'decayed': timm_decayed(params, wd),
    }
  meta['paths'] = paths
  meta['lamb_defaults'] = {
      'betas': [0.9, 0.999],
      'eps': 1e-6,
      'max_grad_norm': 1.0,
      'bias_correction': True,
      'trust_clip': False,
      'always_adapt': False,
      'decoupled_decay': False,
  }
  np.savez_compressed(os.path.join(OUT, 'lamb.npz'), **arrays)
  with open(os.path.join(OUT, 'lamb.json'), 'w') as f:
    json.dump(meta, f, indent=1)

  arrays, meta = {}, {'versions': versions, 'cases': {}}
  for k, (name, dense, lam, mix_smooth, smoothing, thresh, n, c) in enumerate(
      BCE_CASES
  ):
    logits, targets = bce_inputs(
        100 + k, n, c, dense, lam=lam, smoothing_in_targets=mix_smooth
    )
    loss, grad = timm_bce(logits, targets, smoothing, thresh)
    arrays[f'{name}_logits'] = logits
    arrays[f'{name}_targets'] = targets
    arrays[f'{name}_loss'] = loss
    arrays[f'{name}_grad'] = grad
    meta['cases'][name] = {
        'smoothing': smoothing,
        'target_threshold': thresh,
        'dense': dense,
        'mixup_lam': lam,
        'mixup_smoothing': mix_smooth,
        'loss': float(loss),
    }
  np.savez_compressed(os.path.join(OUT, 'bce.npz'), **arrays)
  with open(os.path.join(OUT, 'bce.json'), 'w') as f:
    json.dump(meta, f, indent=1)
  for f in ('lamb.npz', 'lamb.json', 'bce.npz', 'bce.json'):
    print(f, os.path.getsize(os.path.join(OUT, f)), 'bytes')


if __name__ == '__main__':
  main()
