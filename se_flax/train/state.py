"""The training state: everything a resumed run needs, as one pytree."""

from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Parameters, BN statistics, optimizer state, EMA copies and counters.

  `rng` is a raw uint32 key (serialisable); per-step keys are derived with
  `fold_in(rng, step)`, so no key needs threading through the loop.
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  ema_params: Optional[Any] = None
  ema_batch_stats: Optional[Any] = None
  skipped_steps: jax.Array = flax.struct.field(
      default_factory=lambda: jnp.zeros((), jnp.int32)
  )

  @classmethod
  def create(
      cls,
      variables,
      tx: optax.GradientTransformation,
      rng: jax.Array,
      use_ema: bool,
  ) -> 'TrainState':
    params = variables['params']
    batch_stats = variables.get('batch_stats', {})
    return cls(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        rng=rng,
        ema_params=params if use_ema else None,
        ema_batch_stats=batch_stats if use_ema else None,
        skipped_steps=jnp.zeros((), jnp.int32),
    )

  def variables(self, ema: bool = False) -> dict:
    """`{'params', 'batch_stats'}` for `model.apply` (raw or EMA)."""
    if ema:
      return {'params': self.ema_params, 'batch_stats': self.ema_batch_stats}
    return {'params': self.params, 'batch_stats': self.batch_stats}
