"""The paper's Squeeze-and-Excitation unit."""

from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from se_flax.layers.common import Dtype, he_normal, make_divisible
from se_flax.layers.norm import BatchNorm
from se_flax.layers.pooling import global_avg_pool

_GATES = {
    'sigmoid': nn.sigmoid,
    'relu': nn.relu,
    'tanh': jnp.tanh,
}


class SqueezeExcite(nn.Module):
  """Squeeze-and-Excitation unit (Hu et al., Eq. 2-4), NHWC in and out.

  `y = x * gate(fc2(act(fc1(squeeze(x)))))` with one gate value per sample
  and channel. The gate is also sown as `intermediates/gate` `(N, C)` (or
  `(N, H, W, C)` without squeeze) for the paper's §7.2 analysis.

  Attributes:
    reduction: ratio r; the hidden width is derived from C / r.
    hidden_rule: 'floor' = `C // r` (paper, Caffe, timm `legacy_*`);
      'divisible' = timm's `make_divisible(C / r, divisor)` (`resnet.py`).
    divisor: rounding divisor for 'divisible' (also its minimum width).
    hidden_features: explicit hidden width; overrides the two rules above.
    squeeze: 'avg' (paper), 'max' (Table 11) or 'none' (the NoSqueeze
      ablation of Table 16: the FCs act per position, as 1x1 convolutions).
    gate: 'sigmoid' (paper), 'relu' or 'tanh' (Table 12).
    activation: inner non-linearity between the two FC layers.
    use_bias: biases of both FC layers (released models: on; ablations: off).
  """

  reduction: int = 16
  hidden_rule: str = 'floor'
  divisor: int = 8
  hidden_features: Optional[int] = None
  squeeze: str = 'avg'
  gate: str = 'sigmoid'
  activation: Callable = nn.relu
  use_bias: bool = True
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32

  def hidden_width(self, channels: int) -> int:
    """The width of the bottleneck between fc1 and fc2 for C channels."""
    if self.hidden_features is not None:
      return self.hidden_features
    if self.hidden_rule == 'floor':
      return max(1, channels // self.reduction)
    if self.hidden_rule == 'divisible':
      return make_divisible(channels / self.reduction, self.divisor)
    raise ValueError(
        f"hidden_rule must be 'floor' or 'divisible', got "
        f'{self.hidden_rule!r}'
    )

  @nn.compact
  def excite(self, z: jax.Array) -> jax.Array:
    """The gate for squeezed features `z`: `(N, C)` (or NHWC for squeeze
    'none') in, the same shape out, in the compute dtype."""
    if self.gate not in _GATES:
      raise ValueError(
          f'gate must be one of {sorted(_GATES)}, got ' f'{self.gate!r}'
      )
    dense = lambda features, name: nn.Dense(
        features,
        use_bias=self.use_bias,
        kernel_init=he_normal,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name=name,
    )
    channels = z.shape[-1]
    s = self.activation(dense(self.hidden_width(channels), 'fc1')(z))
    s = _GATES[self.gate](dense(channels, 'fc2')(s))
    self.sow('intermediates', 'gate', s)
    return s

  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 4:
      raise ValueError(f'SqueezeExcite expects NHWC input, got shape {x.shape}')
    if self.squeeze == 'avg':
      z = global_avg_pool(x)
    elif self.squeeze == 'max':
      z = jnp.max(x, axis=(1, 2))
    elif self.squeeze == 'none':
      z = x
    else:
      raise ValueError(
          f"squeeze must be 'avg', 'max' or 'none', got " f'{self.squeeze!r}'
      )
    s = self.excite(z)
    if s.ndim == 2:
      s = s[:, None, None, :]
    return x * s.astype(x.dtype)


def excite_after_norm(
    norm: nn.Module, se: SqueezeExcite, x: jax.Array
) -> jax.Array:
  """`se(norm(x))` for NHWC `x`; in training with se_flax's `BatchNorm` and
  SE's average squeeze, as one layer whose statistics pass also gives the
  squeeze and whose gradient shares BN's reductions (`cpu_grads`, the
  same function to float rounding). The variables are those of the two
  modules, so checkpoints do not change."""
  if (
      isinstance(norm, BatchNorm)
      and not norm.use_running_average
      and se.squeeze == 'avg'
  ):
    return norm(x, excite=se.excite)
  return se(norm(x))
