"""jax2onnx lowerings of NHWC layers as NCHW ONNX ops.

jax2onnx's own lowerings treat every axis of a `reduce_window` as spatial:
an NHWC pool becomes a 6-D MaxPool/Conv that onnxruntime rejects. And
se_flax runs ungrouped 1x1 convolutions as a matrix product on the channel
axis (`dot_general`, faster on XLA:CPU), which jax2onnx writes as an NHWC
Einsum: Transposes around every one, and no BatchNorm folding.

Here each becomes the NCHW ONNX op between two Transposes, the pattern
jax2onnx's conv lowering uses, so onnxruntime's layout optimiser cancels
the pairs between neighbours and fuses BatchNorm into the 1x1 Conv:
- `reduce_window_max` over H, W -> MaxPool (explicit, possibly asymmetric
  pads: Caffe ceil-mode pools need no `ceil_mode`);
- `reduce_window_sum` over H, W -> AveragePool(count_include_pad) * area;
- `dot_general` of `(N, H, W, C) x (C, F)` -> Conv with a 1x1 kernel.

This module imports jax2onnx at its top: import it only inside export
functions. `plugins()` gives instances that `se_flax.export.onnx` swaps
into jax2onnx's registry for one conversion; nothing registers at import.
"""

from typing import Any, Callable, Optional, Tuple

import numpy as np
import onnx_ir as ir
from jax2onnx.plugins._ir_shapes import _ensure_value_metadata
from jax2onnx.plugins._ir_shapes import _stamp_type_and_shape
from jax2onnx.plugins.plugin_system import PrimitiveLeafPlugin

from se_flax.export.spec import ExportError

_TO_NCHW = (0, 3, 1, 2)
_TO_NHWC = (0, 2, 3, 1)


def nhwc_window(params: dict) -> Optional[Tuple[tuple, tuple, list]]:
  """(kernel, strides, ONNX pads) of a 2-D NHWC window, or None.

  None unless the window is rank 4 with size/stride 1 and no padding on
  batch (axis 0) and channels (axis 3), and has no dilation. ONNX `pads`
  are `[top, left, bottom, right]`.
  """
  window = tuple(int(d) for d in params['window_dimensions'])
  strides = tuple(int(s) for s in params['window_strides'])
  padding = tuple(tuple(int(p) for p in pair) for pair in params['padding'])
  dilated = any(d != 1 for d in params['base_dilation']) or any(
      d != 1 for d in params['window_dilation']
  )
  if len(window) != 4 or dilated:
    return None
  for axis in (0, 3):
    if window[axis] != 1 or strides[axis] != 1 or padding[axis] != (0, 0):
      return None
  pads = [padding[1][0], padding[2][0], padding[1][1], padding[2][1]]
  return window[1:3], strides[1:3], pads


def is_channel_matmul(eqn: Any) -> bool:
  """`dot_general` of an `(N, H, W, C)` float array and a `(C, F)` one."""
  (contract_l, contract_r), (batch_l, batch_r) = eqn.params['dimension_numbers']
  lhs, rhs = (v.aval for v in eqn.invars)
  return (
      lhs.ndim == 4
      and rhs.ndim == 2
      and tuple(contract_l) == (3,)
      and tuple(contract_r) == (0,)
      and not batch_l
      and not batch_r
      and _is_float(eqn)
  )


def _is_float(eqn: Any) -> bool:
  return all(
      np.issubdtype(np.dtype(v.aval.dtype), np.floating) for v in eqn.invars
  )


def _stamp(ctx: Any, value: ir.Value, dtype: Any, shape: tuple) -> ir.Value:
  value.type = ir.TensorType(dtype)
  _stamp_type_and_shape(value, shape)
  _ensure_value_metadata(ctx, value)
  return value


def _lower_as_nchw(ctx: Any, eqn: Any, op: Callable) -> None:
  """Transpose(NCHW) -> `op(x_nchw, dtype)` -> Transpose(NHWC)."""
  in_var, out_var = eqn.invars[0], eqn.outvars[0]
  in_shape, out_shape = tuple(in_var.aval.shape), tuple(out_var.aval.shape)
  x = ctx.get_value_for_var(in_var, name_hint=ctx.fresh_name('nhwc_in'))
  out_spec = ctx.get_value_for_var(out_var, name_hint=ctx.fresh_name('nhwc'))
  dtype = x.type.dtype
  x_nchw = ctx.builder.Transpose(
      x, _outputs=[ctx.fresh_name('to_nchw')], perm=list(_TO_NCHW)
  )
  _stamp(ctx, x_nchw, dtype, tuple(in_shape[i] for i in _TO_NCHW))
  out_nchw = tuple(out_shape[i] for i in _TO_NCHW)
  y_nchw = _stamp(ctx, op(x_nchw, dtype), dtype, out_nchw)
  name = getattr(out_spec, 'name', None) or ctx.fresh_name('nhwc_out')
  y = ctx.builder.Transpose(y_nchw, _outputs=[name], perm=list(_TO_NHWC))
  ctx.bind_value_for_var(out_var, _stamp(ctx, y, dtype, out_shape))


def _refuse_window(eqn: Any) -> None:
  params = {k: eqn.params[k] for k in ('window_dimensions', 'window_strides')}
  dtype = eqn.invars[0].aval.dtype
  raise ExportError(
      f'{eqn.primitive.name} {params} on {dtype} is not a float 2-D NHWC'
      ' pool; the ONNX export takes windows of 1 on batch and channels,'
      ' no dilation'
  )


class NHWCMaxPool(PrimitiveLeafPlugin):
  """`reduce_window_max` over H, W of NHWC -> ONNX MaxPool (-inf pads)."""

  def lower(self, ctx: Any, eqn: Any) -> None:
    window = nhwc_window(eqn.params)
    if window is None or not _is_float(eqn):
      _refuse_window(eqn)
    kernel, strides, pads = window

    def op(x, dtype):
      del dtype
      return ctx.builder.MaxPool(
          x,
          _outputs=[ctx.fresh_name('maxpool')],
          kernel_shape=list(kernel),
          strides=list(strides),
          pads=pads,
      )

    _lower_as_nchw(ctx, eqn, op)


class NHWCSumPool(PrimitiveLeafPlugin):
  """`reduce_window_sum` over H, W of NHWC -> ONNX AveragePool * area.

  `count_include_pad=1` counts the zero pads, so the average times the
  window area is the zero-padded sum; JAX's own `/ area` (or `/ count`)
  follows unchanged.
  """

  def lower(self, ctx: Any, eqn: Any) -> None:
    window = nhwc_window(eqn.params)
    if window is None or not _is_float(eqn):
      _refuse_window(eqn)
    kernel, strides, pads = window
    area = np.asarray(kernel[0] * kernel[1], eqn.invars[0].aval.dtype)

    def op(x, dtype):
      mean = ctx.builder.AveragePool(
          x,
          _outputs=[ctx.fresh_name('avgpool')],
          kernel_shape=list(kernel),
          strides=list(strides),
          pads=pads,
          count_include_pad=1,
      )
      mean.type = ir.TensorType(dtype)
      scale = ctx.builder.add_initializer_from_array(
          name=ctx.fresh_name('pool_area'), array=area
      )
      return ctx.builder.Mul(mean, scale, _outputs=[ctx.fresh_name('sumpool')])

    _lower_as_nchw(ctx, eqn, op)


class ChannelMatmulAsConv(PrimitiveLeafPlugin):
  """`(N, H, W, C) @ (C, F)` -> ONNX 1x1 Conv; other dot_generals as before.

  The `(C, F)` weight becomes `(F, C, 1, 1)` in the graph (Transpose +
  Unsqueeze of a constant: onnxruntime folds them).
  """

  def __init__(self, fallback: Optional[PrimitiveLeafPlugin] = None):
    super().__init__()
    self.fallback = fallback

  def lower(self, ctx: Any, eqn: Any) -> None:
    if not is_channel_matmul(eqn):
      if self.fallback is None:
        raise ExportError(f'dot_general {eqn.params} has no ONNX lowering')
      return self.fallback.lower(ctx, eqn)
    w_var = eqn.invars[1]
    c, f = w_var.aval.shape
    w = ctx.get_value_for_var(w_var, name_hint=ctx.fresh_name('dense_w'))

    def op(x, dtype):
      w_t = _stamp(
          ctx,
          ctx.builder.Transpose(
              w, _outputs=[ctx.fresh_name('dense_w_t')], perm=[1, 0]
          ),
          dtype,
          (f, c),
      )
      axes = ctx.builder.add_initializer_from_array(
          name=ctx.fresh_name('dense_w_axes'),
          array=np.asarray([2, 3], np.int64),
      )
      w_oihw = _stamp(
          ctx,
          ctx.builder.Unsqueeze(
              w_t, axes, _outputs=[ctx.fresh_name('dense_w_oihw')]
          ),
          dtype,
          (f, c, 1, 1),
      )
      return ctx.builder.Conv(
          x, w_oihw, _outputs=[ctx.fresh_name('dense_conv')]
      )

    _lower_as_nchw(ctx, eqn, op)


def plugins(registry: dict) -> dict:
  """{primitive name: plugin} to swap into jax2onnx's `registry`.

  The 1x1-conv lowering hands other `dot_general`s to `registry`'s own.
  """
  out = {
      'reduce_window_max': NHWCMaxPool(),
      'reduce_window_sum': NHWCSumPool(),
      'dot_general': ChannelMatmulAsConv(registry.get('dot_general')),
  }
  for name, plugin in out.items():
    plugin.primitive = name
    plugin.metadata = {'jaxpr_primitive': name, 'component': name}
  return out
