"""LAMB as timm's `timm.optim.Lamb` runs in "ResNet strikes back" (RSB).

timm's `Lamb` (timm/optim/lamb.py, the NVIDIA FusedLAMB "NvLamb" variant)
with the arguments `train.py --opt lamb --weight-decay WD` gives it
(timm's `create_optimizer_v2` with `param_groups_weight_decay`):

1. The gradients of ALL parameters are divided by
   max(1, global_norm / max_grad_norm), max_grad_norm = 1.0.
2. Adam moments with bias correction, betas (0.9, 0.999), eps 1e-6 added
   to sqrt(v_hat): u = m_hat / (sqrt(v_hat) + eps).
3. Parameters with weight decay (the "decay" group) get coupled decay
   added to the update, not to the gradient and not decoupled:
   u += WD * p. Then the trust ratio ||p|| / ||u|| (1 where either norm is
   0, no clipping) scales u, per parameter tensor.
4. Parameters without weight decay (biases and norm parameters: ndim <= 1
   or a name ending in '.bias') get neither decay nor the trust ratio
   (always_adapt=False): a plain Adam step.
5. p -= lr * u.

`lamb` is that sequence of optax transforms. optax's own `optax.lamb` is
the same chain without the clipping and with the trust ratio on every leaf,
decayed or not (timm's always_adapt=True).
"""

from typing import Any, Callable, Optional, Union

import jax
import optax

MaskOrFn = Union[Any, Callable[[Any], Any]]


def timm_weight_decay_mask(params) -> Any:
  """True for the leaves timm's `param_groups_weight_decay` decays.

  timm excludes a parameter when `param.ndim <= 1 or name.endswith('.bias')`
  (weight_decay_exclude_1d=True, its default). On a Flax tree that is: decay
  leaves of rank >= 2 whose own name is not 'bias'. So conv and dense
  kernels (HWIO, IO) decay; BN scale/bias and all biases do not. For the
  ResNet family this equals `optim.weight_decay_mask(params, decay_se=True)`.
  """

  def decays(path, leaf):
    name = getattr(path[-1], 'key', getattr(path[-1], 'name', str(path[-1])))
    return leaf.ndim > 1 and name != 'bias'

  return jax.tree_util.tree_map_with_path(decays, params)


def lamb(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    weight_decay_mask: Optional[MaskOrFn] = timm_weight_decay_mask,
    max_grad_norm: Optional[float] = 1.0,
) -> optax.GradientTransformation:
  """timm's `Lamb` (bias_correction, grad_averaging, no trust_clip,
  always_adapt=False, coupled decay) as an optax GradientTransformation.

  Args:
    learning_rate: a float or an optax schedule of the step count (the
      first update uses schedule(0)).
    b1, b2: Adam's moment decay rates (timm's `betas`).
    eps: added to sqrt(v_hat) (not inside the root), timm's 1e-6.
    weight_decay: coupled decay coefficient, added as WD * p to the Adam
      update of the masked leaves before their trust ratio. 0 disables decay
      and the trust ratio everywhere, as in timm (all leaves then fall in
      its zero-decay group).
    weight_decay_mask: pytree of bools like the params, or a function of the
      params returning one: the leaves that get decay AND the trust ratio.
      Defaults to timm's rule (`timm_weight_decay_mask`); None: all leaves.
    max_grad_norm: global gradient-norm clip over all leaves (timm's Lamb
      clips internally, before the moments); None disables it.

  Returns:
    The transformation; `update` needs `params`.
  """
  clip = (
      optax.identity()
      if max_grad_norm is None
      else optax.clip_by_global_norm(max_grad_norm)
  )
  # timm gives the zero-decay group a plain Adam step: no decay and no
  # trust ratio (always_adapt=False), hence one mask for both.
  trust = optax.scale_by_trust_ratio()
  if weight_decay_mask is not None:
    trust = optax.masked(trust, weight_decay_mask)
  adapt = (
      [optax.add_decayed_weights(weight_decay, mask=weight_decay_mask), trust]
      if weight_decay
      else []
  )
  return optax.chain(
      clip,
      optax.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=0.0),
      *adapt,
      optax.scale_by_learning_rate(learning_rate),
  )
