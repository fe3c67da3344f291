"""BatchNorm with the reference networks' defaults (NHWC).

PyTorch's BatchNorm momentum 0.1 is Flax's momentum 0.9: Flax's momentum
is the weight of the old running value.
"""

import functools
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from se_flax import cpu_grads
from se_flax.layers import rules
from se_flax.layers.common import Dtype, ModuleDef
from se_flax.layers.pooling import global_avg_pool

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


class BatchNorm(nn.Module):
  """Flax's `nn.BatchNorm` over N, H, W of NHWC input: the same variables
  (`scale`, `bias`; `batch_stats` `mean`, `var`), the same forward, bit for
  bit; in training with the closed-form gradient of
  `cpu_grads.batch_norm_train`. Models get it from `batch_norm`, and only
  while `layers.use_cpu_rules()`; otherwise `nn.BatchNorm` itself. With
  an `excite` gate (BN then SE, `layers.excite_after_norm`) the training
  forward equals BN then SE to float rounding (see `__call__`).

  Under `jax.jit` over a sharded batch the statistics are those of the
  global batch, so no `axis_name` is needed.

  Attributes:
    use_running_average: normalise with the running statistics (eval).
    momentum: weight of the old running value (Flax convention).
    epsilon: added to the variance.
    dtype: output dtype (statistics and normalisation are float32).
    param_dtype: dtype of `scale` and `bias`.
    scale_init: `scale`'s initialiser (zeros for zero-init residuals).
  """

  use_running_average: bool
  momentum: float = BN_MOMENTUM
  epsilon: float = BN_EPSILON
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32
  scale_init: Callable = nn.initializers.ones

  @nn.compact
  def __call__(
      self,
      x: jax.Array,
      excite: Optional[Callable[[jax.Array], jax.Array]] = None,
  ) -> jax.Array:
    """BN of NHWC `x`. With `excite` (e.g. `SqueezeExcite.excite`: the
    per-sample H, W mean of the output, `(N, C)`, to a gate `(N, C)`) the
    output is also multiplied by that gate, in training under the CPU rules
    as one layer (`cpu_grads.batch_norm_gated`); otherwise (eval, or the
    frozen-BN fine-tuning interceptor of `train.steps`) composed."""
    features = x.shape[-1]
    ra_mean = self.variable(
        'batch_stats', 'mean', jnp.zeros, (features,), jnp.float32
    )
    ra_var = self.variable(
        'batch_stats', 'var', jnp.ones, (features,), jnp.float32
    )
    scale = self.param('scale', self.scale_init, (features,), self.param_dtype)
    bias = self.param(
        'bias', nn.initializers.zeros, (features,), self.param_dtype
    )
    out_dtype = self.dtype or jnp.result_type(x, scale, bias)

    def update_running_stats(mean, var):
      if not self.is_initializing():
        ra_mean.value = (
            self.momentum * ra_mean.value + (1 - self.momentum) * mean
        )
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var

    cpu = not self.use_running_average and rules.use_cpu_rules()
    if cpu and excite is not None:
      # The same statistics as the two rules' forward passes (XLA
      # computes them once).
      _, mean, var = cpu_grads.sample_stats(lax.stop_gradient(x))
      update_running_stats(mean, var)
      squeezed = cpu_grads.batch_norm_squeeze(x, scale, bias, self.epsilon)
      gate = excite(squeezed.astype(out_dtype))
      y = cpu_grads.batch_norm_gated(x, scale, bias, gate, self.epsilon)
      return y.astype(out_dtype)
    if self.use_running_average:
      y = cpu_grads.normalize(
          x, ra_mean.value, ra_var.value, scale, bias, self.epsilon
      )
    else:
      # With the CPU rule the gradient comes from batch_norm_train, which
      # computes the same statistics (XLA computes them once).
      mean, var = cpu_grads.batch_stats(lax.stop_gradient(x) if cpu else x)
      update_running_stats(mean, var)
      if cpu:
        y = cpu_grads.batch_norm_train(x, scale, bias, self.epsilon)
      else:
        y = cpu_grads.normalize(x, mean, var, scale, bias, self.epsilon)
    y = y.astype(out_dtype)
    if excite is not None:
      gate = excite(global_avg_pool(y))
      y = y * gate[:, None, None, :].astype(y.dtype)
    return y


def batch_norm(
    train: bool,
    *,
    momentum: float = BN_MOMENTUM,
    epsilon: float = BN_EPSILON,
    dtype: Optional[Dtype] = None,
    param_dtype: Dtype = jnp.float32,
) -> ModuleDef:
  """A BatchNorm factory with the reference networks' settings:
  `norm(name, scale_init=ones)`; `BatchNorm` under the CPU rules, else
  `nn.BatchNorm` (the same variables and forward)."""
  module = (
      BatchNorm
      if rules.use_cpu_rules()
      else functools.partial(nn.BatchNorm, axis=-1)
  )
  return lambda name, scale_init=nn.initializers.ones: module(
      use_running_average=not train,
      momentum=momentum,
      epsilon=epsilon,
      dtype=dtype,
      param_dtype=param_dtype,
      scale_init=scale_init,
      name=name,
  )
