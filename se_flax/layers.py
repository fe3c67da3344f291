"""Building blocks shared by every se_flax network (all NHWC).

`SqueezeExcite` is the paper's SE unit. The other layers exist because Flax's
defaults differ from the reference networks: Flax's 'SAME' padding is
asymmetric for stride 2 on even inputs, Caffe max pooling rounds the output
size up, Caffe's average pooling counts the padding (timm's IRv2 does not
in one place), PyTorch's adaptive pooling has its own bins, and PyTorch
BatchNorm momentum 0.1 is Flax momentum 0.9.
"""

import functools
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from se_flax import cpu_grads

Dtype = Any
ModuleDef = Any

# He (MSRA) initialisation, as in the paper, torchvision and timm.
he_normal = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

# BatchNorm defaults of the reference networks. Flax's momentum is the weight
# of the old running value, so PyTorch's momentum 0.1 is 0.9 here.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def make_divisible(value: float, divisor: int = 8,
                   min_value: Optional[int] = None) -> int:
  """timm's channel rounding with `round_limit=0` (used by its SEModule)."""
  min_value = min_value or divisor
  return max(min_value, int(value + divisor / 2) // divisor * divisor)


Padding = Union[None, int, Tuple[int, int],
                Tuple[Tuple[int, int], Tuple[int, int]]]


def _pair(value: Union[int, Sequence[int]]) -> Tuple[int, int]:
  if isinstance(value, int):
    return value, value
  value = tuple(int(v) for v in value)
  if len(value) != 2:
    raise ValueError(f'expected an int or a pair, got {value}')
  return value


# `Conv2d.impl` and `BatchNorm.impl`: 'auto' uses the gradient rules of
# `cpu_grads` when the backend is the CPU (decided at trace time) and plain
# XLA ops elsewhere; 'xla' uses plain XLA ops everywhere (forward-mode
# autodiff needs it on CPU, those rules being reverse-mode only). Max
# pooling's CPU rule works in both modes and has no switch.
LAYER_IMPLS = ('auto', 'xla')

_NHWC = ('NHWC', 'HWIO', 'NHWC')


def check_layer_impl(impl: str) -> None:
  if impl not in LAYER_IMPLS:
    raise ValueError(f'layer_impl must be one of {LAYER_IMPLS}, got {impl!r}')


def _use_cpu_grads(impl: str) -> bool:
  return impl == 'auto' and jax.default_backend() == 'cpu'


def _matmul(x, kernel2d):
  return lax.dot_general(x, kernel2d, (((x.ndim - 1,), (0,)), ((), ())))


def _conv(x, kernel, strides, padding, groups=1):
  return lax.conv_general_dilated(
      x, kernel, window_strides=(strides, strides), padding=padding,
      dimension_numbers=_NHWC, feature_group_count=groups)


class Conv2d(nn.Module):
  """2-D convolution with PyTorch/Caffe's explicit (default symmetric) padding.

  Kernel layout HWIO `(kh, kw, C_in / groups, features)`, input/output NHWC.
  Ungrouped 1x1 convolutions run as a matrix product: the same function,
  but XLA's CPU backend runs it several times faster than `conv_general`;
  on CPU (`impl='auto'`) with the gradient rule of `cpu_grads.matmul`.

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
    impl: 'auto' or 'xla' (`LAYER_IMPLS`).
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
  impl: str = 'auto'

  def __post_init__(self):
    check_layer_impl(self.impl)
    super().__post_init__()

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
          f'be divisible by groups={self.groups}')
    kh, kw = self.kernel_shape
    kernel = self.param('kernel', self.kernel_init,
                        (kh, kw, in_features // self.groups, self.features),
                        self.param_dtype)
    bias = (self.param('bias', nn.initializers.zeros, (self.features,),
                       self.param_dtype) if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias,
                                              dtype=self.dtype)
    pads = self.explicit_padding()
    if (kh, kw) == (1, 1) and self.groups == 1 and pads == ((0, 0), (0, 0)):
      if self.strides > 1:
        x = x[:, ::self.strides, ::self.strides, :]
      matmul = cpu_grads.matmul if _use_cpu_grads(self.impl) else _matmul
      y = matmul(x, kernel[0, 0])
    else:
      y = _conv(x, kernel, self.strides, pads, self.groups)
    if bias is not None:
      y = y + bias
    return y


def _max_pool(x, window, stride, pads):
  # The CPU rule is forward-mode safe (a JVP), so it needs no `impl`.
  if jax.default_backend() == 'cpu':
    return cpu_grads.max_pool(x, window, stride, pads)
  return nn.max_pool(x, (window, window), (stride, stride), padding=pads)


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


def max_pool_padded(x: jax.Array, window: int = 3, stride: int = 2,
                    padding: int = 1) -> jax.Array:
  """torchvision-style max pooling with symmetric -inf padding (NHWC).

  Floor mode; `padding=0` is PyTorch's plain `MaxPool2d(window, stride)`.
  """
  pads = ((padding, padding), (padding, padding))
  return _max_pool(x, window, stride, pads)


def avg_pool(x: jax.Array, window: int = 3, stride: int = 1,
             padding: int = 1, count_include_pad: bool = True) -> jax.Array:
  """Average pooling with symmetric zero padding (NHWC), floor mode.

  `count_include_pad=True` divides every window by `window ** 2` (Caffe's
  AVE pooling, PyTorch's default); False divides by the number of real
  pixels in the window (timm Inception-ResNet-v2's `mixed_5b` pool). The
  two differ only in windows that overlap the border.
  """
  pad = ((padding, padding), (padding, padding))
  y = nn.avg_pool(x, (window, window), (stride, stride), padding=pad,
                  count_include_pad=count_include_pad)
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
  return jnp.mean(x, axis=(1, 2), keepdims=keepdims,
                  dtype=jnp.promote_types(x.dtype, jnp.float32)).astype(
                      x.dtype)


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
    raise ValueError(f"hidden_rule must be 'floor' or 'divisible', got "
                     f'{self.hidden_rule!r}')

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 4:
      raise ValueError(f'SqueezeExcite expects NHWC input, got shape {x.shape}')
    if self.gate not in _GATES:
      raise ValueError(f'gate must be one of {sorted(_GATES)}, got '
                       f'{self.gate!r}')
    channels = x.shape[-1]
    if self.squeeze == 'avg':
      z = global_avg_pool(x)
    elif self.squeeze == 'max':
      z = jnp.max(x, axis=(1, 2))
    elif self.squeeze == 'none':
      z = x
    else:
      raise ValueError(f"squeeze must be 'avg', 'max' or 'none', got "
                       f'{self.squeeze!r}')
    dense = lambda features, name: nn.Dense(
        features, use_bias=self.use_bias, kernel_init=he_normal,
        dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    s = self.activation(dense(self.hidden_width(channels), 'fc1')(z))
    s = _GATES[self.gate](dense(channels, 'fc2')(s))
    self.sow('intermediates', 'gate', s)
    if s.ndim == 2:
      s = s[:, None, None, :]
    return x * s.astype(x.dtype)


class BatchNorm(nn.Module):
  """Flax's `nn.BatchNorm` over N, H, W of NHWC input: the same variables
  (`scale`, `bias`; `batch_stats` `mean`, `var`), the same forward, bit for
  bit; in training on CPU (`impl='auto'`) with the closed-form gradient of
  `cpu_grads.batch_norm_train`.

  Under `jax.jit` over a sharded batch the statistics are those of the
  global batch, so no `axis_name` is needed.

  Attributes:
    use_running_average: normalise with the running statistics (eval).
    momentum: weight of the old running value (Flax convention).
    epsilon: added to the variance.
    dtype: output dtype (statistics and normalisation are float32).
    param_dtype: dtype of `scale` and `bias`.
    scale_init: `scale`'s initialiser (zeros for zero-init residuals).
    impl: as `Conv2d.impl`.
  """
  use_running_average: bool
  momentum: float = BN_MOMENTUM
  epsilon: float = BN_EPSILON
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32
  scale_init: Callable = nn.initializers.ones
  impl: str = 'auto'

  def __post_init__(self):
    check_layer_impl(self.impl)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = x.shape[-1]
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,),
                            jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (features,),
                           jnp.float32)
    scale = self.param('scale', self.scale_init, (features,),
                       self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (features,),
                      self.param_dtype)
    if self.use_running_average:
      y = cpu_grads.normalize(x, ra_mean.value, ra_var.value, scale, bias,
                              self.epsilon)
    else:
      cpu = _use_cpu_grads(self.impl)
      # With the CPU rule the gradient comes from batch_norm_train, which
      # computes the same statistics (XLA computes them once).
      mean, var = cpu_grads.batch_stats(lax.stop_gradient(x) if cpu else x)
      if not self.is_initializing():
        ra_mean.value = (self.momentum * ra_mean.value
                         + (1 - self.momentum) * mean)
        ra_var.value = (self.momentum * ra_var.value
                        + (1 - self.momentum) * var)
      if cpu:
        y = cpu_grads.batch_norm_train(x, scale, bias, self.epsilon)
      else:
        y = cpu_grads.normalize(x, mean, var, scale, bias, self.epsilon)
    return y.astype(self.dtype or jnp.result_type(x, scale, bias))


def batch_norm(train: bool, *, momentum: float = BN_MOMENTUM,
               epsilon: float = BN_EPSILON, dtype: Optional[Dtype] = None,
               param_dtype: Dtype = jnp.float32,
               impl: str = 'auto') -> ModuleDef:
  """A `BatchNorm` factory with the reference networks' settings:
  `norm(name, scale_init=ones)`."""
  return lambda name, scale_init=nn.initializers.ones: BatchNorm(
      use_running_average=not train, momentum=momentum, epsilon=epsilon,
      dtype=dtype, param_dtype=param_dtype, scale_init=scale_init,
      impl=impl, name=name)


def factories(train: bool, *, se: Optional[ModuleDef], dtype: Optional[Dtype],
              param_dtype: Dtype, bn_momentum: float = BN_MOMENTUM,
              bn_epsilon: float = BN_EPSILON, layer_impl: str = 'auto'):
  """The `(conv, norm, se)` factories a model builds once and passes down.

  Each carries the compute dtype and parameter dtype; `conv` and `norm`
  also `layer_impl` (their `impl`); `norm` the BN mode
  (`use_running_average=not train`), momentum and epsilon; `se` is None for
  the plain network.
  """
  conv = functools.partial(Conv2d, dtype=dtype, param_dtype=param_dtype,
                           impl=layer_impl)
  norm = batch_norm(train, momentum=bn_momentum, epsilon=bn_epsilon,
                    dtype=dtype, param_dtype=param_dtype, impl=layer_impl)
  if se is not None:
    se = functools.partial(se, dtype=dtype, param_dtype=param_dtype)
  return conv, norm, se


def check_nhwc(x: jax.Array, where: str, channels: Sequence[int] = (3,)):
  """Raises a clear error unless `x` is an NHWC image batch."""
  if x.ndim != 4 or x.shape[-1] not in channels:
    raise ValueError(
        f'{where} expects NHWC images of shape (N, H, W, {channels[0]}), got '
        f'{tuple(x.shape)}; transpose NCHW input with x.transpose(0, 2, 3, 1)')
