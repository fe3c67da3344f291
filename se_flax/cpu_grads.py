"""Derivative rules that XLA's CPU backend runs faster (same functions).

`layers` uses these only under `layers.use_cpu_rules()` (the 'auto'
setting on the CPU backend, decided at trace time: `layers/rules.py`);
otherwise plain Flax/XLA layers and JAX's own derivatives. Each
function returns what the plain version returns (forward bit for bit,
except BatchNorm + SE, equal to float rounding: it sums per sample first)
and its gradient equals JAX's to float rounding (tests/test_cpu_grads.py,
tests/test_layers.py). `matmul`, `batch_norm_train`, `batch_norm_squeeze`
and `batch_norm_gated` are `jax.custom_vjp` (reverse mode only:
`layer_rules('off')` does without them, and without `max_pool`, a
`jax.custom_jvp` that works in both modes). Measurements: PERFORMANCE.md, "1x1
weight gradients", "Max pooling's gradient", "BatchNorm's closed-form
gradient" and "BatchNorm and SE in one pass".
"""

import functools
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Pads = Tuple[Tuple[int, int], Tuple[int, int]]

_SPATIAL = (0, 1, 2)  # the N, H, W axes of an NHWC array


def plain_matmul(x, kernel2d):
  """`x @ kernel2d` over the last axis with JAX's own derivatives."""
  return lax.dot_general(x, kernel2d, (((x.ndim - 1,), (0,)), ((), ())))


# JAX's transpose rule writes the weight gradient of `x @ kernel2d` as a
# product contracting the leading (N, H, W) axes of two NHWC arrays. XLA's
# CPU backend runs that by first copying one operand into (C, N*H*W) order,
# redoing in that copy the elementwise work that produced it (BN backward,
# the SE-scaled residual sum). Written as `x2d.T @ g2d` on (N*H*W, C)
# matrices it becomes one Eigen product reading both operands in place.
@jax.custom_vjp
def matmul(x: jax.Array, kernel2d: jax.Array) -> jax.Array:
  """`x @ kernel2d` over the last axis: an unpadded 1x1 convolution (NHWC)."""
  return plain_matmul(x, kernel2d)


def _matmul_fwd(x, kernel2d):
  return plain_matmul(x, kernel2d), (x, kernel2d)


def _matmul_bwd(res, g):
  x, kernel2d = res
  dx = lax.dot_general(g, kernel2d, (((g.ndim - 1,), (1,)), ((), ())))
  dk = jnp.dot(x.reshape(-1, x.shape[-1]).T, g.reshape(-1, g.shape[-1]))
  return dx.astype(x.dtype), dk.astype(kernel2d.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


# Max pooling: XLA's CPU backend expands the gradient (select-and-scatter)
# into a reduce-window over the value and four full-size s32 index arrays,
# then a scatter. Here the forward also records, per output, the flat index
# of the input that won its window, and the gradient is one scatter-add.


def _axis_taps(offset: int, stride: int, size: int, out: int):
  """Outputs `i < out` whose input `stride * i + offset` lies in [0, size)."""
  first = max(0, -(offset // stride))
  last = min(out - 1, (size - 1 - offset) // stride)
  return first, last


def _window_tap(
    x, offset_h: int, offset_w: int, stride: int, out_hw: Tuple[int, int]
):
  """`x[:, stride*i + offset_h, stride*j + offset_w, :]`, -inf outside x."""
  (i0, i1), (j0, j1) = (
      _axis_taps(offset_h, stride, x.shape[1], out_hw[0]),
      _axis_taps(offset_w, stride, x.shape[2], out_hw[1]),
  )
  if i1 < i0 or j1 < j0:  # The tap never lands in x (a tiny input).
    return jnp.full((x.shape[0], *out_hw, x.shape[3]), -jnp.inf, x.dtype)
  tap = lax.slice(
      x,
      (0, stride * i0 + offset_h, stride * j0 + offset_w, 0),
      (
          x.shape[0],
          stride * i1 + offset_h + 1,
          stride * j1 + offset_w + 1,
          x.shape[3],
      ),
      (1, stride, stride, 1),
  )
  return lax.pad(
      tap,
      jnp.array(-jnp.inf, x.dtype),
      (
          (0, 0, 0),
          (i0, out_hw[0] - 1 - i1, 0),
          (j0, out_hw[1] - 1 - j1, 0),
          (0, 0, 0),
      ),
  )


def _winner_index(x, y, window: int, stride: int, pads: Pads):
  """Flat index into `x` of each window's first maximum, `x.size` if none.

  First in row-major window order, padding (-inf) included: the element
  XLA's select-and-scatter (JAX's max-pooling gradient) picks among ties.
  A window won by padding or whose maximum is NaN has no winner in `x`
  (its gradient is dropped).
  """
  n, h, w, c = x.shape
  iota = [lax.broadcasted_iota(jnp.int32, y.shape, d) for d in range(4)]
  index = jnp.full(y.shape, x.size, jnp.int32)
  for di in reversed(range(window)):
    for dj in reversed(range(window)):
      row = stride * iota[1] + di - pads[0][0]
      col = stride * iota[2] + dj - pads[1][0]
      tap = _window_tap(
          x, di - pads[0][0], dj - pads[1][0], stride, y.shape[1:3]
      )
      inside = (row >= 0) & (row < h) & (col >= 0) & (col < w)
      flat = ((iota[0] * h + row) * w + col) * c + iota[3]
      index = jnp.where(tap == y, jnp.where(inside, flat, x.size), index)
  return index


def plain_max_pool(x, window, stride, pads):
  """`nn.max_pool` with explicit pads, JAX's own derivatives (NHWC).

  `lax.reduce_window` itself, the primitive `nn.max_pool` binds: exporters
  that replace `nn.max_pool` (jax2onnx) take only string paddings.
  """
  return lax.reduce_window(
      x,
      -jnp.inf,
      lax.max,
      (1, window, window, 1),
      (1, stride, stride, 1),
      ((0, 0), *pads, (0, 0)),
  )


# A JVP rule rather than a VJP, so forward mode works too: the tangent is a
# gather at the winners, which JAX transposes into one scatter-add.
@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def _max_pool_cpu(x, window, stride, pads):
  return plain_max_pool(x, window, stride, pads)


@_max_pool_cpu.defjvp
def _max_pool_jvp(window, stride, pads, primals, tangents):
  (x,), (t,) = primals, tangents
  y = plain_max_pool(x, window, stride, pads)
  winner = _winner_index(x, y, window, stride, pads)
  t_y = jnp.take(t.reshape(-1), winner, mode='fill', fill_value=0)
  return y, t_y


def max_pool(
    x: jax.Array, window: int, stride: int, pads: Sequence[Tuple[int, int]]
) -> jax.Array:
  """`nn.max_pool` (NHWC, square window, -inf `pads` on H and W) with the
  scatter-add gradient above."""
  pads = tuple(tuple(int(p) for p in pair) for pair in pads)
  if x.size >= np.iinfo(np.int32).max:  # Flat int32 indices would overflow.
    return plain_max_pool(x, window, stride, pads)
  return _max_pool_cpu(x, window, stride, pads)


# BatchNorm in training mode. Differentiated by JAX, Flax's BatchNorm keeps
# x - mean and two scaled copies of the gradient in memory (9 full-size
# passes for BN + ReLU at stage-1 size, 4 of them writes). The closed-form
# gradient needs x, the statistics and two reductions of the gradient.


def batch_stats(x: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """Per-channel mean and variance of NHWC `x` over N, H, W, at least
  float32, as Flax's BatchNorm computes them (`E[x^2] - E[x]^2`, >= 0)."""
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean = x.mean(_SPATIAL)
  return mean, _variance(x, mean)


def _variance(x, mean):
  return jnp.maximum(0.0, lax.square(x).mean(_SPATIAL) - lax.square(mean))


def normalize(x, mean, var, scale, bias, epsilon: float):
  """`(x - mean) * rsqrt(var + eps) * scale + bias` in Flax's operation
  order (so float32 for a half-precision x)."""
  return (x - mean) * (lax.rsqrt(var + epsilon) * scale) + bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(
    x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float
) -> jax.Array:
  """BatchNorm of NHWC `x` with its own batch statistics (training mode)."""
  mean, var = batch_stats(x)
  return normalize(x, mean, var, scale, bias, epsilon)


def _batch_norm_fwd(x, scale, bias, epsilon):
  mean, var = batch_stats(x)
  return normalize(x, mean, var, scale, bias, epsilon), (x, mean, var, scale)


def _input_and_scale_grads(xf, mean, inv, scale, g, sum_g, sum_gx):
  """BN's closed-form `(dx, d_scale)` for the cotangent `g` of its output,
  given `sum_g = sum(g)` and `sum_gx = sum(g * x)` over N, H, W."""
  count = xf.size // xf.shape[-1]
  d_scale = inv * (sum_gx - mean * sum_g)  # sum(g * x_hat)
  # dx = scale * inv * (g - mean(g) - x_hat * mean(g * x_hat)); the
  # variance's clip at 0 is ignored (it binds only for a constant channel,
  # where x_hat = 0 and both forms agree).
  dx = (scale * inv) * (
      g - sum_g / count - (xf - mean) * (inv * d_scale / count)
  )
  return dx, d_scale


def _batch_norm_bwd(epsilon, res, g):
  x, mean, var, scale = res
  inv = lax.rsqrt(var + epsilon)
  xf, g = x.astype(jnp.float32), g.astype(jnp.float32)
  # Reductions of g and g * x only: a reduction over anything with a
  # per-channel term, such as g * (x - mean), makes XLA's CPU backend
  # write that operand out in full first. The price is cancellation in
  # sum(g * x) - mean * sum(g) when |mean| >> std (float32 rounding
  # relative to sum|g * x|).
  sum_g = g.sum(_SPATIAL)
  dx, d_scale = _input_and_scale_grads(
      xf, mean, inv, scale, g, sum_g, (g * xf).sum(_SPATIAL)
  )
  return (
      dx.astype(x.dtype),
      d_scale.astype(scale.dtype),
      sum_g.astype(scale.dtype),
  )


batch_norm_train.defvjp(_batch_norm_fwd, _batch_norm_bwd)


# BatchNorm followed by SE's squeeze and scale (a bottleneck's last BN and
# its SE unit). Composed, XLA's CPU backend reads the BN input once more
# for the squeeze and, in the gradient, once more for the gate's reduction
# sum_hw(g * y), besides BN's own reductions. Here one per-sample sum over
# H, W gives both BN's batch mean and the squeeze (the per-sample mean of
# BN's affine output is that map applied to the per-sample mean of x), and
# in the gradient the per-sample sums of g and g * x give the gate's
# gradient and BN's two reductions at once. PERFORMANCE.md, "BatchNorm and
# SE in one pass".

_HW = (1, 2)


def _at_least_f32(dtype):
  return jnp.promote_types(dtype, jnp.float32)


def sample_stats(
    x: jax.Array,
) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """`(sums, mean, var)` of NHWC `x`, at least float32: `sums` `(N, C)` over
  H, W per sample; `mean`, `var` `(C,)` as `batch_stats` (equal to float
  rounding; the mean is summed per sample first)."""
  x = x.astype(_at_least_f32(x.dtype))
  sums = x.sum(_HW)
  # The barrier keeps XLA from folding sum_n(sum_hw(x)) back into a second
  # full read of x (its algebraic simplifier merges nested reductions).
  mean = lax.optimization_barrier(sums).sum(0) / (x.size // x.shape[-1])
  return sums, mean, _variance(x, mean)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_squeeze(
    x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float
) -> jax.Array:
  """`batch_norm_train(x, ...)` averaged over H and W: `(N, C)`, float32
  for float32 or half-precision x (SE's squeeze of the BN output)."""
  return _squeeze_fwd(x, scale, bias, epsilon)[0]


def _squeeze_fwd(x, scale, bias, epsilon):
  sums, mean, var = sample_stats(x)
  hw = x.shape[1] * x.shape[2]
  z = (sums / hw - mean) * (lax.rsqrt(var + epsilon) * scale) + bias
  return z, (x, sums, mean, var, scale)


def _squeeze_bwd(epsilon, res, g_z):
  # A cotangent g_z on the spatial mean is g_z / HW on every position of
  # the BN output; BN's closed-form gradient follows with its two sums
  # taken from (N, C) arrays instead of full-size ones.
  x, sums, mean, var, scale = res
  hw = x.shape[1] * x.shape[2]
  f32 = _at_least_f32(x.dtype)
  g_z = g_z.astype(f32)
  sum_g = g_z.sum(0)
  dx, d_scale = _input_and_scale_grads(
      x.astype(f32),
      mean,
      lax.rsqrt(var + epsilon),
      scale,
      g_z[:, None, None, :] / hw,
      sum_g,
      (g_z * sums).sum(0) / hw,
  )
  return (
      dx.astype(x.dtype),
      d_scale.astype(scale.dtype),
      sum_g.astype(scale.dtype),
  )


batch_norm_squeeze.defvjp(_squeeze_fwd, _squeeze_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def batch_norm_gated(
    x: jax.Array,
    scale: jax.Array,
    bias: jax.Array,
    gate: jax.Array,
    epsilon: float,
) -> jax.Array:
  """`batch_norm_train(x, ...) * gate[:, None, None, :]`: NHWC x, `gate`
  `(N, C)`; float32 for float32 or half-precision x."""
  return _gated_fwd(x, scale, bias, gate, epsilon)[0]


def _gated_fwd(x, scale, bias, gate, epsilon):
  _, mean, var = sample_stats(x)
  y = normalize(x, mean, var, scale, bias, epsilon)
  # Named so that the benchmark's HLO check finds the SE scale here.
  with jax.named_scope('se_gate'):
    out = y * gate[:, None, None, :].astype(y.dtype)
  return out, (x, mean, var, scale, bias, gate)


def _gated_bwd(epsilon, res, g):
  x, mean, var, scale, bias, gate = res
  inv = lax.rsqrt(var + epsilon)
  f32 = _at_least_f32(x.dtype)
  xf, g, gate_f = x.astype(f32), g.astype(f32), gate.astype(f32)
  # Only reductions of g and g * x over H, W (see _batch_norm_bwd for why
  # nothing with a per-channel term is reduced); all else is (N, C).
  sum_hw_g = g.sum(_HW)
  sum_hw_gx = (g * xf).sum(_HW)
  # d gate = sum_hw(g * y) with y = (x - mean) * scale * inv + bias.
  d_gate = (scale * inv) * (sum_hw_gx - mean * sum_hw_g) + bias * sum_hw_g
  # BN's gradient for the cotangent g * gate of its output.
  sum_g = (gate_f * sum_hw_g).sum(0)
  dx, d_scale = _input_and_scale_grads(
      xf,
      mean,
      inv,
      scale,
      g * gate_f[:, None, None, :],
      sum_g,
      (gate_f * sum_hw_gx).sum(0),
  )
  return (
      dx.astype(x.dtype),
      d_scale.astype(scale.dtype),
      sum_g.astype(scale.dtype),
      d_gate.astype(gate.dtype),
  )


batch_norm_gated.defvjp(_gated_fwd, _gated_bwd)
