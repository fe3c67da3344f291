"""Convolution with PyTorch/Caffe's explicit symmetric padding (NHWC).

Flax's 'SAME' padding is asymmetric for stride 2 on even inputs; the
reference networks pad `k // 2` on each side.
"""

from typing import Callable, Optional, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from se_flax import cpu_grads
from se_flax.layers import rules
from se_flax.layers.common import Dtype, _pair, he_normal

Padding = Union[
    None, int, Tuple[int, int], Tuple[Tuple[int, int], Tuple[int, int]]
]

_NHWC = ('NHWC', 'HWIO', 'NHWC')


def _conv(x, kernel, strides, padding, groups=1):
  return lax.conv_general_dilated(
      x,
      kernel,
      window_strides=(strides, strides),
      padding=padding,
      dimension_numbers=_NHWC,
      feature_group_count=groups,
  )


class Conv2d(nn.Module):
  """2-D convolution with PyTorch/Caffe's explicit (default symmetric) padding.

  Kernel layout HWIO `(kh, kw, C_in / groups, features)`, input/output NHWC.
  Ungrouped 1x1 convolutions run as a matrix product: the same function,
  but XLA's CPU backend runs it several times faster than `conv_general`;
  on CPU, unless `layers.layer_rules('off')`, with the gradient rule of
  `cpu_grads.matmul`.

  Attributes:
    features: output channels.
    kernel_size: `k` (square) or `(kh, kw)`, e.g. Inception's (1, 7).
    strides: the same stride on both axes.
    groups: `feature_group_count`; `groups == C_in` is a depthwise conv.
    padding: None: `kh // 2` rows and `kw // 2` columns on each side (what
      PyTorch's `padding=k // 2` and Caffe's `pad` do; never Flax 'SAME',
      which pads stride-2 convs asymmetrically); an int `p`: `p` on every
      side; `(ph, pw)`: per axis, symmetric; `((top, bottom), (left,
      right))`: explicit.
    use_bias: add a bias (Caffe's default, VGG, IRv2's residual 1x1).
  """

  features: int
  kernel_size: Union[int, Tuple[int, int]]
  strides: int = 1
  groups: int = 1
  padding: Padding = None
  use_bias: bool = False
  kernel_init: Callable = he_normal
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32

  @property
  def kernel_shape(self) -> Tuple[int, int]:
    """`(kh, kw)`."""
    return _pair(self.kernel_size)

  def explicit_padding(self) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """`((top, bottom), (left, right))` from the `padding` field."""
    if self.padding is None:
      kh, kw = self.kernel_shape
      return (kh // 2, kh // 2), (kw // 2, kw // 2)
    if isinstance(self.padding, int):
      return (self.padding,) * 2, (self.padding,) * 2
    first, second = self.padding
    if isinstance(first, int) and isinstance(second, int):
      return (first, first), (second, second)
    return _pair(first), _pair(second)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_features = x.shape[-1]
    if in_features % self.groups or self.features % self.groups:
      raise ValueError(
          f'{self.name}: channels in={in_features}, out={self.features} must '
          f'be divisible by groups={self.groups}'
      )
    kh, kw = self.kernel_shape
    kernel = self.param(
        'kernel',
        self.kernel_init,
        (kh, kw, in_features // self.groups, self.features),
        self.param_dtype,
    )
    bias = (
        self.param(
            'bias', nn.initializers.zeros, (self.features,), self.param_dtype
        )
        if self.use_bias
        else None
    )
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    pads = self.explicit_padding()
    if (kh, kw) == (1, 1) and self.groups == 1 and pads == ((0, 0), (0, 0)):
      if self.strides > 1:
        x = x[:, :: self.strides, :: self.strides, :]
      matmul = (
          cpu_grads.matmul if rules.use_cpu_rules() else cpu_grads.plain_matmul
      )
      y = matmul(x, kernel[0, 0])
    else:
      y = _conv(x, kernel, self.strides, pads, self.groups)
    if bias is not None:
      y = y + bias
    return y
