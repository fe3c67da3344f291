"""Generates tests/fixtures/mixup/: timm's batch Mixup on se_flax's draws.

Needs torch, timm and se_flax's JAX pins in one venv (no TensorFlow)::

  /work/torch-venv/bin/python tools/make_mixup_fixtures.py

timm draws with numpy's global RNG; se_flax with a JAX key. To compare the
arithmetic, timm's module-level `np` is swapped for one whose `random`
returns se_flax's draws (`se_flax.train.mixup.draw`, or handcrafted edge
draws) and records the bounds timm asks for. Float images go through
timm's `Mixup` (NCHW torch tensors), uint8 images through
`FastCollateMixup` (CHW numpy arrays), both with mode='batch'.

Writes ``cases.json`` (configs, seeds, timm version) and ``cases.npz``:
``input_uint8``, ``input_float32`` (N, H, W, C) NHWC, and per case
``{case}/draws`` (the 8 MixDraws values, float64), ``{case}/images`` (timm's
output, NHWC, input dtype) and ``{case}/targets`` float32 (N, classes).
tests/train/test_mixup_timm_live.py imports `timm_mixup` from here.
"""

import contextlib
import dataclasses
import json
import os
import sys

import jax
import numpy as np
import timm
import timm.data.mixup as timm_mixup_lib
import torch

from se_flax.train import mixup

OUT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    'tests',
    'fixtures',
    'mixup',
)
# Small and not square (H != W catches a swapped axis); N even.
SHAPE = (4, 16, 12, 3)
NUM_CLASSES = 10

# name -> MixupConfig fields. Mixup and CutMix alphas differ whenever both
# are on: the scripted RNG tells timm's two beta draws apart by alpha.
CONFIGS = {
    'rsb_a2': dict(mixup_alpha=0.1, cutmix_alpha=1.0, label_smoothing=0.1),
    'prob_switch': dict(
        mixup_alpha=0.4,
        cutmix_alpha=1.0,
        prob=0.7,
        switch_prob=0.3,
        label_smoothing=0.2,
    ),
    'cutmix_uncorrected': dict(
        mixup_alpha=0.0, cutmix_alpha=0.5, correct_lam=False
    ),
    'mixup_only': dict(mixup_alpha=0.2, label_smoothing=0.0),
    'minmax': dict(mixup_alpha=0.3, cutmix_minmax=(0.2, 0.8)),
}
# (config, dtype, first seed, count): draws from jax.random.key(seed).
KEYED = (
    ('rsb_a2', 'uint8', 0, 8),
    ('rsb_a2', 'float32', 100, 8),
    ('prob_switch', 'uint8', 200, 6),
    ('prob_switch', 'float32', 300, 4),
    ('cutmix_uncorrected', 'uint8', 400, 3),
    ('cutmix_uncorrected', 'float32', 500, 3),
    ('mixup_only', 'uint8', 600, 3),
    ('mixup_only', 'float32', 700, 3),
    ('minmax', 'uint8', 800, 4),
    ('minmax', 'float32', 900, 2),
)


def config(name: str) -> mixup.MixupConfig:
  return mixup.MixupConfig(num_classes=NUM_CLASSES, **CONFIGS[name])


def edge_draws(hw) -> list[tuple[str, str, str, dict]]:
  """(case, config, dtype, draws) at the boundaries of timm's arithmetic."""
  h, w = hw
  th = mixup._cut_thresholds(h)  # pylint: disable=protected-access
  up = lambda v: float(np.nextafter(np.float32(v), np.float32(2)))
  base = dict(
      u_apply=0.25, u_switch=0.1, lam_mixup=0.5, lam_cutmix=0.5, cut_h=0,
      cut_w=0, y=h // 2, x=w // 2,
  )  # fmt: skip
  cut = lambda **kw: {**base, **kw}
  mix = lambda **kw: {**base, 'u_switch': 0.9, **kw}
  c = h // 2  # a mid-size cut: lam at the last float32 that reaches it
  cases = [
      ('cut_at_threshold_corner', cut(lam_cutmix=float(th[c]), y=0, x=0)),
      ('cut_above_threshold_far', cut(lam_cutmix=up(th[c]), y=h - 1, x=w - 1)),
      ('cut_odd_threshold', cut(lam_cutmix=float(th[c + 1]), y=3, x=w - 2)),
      ('cut_lam_one', cut(lam_cutmix=1.0)),
      ('cut_lam_zero', cut(lam_cutmix=0.0, y=h // 2 - 1, x=1)),
      ('cut_lam_tiny', cut(lam_cutmix=1e-30)),
      ('mix_lam_one', mix(lam_mixup=1.0)),
      ('mix_lam_zero', mix(lam_mixup=0.0)),
      ('mix_lam_tiny', mix(lam_mixup=float(np.float32(3e-8)))),
      # 0.5 < 0.5 is False in timm: mixup.
      ('switch_at_prob', cut(u_switch=0.5)),
  ]
  out = []
  for dtype in ('uint8', 'float32'):
    out += [(f'edge_{n}_{dtype}', 'rsb_a2', dtype, d) for n, d in cases]
  # float32(0.7) < 0.7 in float64, so timm mixes; and u = 0.7 + 1 ulp not.
  for name, u in (('prob_f32_below', 0.7), ('prob_f32_above', up(0.7))):
    out.append(
        (
            f'edge_{name}_uint8',
            'prob_switch',
            'uint8',
            {**base, 'u_apply': float(np.float32(u))},
        )
    )
  return out


def draws_to_jax(values: dict) -> mixup.MixDraws:
  """MixDraws from plain numbers (floats as float32, ints as int32)."""
  ints = ('cut_h', 'cut_w', 'y', 'x')
  return mixup.MixDraws(
      **{
          k: np.asarray(v, np.int32 if k in ints else np.float32)
          for k, v in values.items()
      }
  )


class _ScriptedRandom:
  """Stands in for numpy.random in timm.data.mixup: returns given draws.

  Records every randint's (low, high) so a test can check that timm asks
  for the ranges se_flax draws from.
  """

  def __init__(self, cfg: mixup.MixupConfig, draws: mixup.MixDraws):
    self._cfg = cfg
    self._draws = draws
    self._uniform = [float(draws.u_apply), float(draws.u_switch)]
    ints = [int(draws.y), int(draws.x)]
    if cfg.cutmix_minmax is not None:
      ints = [int(draws.cut_h), int(draws.cut_w)] + ints
    self._ints = ints
    self.randint_bounds = []

  def rand(self, *size):
    assert not size, size
    return self._uniform.pop(0)

  def beta(self, a, b, size=None):
    assert size is None and a == b, (a, b, size)
    cfg = self._cfg
    if cfg.mixup_alpha > 0 and cfg.effective_cutmix_alpha > 0:
      assert cfg.mixup_alpha != cfg.effective_cutmix_alpha
    if a == cfg.effective_cutmix_alpha:
      return float(self._draws.lam_cutmix)
    assert a == cfg.mixup_alpha, a
    return float(self._draws.lam_mixup)

  def randint(self, low, high=None, size=None):
    assert size is None and high is not None, (low, high, size)
    value = self._ints.pop(0)
    self.randint_bounds.append((int(low), int(high)))
    assert low <= value < high, (low, value, high)
    return value


class _Numpy:
  """numpy, with `random` replaced."""

  def __init__(self, random):
    self.random = random

  def __getattr__(self, name):
    return getattr(np, name)


@contextlib.contextmanager
def _scripted(random):
  saved = timm_mixup_lib.np
  timm_mixup_lib.np = _Numpy(random)
  try:
    yield
  finally:
    timm_mixup_lib.np = saved


def timm_kwargs(cfg: mixup.MixupConfig) -> dict:
  kw = dataclasses.asdict(cfg)
  if kw['cutmix_minmax'] is not None:
    kw['cutmix_minmax'] = list(kw['cutmix_minmax'])
  return dict(kw, mode='batch')


def timm_mixup(cfg, draws, images, labels):
  """timm's batch Mixup of NHWC `images` with the given draws.

  float images: timm.data.mixup.Mixup on an NCHW float tensor; uint8:
  FastCollateMixup on a list of (CHW array, label). Returns (images NHWC
  in the input dtype, targets float32 (N, classes), randint bounds).
  """
  random = _ScriptedRandom(cfg, draws)
  chw = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
  with _scripted(random):
    if images.dtype == np.uint8:
      fn = timm_mixup_lib.FastCollateMixup(**timm_kwargs(cfg))
      out, targets = fn([(im.copy(), int(l)) for im, l in zip(chw, labels)])
    else:
      fn = timm_mixup_lib.Mixup(**timm_kwargs(cfg))
      out, targets = fn(
          torch.from_numpy(chw.copy()), torch.from_numpy(labels).long()
      )
  out = out.numpy().transpose(0, 2, 3, 1)
  assert out.dtype == images.dtype, (out.dtype, images.dtype)
  return out, targets.numpy(), random.randint_bounds


def expected_bounds(cfg, draws, hw):
  """The randint ranges se_flax draws from, in timm's call order."""
  h, w = hw
  if cfg.cutmix_minmax is None:
    return [(0, h), (0, w)]
  side = mixup._minmax_range  # pylint: disable=protected-access
  rh, rw = side(h, cfg.cutmix_minmax), side(w, cfg.cutmix_minmax)
  return [rh, rw, (0, h - int(draws.cut_h) + 1), (0, w - int(draws.cut_w) + 1)]


def main():
  rng = np.random.default_rng(29)
  n, h, w, c = SHAPE
  inputs = {
      'uint8': rng.integers(0, 256, SHAPE, dtype=np.uint8),
      # Full-mantissa values, so that products round.
      'float32': rng.standard_normal(SHAPE).astype(np.float32),
  }
  labels = rng.integers(0, NUM_CLASSES, (n,)).astype(np.int32)
  cases = []
  for name, dtype, seed0, count in KEYED:
    for seed in range(seed0, seed0 + count):
      draws = mixup.draw(config(name), jax.random.key(seed), (h, w))
      cases.append((f'{name}_{dtype}_{seed}', name, dtype, seed, draws))
  for case, name, dtype, values in edge_draws((h, w)):
    cases.append((case, name, dtype, None, draws_to_jax(values)))

  arrays = {
      'input_uint8': inputs['uint8'],
      'input_float32': inputs['float32'],
      'labels': labels,
  }
  meta = []
  for case, name, dtype, seed, draws in cases:
    cfg = config(name)
    images, targets, bounds = timm_mixup(cfg, draws, inputs[dtype], labels)
    # timm only draws a box for CutMix; when it does, the ranges must match.
    if bounds:
      assert bounds == expected_bounds(cfg, draws, (h, w)), (case, bounds)
    use_cutmix, lam, oml, _ = mixup.mix_weights(cfg, draws, (h, w))
    arrays[f'{case}/draws'] = np.asarray([float(v) for v in draws], np.float64)
    arrays[f'{case}/images'] = images
    arrays[f'{case}/targets'] = targets
    meta.append(dict(
        case=case, config=name, dtype=dtype, seed=seed,
        cutmix=bool(use_cutmix), lam=float(lam), one_minus_lam=float(oml),
        randint_bounds=bounds,
    ))  # fmt: skip
    print(f'{case:40s} cutmix={bool(use_cutmix)!s:5} lam={float(lam):.6f}')
  os.makedirs(OUT, exist_ok=True)
  np.savez_compressed(os.path.join(OUT, 'cases.npz'), **arrays)
  with open(os.path.join(OUT, 'cases.json'), 'w') as f:
    json.dump(
        dict(
            timm=timm.__version__,
            torch=torch.__version__,
            jax=jax.__version__,
            numpy=np.__version__,
            shape=SHAPE,
            num_classes=NUM_CLASSES,
            configs={k: dataclasses.asdict(config(k)) for k in CONFIGS},
            draw_fields=list(mixup.MixDraws._fields),
            cases=meta,
        ),
        f,
        indent=1,
    )
  print(f'{len(cases)} cases -> {OUT}', file=sys.stderr)


if __name__ == '__main__':
  main()
