"""Pooling as the reference networks define it (NHWC).

Caffe max pooling rounds the output size up; Caffe's average pooling
counts the padding (timm's IRv2 does not in one place); PyTorch's adaptive
pooling has its own bins.
"""

from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from se_flax import cpu_grads
from se_flax.layers import rules


def _max_pool(x, window, stride, pads):
  if rules.use_cpu_rules():
    return cpu_grads.max_pool(x, window, stride, pads)
  return cpu_grads.plain_max_pool(x, window, stride, pads)


def max_pool_ceil(x: jax.Array, window: int = 3, stride: int = 2) -> jax.Array:
  """Caffe / `ceil_mode=True` max pooling without padding (NHWC).

  The output size is `ceil((H - window) / stride) + 1`; the missing border
  is padded with -inf at the bottom/right only, as Caffe does.
  """
  pads = []
  for size in x.shape[1:3]:
    out = -(-(size - window) // stride) + 1
    pads.append((0, max(0, (out - 1) * stride + window - size)))
  return _max_pool(x, window, stride, tuple(pads))


def max_pool_padded(
    x: jax.Array, window: int = 3, stride: int = 2, padding: int = 1
) -> jax.Array:
  """torchvision-style max pooling with symmetric -inf padding (NHWC).

  Floor mode; `padding=0` is PyTorch's plain `MaxPool2d(window, stride)`.
  """
  pads = ((padding, padding), (padding, padding))
  return _max_pool(x, window, stride, pads)


def avg_pool(
    x: jax.Array,
    window: int = 3,
    stride: int = 1,
    padding: int = 1,
    count_include_pad: bool = True,
) -> jax.Array:
  """Average pooling with symmetric zero padding (NHWC), floor mode.

  `count_include_pad=True` divides every window by `window ** 2` (Caffe's
  AVE pooling, PyTorch's default); False divides by the number of real
  pixels in the window (timm Inception-ResNet-v2's `mixed_5b` pool). The
  two differ only in windows that overlap the border.
  """
  pad = ((padding, padding), (padding, padding))
  y = nn.avg_pool(
      x,
      (window, window),
      (stride, stride),
      padding=pad,
      count_include_pad=count_include_pad,
  )
  return y.astype(x.dtype)


def adaptive_avg_pool(x: jax.Array, output_size: Tuple[int, int]) -> jax.Array:
  """PyTorch's `adaptive_avg_pool2d` (NHWC): exact bins, any sizes.

  Output bin `i` of an axis of length `n -> m` averages the inputs
  `floor(i * n / m) <= j < ceil((i + 1) * n / m)`; bins may overlap (and
  repeat inputs when upsampling, `m > n`).
  """

  def bins(n, m):
    w = np.zeros((m, n), np.float32)
    for i in range(m):
      start, end = (i * n) // m, -(-((i + 1) * n) // m)
      w[i, start:end] = 1.0 / (end - start)
    return w

  h, w = x.shape[1:3]
  out_h, out_w = output_size
  if (out_h, out_w) == (h, w):
    return x
  rows = jnp.asarray(bins(h, out_h), x.dtype)
  cols = jnp.asarray(bins(w, out_w), x.dtype)
  return jnp.einsum('oh,nhwc,pw->nopc', rows, x, cols)


def global_avg_pool(x: jax.Array, keepdims: bool = False) -> jax.Array:
  """Mean over H and W of an NHWC tensor, accumulated in float32."""
  return jnp.mean(
      x,
      axis=(1, 2),
      keepdims=keepdims,
      dtype=jnp.promote_types(x.dtype, jnp.float32),
  ).astype(x.dtype)
