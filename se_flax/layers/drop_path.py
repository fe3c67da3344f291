"""Stochastic depth (drop path) as timm's `DropPath` (timm/layers/drop.py).

In training each sample's residual branch is kept with probability
`1 - rate` and scaled by `1 / (1 - rate)` (timm's `scale_by_keep=True`),
so its expectation is unchanged; in evaluation the branch passes as is.
Rates grow linearly over the network's blocks (`block_rates`, timm's
`make_blocks` rule for ResNets).
"""

import numbers
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def check_rate(rate: float, field: str = 'drop_path_rate') -> None:
  """Raises unless 0 <= rate < 1 (rate 1 would drop every branch)."""
  if (
      isinstance(rate, bool)
      or not isinstance(rate, numbers.Real)
      or not 0.0 <= rate < 1.0
  ):
    raise ValueError(f'{field} must be in [0, 1), got {rate!r}')


def block_rates(rate: float, stage_sizes: Sequence[int]) -> list[list[float]]:
  """Per-block drop rates, stage by stage: timm's linear decay rule.

  Block k of n (counted over the whole network from 0) gets
  `rate * k / (n - 1)`, computed in Python floats as timm does, so the
  first block has 0 and the last `rate`. A one-block network gets 0.
  """
  total = sum(stage_sizes)
  rates, k = [], 0
  for size in stage_sizes:
    stage = []
    for _ in range(size):
      stage.append(rate * k / (total - 1) if total > 1 else 0.0)
      k += 1
    rates.append(stage)
  return rates


def keep_mask(key: jax.Array, batch: int, rate: float) -> jax.Array:
  """(batch,) bool: True where a sample keeps its branch (prob. 1 - rate)."""
  return jax.random.bernoulli(key, 1.0 - rate, (batch,))


def drop_path(x: jax.Array, keep: jax.Array, rate: float) -> jax.Array:
  """Zeroes the samples of `x` (N, ...) where `keep` (N,) is False and
  scales the others by 1 / (1 - rate); keeps `x`'s dtype.

  As timm: the mask is divided by the keep probability first, then
  multiplied in (one rounding of 1 / (1 - rate) in `x`'s dtype).
  """
  scale = keep.astype(x.dtype) / jnp.asarray(1.0 - rate, x.dtype)
  return x * scale.reshape((-1,) + (1,) * (x.ndim - 1))


class DropPath(nn.Module):
  """timm's `DropPath`: per-sample drop of a residual branch, in training.

  Draws from the 'dropout' RNG stream, and only when it drops something
  (`rate > 0` and not `deterministic`), so networks at rate 0 or in
  evaluation need no key and compute exactly what they did without it.
  """

  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
    if deterministic or self.rate == 0.0:
      return x
    keep = self.sample_keep(x.shape[0])
    self.sow('intermediates', 'keep', keep)
    return drop_path(x, keep, self.rate)

  def sample_keep(self, batch: int) -> jax.Array:
    """(batch,) bool keep mask, sown by `__call__` as `intermediates/keep`.

    A method of its own so that a test can force a given mask with
    `nn.intercept_methods` (timm's, in the parity tests).
    """
    return keep_mask(self.make_rng('dropout'), batch, self.rate)
