"""Mixup / CutMix on the device: timm's `Mixup` in batch mode, jittable.

One (lam, box) per batch; every image is mixed with its partner in the
flipped batch (image i with image N-1-i), as timm's `Mixup(mode='batch')`
(timm/data/mixup.py) does. Shapes are static: the CutMix box is a mask, so
`mixup` runs inside a jitted train step, and all randomness comes from a JAX
key, so (seed, step) determines the batch.

The work is split in two so that it can be checked against timm draw for
draw:

  `draw(config, key, hw)`            the random numbers timm draws with
                                     numpy's global RNG (`MixDraws`);
  `apply(config, draws, x, labels)`  everything else, deterministic.

Arithmetic follows timm's to the bit on float32 (see `apply`): timm computes
the box size and the corrected lambda in float64; here they come from
float32 with thresholds and formulas that give the same values for every
float32 lambda and box area (the box-size thresholds are computed in
float64 with numpy when tracing).
"""

import dataclasses
import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class MixupConfig:
  """timm's `Mixup` arguments (batch mode); hashable, so a static argument.

  Defaults are timm's. With `cutmix_minmax` set, CutMix is on and its
  alpha is 1.0 whatever `cutmix_alpha` says (as in timm).
  """

  mixup_alpha: float = 1.0
  cutmix_alpha: float = 0.0
  cutmix_minmax: tuple[float, float] | None = None
  prob: float = 1.0  # chance of mixing a batch at all
  switch_prob: float = 0.5  # chance of CutMix when both are on
  correct_lam: bool = True  # lambda from the clipped box's area
  label_smoothing: float = 0.1
  num_classes: int = 1000

  def __post_init__(self):
    if self.cutmix_minmax is not None:
      if len(self.cutmix_minmax) != 2:
        raise ValueError(f'cutmix_minmax needs 2 values: {self.cutmix_minmax}')
      object.__setattr__(self, 'cutmix_minmax', tuple(self.cutmix_minmax))
    if self.mixup_alpha <= 0 and self.effective_cutmix_alpha <= 0:
      raise ValueError('mixup_alpha or cutmix_alpha must be > 0.')

  @property
  def effective_cutmix_alpha(self) -> float:
    return 1.0 if self.cutmix_minmax is not None else self.cutmix_alpha


class MixDraws(NamedTuple):
  """The random draws of one batch, in timm's order of use (scalars).

  u_apply: uniform [0, 1); the batch is mixed iff u_apply < prob.
  u_switch: uniform [0, 1); CutMix iff u_switch < switch_prob (both on).
  lam_mixup, lam_cutmix: float32 Beta(alpha, alpha) draws (1.0 when off).
  cut_h, cut_w: int32 box size in pixels, drawn only with cutmix_minmax
    (0 otherwise: the size then follows from lambda).
  y, x: int32 box centre (rand_bbox) or top-left corner (cutmix_minmax),
    in pixels.
  """

  u_apply: jax.Array
  u_switch: jax.Array
  lam_mixup: jax.Array
  lam_cutmix: jax.Array
  cut_h: jax.Array
  cut_w: jax.Array
  y: jax.Array
  x: jax.Array


def _below(p: float) -> np.float32:
  """The float32 t with u < t iff u < p (float64), for every float32 u.

  timm compares numpy's float64 uniform with the float64 `prob`; comparing
  a float32 with p rounded to nearest would differ when p is not a float32
  (0.7 rounds down: 0.7f < 0.7 but not < float32(0.7)).
  """
  t = np.float32(p)
  return np.nextafter(t, np.float32(np.inf)) if float(t) < p else t


def _minmax_range(size: int, minmax) -> tuple[int, int]:
  """[low, high) of a minmax box side, timm's int() truncations."""
  return int(size * minmax[0]), int(size * minmax[1])


def draw(config: MixupConfig, key: jax.Array, hw: tuple[int, int]) -> MixDraws:
  """Draws one batch's mixing parameters from `key` for images of size hw.

  Every draw is made whether used or not (static shapes); `apply` picks.
  """
  h, w = hw
  k = jax.random.split(key, 8)
  f32 = jnp.float32

  def beta(k, alpha):
    if alpha <= 0:
      return jnp.ones((), f32)
    return jax.random.beta(k, alpha, alpha, dtype=f32)

  if config.cutmix_minmax is None:
    cut_h = cut_w = jnp.zeros((), jnp.int32)
    y = jax.random.randint(k[6], (), 0, h)
    x = jax.random.randint(k[7], (), 0, w)
  else:
    cut_h = jax.random.randint(
        k[4], (), *_minmax_range(h, config.cutmix_minmax)
    )
    cut_w = jax.random.randint(
        k[5], (), *_minmax_range(w, config.cutmix_minmax)
    )
    # timm: randint(0, img_h - cut_h + 1), so the box lies inside the image.
    y = jax.random.randint(k[6], (), 0, h - cut_h + 1)
    x = jax.random.randint(k[7], (), 0, w - cut_w + 1)
  return MixDraws(
      u_apply=jax.random.uniform(k[0], (), f32),
      u_switch=jax.random.uniform(k[1], (), f32),
      lam_mixup=beta(k[2], config.mixup_alpha),
      lam_cutmix=beta(k[3], config.effective_cutmix_alpha),
      cut_h=cut_h,
      cut_w=cut_w,
      y=y,
      x=x,
  )


@functools.lru_cache(maxsize=None)
def _cut_thresholds(size: int) -> np.ndarray:
  """float32 (size,) T with timm's int(size * sqrt(1 - lam)) >= c iff
  lam <= T[c - 1], for every float32 lam in [0, 1].

  timm computes the cut in float64; its result is non-increasing in lam,
  so each c has a largest float32 lam that reaches it. Found by bisection
  over float32 bit patterns (ordered like the values for lam >= 0).
  """

  def cut(bits):
    lam = bits.astype(np.uint32).view(np.float32).astype(np.float64)
    return (size * np.sqrt(1.0 - lam)).astype(np.int64)

  c = np.arange(1, size + 1)
  lo = np.zeros(size, np.int64)  # lam = 0.0 gives cut = size >= c
  hi = np.full(size, 0x3F800000, np.int64)  # lam = 1.0 gives cut = 0 < c
  while np.any(hi - lo > 1):
    mid = (lo + hi) // 2
    ok = cut(mid) >= c
    lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
  return lo.astype(np.uint32).view(np.float32)


def _cut_size(lam: jax.Array, size: int) -> jax.Array:
  """timm's int(size * np.sqrt(1 - lam)) for a float32 lam, int32."""
  return jnp.sum(lam <= jnp.asarray(_cut_thresholds(size)), dtype=jnp.int32)


def cutmix_box(
    config: MixupConfig, draws: MixDraws, lam: jax.Array, hw: tuple[int, int]
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """timm's box (yl, yh, xl, xh), int32 pixels, half-open.

  rand_bbox: side = int(side * sqrt(1 - lam)) about the drawn centre,
  clipped to the image; rand_bbox_minmax: the drawn size at the drawn
  corner.
  """
  h, w = hw
  if config.cutmix_minmax is not None:
    return draws.y, draws.y + draws.cut_h, draws.x, draws.x + draws.cut_w
  cut_h, cut_w = _cut_size(lam, h), _cut_size(lam, w)
  yl = jnp.clip(draws.y - cut_h // 2, 0, h)
  yh = jnp.clip(draws.y + (cut_h + 1) // 2, 0, h)
  xl = jnp.clip(draws.x - cut_w // 2, 0, w)
  xh = jnp.clip(draws.x + (cut_w + 1) // 2, 0, w)
  return yl, yh, xl, xh


def _ratio(n: jax.Array, d: int) -> jax.Array:
  """n / d correctly rounded to float32, for int32 0 <= n <= d < 2**24.

  In integers, because XLA may turn a division by a constant into a
  multiplication by its rounded reciprocal (it does under jit on CPU),
  which is off by an ulp for some n.
  """
  if not 0 < d < 2**24:
    raise ValueError(f'Image area {d} out of range.')
  bits = d.bit_length()
  # Shift n left by s so that d <= n << s < 2 d: the quotient is in [1, 2).
  # (n << j) < d iff n < ceil(d / 2**j), without overflowing int32.
  s = sum(n < -(-d // 2**j) for j in range(bits + 1)).astype(jnp.int32)
  r = jnp.left_shift(n, s) - d
  m = jnp.ones_like(n)
  for _ in range(23):  # long division: the 23 bits after the leading 1
    r = r << 1
    bit = (r >= d).astype(jnp.int32)
    m, r = (m << 1) | bit, r - bit * d
  # Round half to even on the remainder.
  up = (2 * r > d) | ((2 * r == d) & (m % 2 == 1))
  m = m + up.astype(jnp.int32)
  q = jnp.ldexp(m.astype(jnp.float32), -(23 + s))
  return jnp.where(n == 0, jnp.float32(0), q)


def mix_weights(
    config: MixupConfig, draws: MixDraws, hw: tuple[int, int]
) -> tuple[jax.Array, jax.Array, jax.Array, tuple[jax.Array, ...]]:
  """(use_cutmix, lam, one_minus_lam, box) of a batch, float32 weights.

  lam weighs the image itself, one_minus_lam its flipped partner; they are
  timm's float64 lam and 1 - lam rounded to float32 (what torch multiplies
  a float32 tensor by). Unmixed batches have lam 1, one_minus_lam 0.
  """
  h, w = hw
  one = jnp.ones((), jnp.float32)
  mixup_on = config.mixup_alpha > 0
  cutmix_on = config.effective_cutmix_alpha > 0
  if mixup_on and cutmix_on:
    use_cutmix = draws.u_switch < _below(config.switch_prob)
  else:
    use_cutmix = jnp.asarray(cutmix_on)
  lam_raw = jnp.where(use_cutmix, draws.lam_cutmix, draws.lam_mixup)
  # timm's _mix_batch leaves the batch alone when lam is exactly 1.
  mixed = (draws.u_apply < _below(config.prob)) & (lam_raw != 1.0)
  use_cutmix = mixed & use_cutmix

  box = cutmix_box(config, draws, lam_raw, hw)
  yl, yh, xl, xh = box
  if config.correct_lam or config.cutmix_minmax is not None:
    # timm: lam = 1. - area / float(H * W) in float64; rounded to float32,
    # lam and 1 - lam are the correctly rounded quotients below (checked
    # over every area in the tests).
    area = (yh - yl) * (xh - xl)
    lam_cut, oml_cut = _ratio(h * w - area, h * w), _ratio(area, h * w)
  else:
    lam_cut, oml_cut = lam_raw, 1.0 - lam_raw
  lam = jnp.where(use_cutmix, lam_cut, jnp.where(mixed, lam_raw, one))
  oml = jnp.where(use_cutmix, oml_cut, jnp.where(mixed, 1.0 - lam_raw, 0.0))
  return use_cutmix, lam, oml, box


def mixup_target(
    labels: jax.Array,
    num_classes: int,
    lam: jax.Array,
    one_minus_lam: jax.Array,
    smoothing: float = 0.0,
) -> jax.Array:
  """timm's mixup_target: smoothed one-hots mixed with the flipped batch.

  labels int (N,) -> float32 (N, num_classes). off = smoothing / classes,
  on = 1 - smoothing + off, both computed in float64 as timm does.
  """
  off = smoothing / num_classes
  on = 1.0 - smoothing + off
  y1 = jnp.where(
      jax.nn.one_hot(labels, num_classes, dtype=jnp.bool_),
      np.float32(on),
      np.float32(off),
  )
  return y1 * lam + y1[::-1] * one_minus_lam


def apply(
    config: MixupConfig, draws: MixDraws, images: jax.Array, labels: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Mixes a batch given its draws: (images, float32 targets (N, classes)).

  images (N, H, W, C) NHWC, N even. float images follow timm's `Mixup`
  (x * lam + x.flip(0) * (1 - lam) in the images' dtype); uint8 images
  follow timm's `FastCollateMixup` (the blend in float32, rounded half to
  even, back to uint8). CutMix copies the partner's pixels inside the box.
  """
  n, h, w, _ = images.shape
  if n % 2:
    raise ValueError(f'Mixup needs an even batch, got {n}.')
  use_cutmix, lam, oml, (yl, yh, xl, xh) = mix_weights(config, draws, (h, w))
  flipped = images[::-1]

  if jnp.issubdtype(images.dtype, jnp.integer):
    blend = images.astype(jnp.float32) * lam + flipped.astype(jnp.float32) * oml
    blend = jnp.round(blend).astype(images.dtype)
  else:
    blend = images * lam.astype(images.dtype) + flipped * oml.astype(
        images.dtype
    )
  rows = jnp.arange(h)[:, None]
  cols = jnp.arange(w)[None, :]
  inside = (rows >= yl) & (rows < yh) & (cols >= xl) & (cols < xh)
  cut = jnp.where(inside[None, :, :, None], flipped, images)
  mixed = jnp.where(use_cutmix, cut, blend)
  targets = mixup_target(
      labels, config.num_classes, lam, oml, config.label_smoothing
  )
  return mixed, targets


def mixup(
    config: MixupConfig, key: jax.Array, images: jax.Array, labels: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """timm's Mixup(mode='batch') on images NHWC (N, H, W, C), labels (N,).

  Returns (mixed images, same dtype; float32 soft targets (N, classes)).
  Jittable with `config` static.
  """
  return apply(config, draw(config, key, images.shape[1:3]), images, labels)


def from_config(config, num_classes: int) -> Optional[MixupConfig]:
  """The training config's `mixup` fields (and its label smoothing, which
  timm folds into the soft targets) as a MixupConfig; None when both Mixup
  and CutMix are off."""
  m = config.mixup
  if not (m.mixup_alpha > 0 or m.cutmix_alpha > 0):
    return None
  return MixupConfig(
      mixup_alpha=float(m.mixup_alpha),
      cutmix_alpha=float(m.cutmix_alpha),
      prob=float(m.prob),
      switch_prob=float(m.switch_prob),
      correct_lam=True,
      label_smoothing=float(config.label_smoothing),
      num_classes=num_classes,
  )
