"""SqueezeExcite and the padding/pooling helpers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from se_flax import layers
from se_flax import runtime
from se_flax.layers import SqueezeExcite

# The CPU derivative rules exist on the CPU backend only.
CPU_ONLY = pytest.mark.skipif(
    jax.default_backend() != 'cpu', reason='a CPU-backend rule'
)


def _init_apply(module, x):
  variables = module.init(jax.random.key(0), x)
  return variables, module.apply(variables, x, mutable=['intermediates'])


def _gate(state):
  return state['intermediates']['gate'][0]


@pytest.mark.parametrize(
    'channels,rule,expected',
    [
        (64, 'floor', 4),
        (64, 'divisible', 8),
        (256, 'floor', 16),
        (256, 'divisible', 16),
        (320, 'floor', 20),
        (320, 'divisible', 24),
        (1056, 'floor', 66),
        (1056, 'divisible', 64),
    ],
)
def test_hidden_width_rules(channels, rule, expected):
  # docs/architectures.md, The SE unit and SE-BN-Inception: C // 16 vs
  # timm's make_divisible(C / 16, 8).
  assert SqueezeExcite(hidden_rule=rule).hidden_width(channels) == expected


def test_shapes_param_count_and_gate_range():
  c, r = 64, 16
  x = jax.random.normal(jax.random.key(1), (2, 5, 7, c))
  variables, (y, state) = _init_apply(SqueezeExcite(reduction=r), x)
  assert y.shape == x.shape
  n = sum(p.size for p in jax.tree_util.tree_leaves(variables['params']))
  assert n == 2 * c * c // r + c // r + c  # Two FCs with biases.
  gate = _gate(state)
  assert gate.shape == (2, c)
  assert bool(jnp.all((gate > 0) & (gate < 1)))
  np.testing.assert_allclose(y, x * gate[:, None, None, :], rtol=1e-6)


def test_matches_the_paper_formula():
  x = jax.random.normal(jax.random.key(2), (3, 4, 4, 32))
  module = SqueezeExcite(reduction=4)
  variables = module.init(jax.random.key(0), x)
  p = variables['params']
  z = x.mean((1, 2))
  h = jax.nn.relu(z @ p['fc1']['kernel'] + p['fc1']['bias'])
  s = jax.nn.sigmoid(h @ p['fc2']['kernel'] + p['fc2']['bias'])
  np.testing.assert_allclose(
      module.apply(variables, x), x * s[:, None, None, :], rtol=1e-5, atol=1e-6
  )


@pytest.mark.parametrize('squeeze', ['avg', 'max'])
def test_squeeze_is_spatially_global(squeeze):
  # The gate sees only pooled statistics: permuting positions permutes y.
  x = jax.random.normal(jax.random.key(3), (2, 6, 6, 32))
  module = SqueezeExcite(squeeze=squeeze)
  variables = module.init(jax.random.key(0), x)
  perm = jax.random.permutation(jax.random.key(4), 36)
  shuffle = lambda t: t.reshape(2, 36, 32)[:, perm].reshape(2, 6, 6, 32)
  np.testing.assert_allclose(
      module.apply(variables, shuffle(x)),
      shuffle(module.apply(variables, x)),
      rtol=1e-6,
  )


def test_gates_and_bias_switch():
  x = jax.random.normal(jax.random.key(5), (2, 3, 3, 32))
  for gate, lo, hi in (('relu', 0.0, np.inf), ('tanh', -1.0, 1.0)):
    _, (_, state) = _init_apply(SqueezeExcite(gate=gate), x)
    g = _gate(state)
    assert bool(jnp.all((g >= lo) & (g <= hi)))
  variables, _ = _init_apply(SqueezeExcite(use_bias=False), x)
  assert set(variables['params']['fc1']) == {'kernel'}


def test_no_squeeze_keeps_spatial_gate():
  x = jax.random.normal(jax.random.key(6), (2, 4, 4, 32))
  _, (y, state) = _init_apply(SqueezeExcite(squeeze='none'), x)
  assert _gate(state).shape == x.shape and y.shape == x.shape


def test_bf16_compute_fp32_params():
  x = jnp.ones((1, 2, 2, 32), jnp.bfloat16)
  module = SqueezeExcite(dtype=jnp.bfloat16)
  variables = module.init(jax.random.key(0), x)
  assert all(
      p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables)
  )
  assert module.apply(variables, x).dtype == jnp.bfloat16


def test_bad_input_and_fields_are_named():
  with pytest.raises(ValueError, match='NHWC'):
    SqueezeExcite().init(jax.random.key(0), jnp.ones((2, 32)))
  with pytest.raises(ValueError, match='gate'):
    SqueezeExcite(gate='softmax').init(
        jax.random.key(0), jnp.ones((1, 1, 1, 32))
    )
  with pytest.raises(ValueError, match='squeeze'):
    SqueezeExcite(squeeze='median').init(
        jax.random.key(0), jnp.ones((1, 1, 1, 32))
    )


@pytest.mark.parametrize(
    'size,expected', [(112, 56), (113, 56), (33, 16), (8, 4), (7, 3)]
)
def test_ceil_mode_max_pool(size, expected):
  x = jnp.arange(size * size, dtype=jnp.float32).reshape(1, size, size, 1)
  y = layers.max_pool_ceil(x)
  assert y.shape[1:3] == (expected, expected)
  # Windows start at 0, 2, 4, ...: the first output is the max of x[:3, :3].
  assert y[0, 0, 0, 0] == x[0, 2, 2, 0]
  # The last window is clipped at the border (Caffe), not shifted.
  assert y[0, -1, -1, 0] == x[0, -1, -1, 0]


@pytest.mark.parametrize(
    'kernel,strides,groups',
    [(1, 1, 1), (1, 2, 1), (3, 2, 1), (3, 1, 4), (7, 2, 1)],
)
def test_conv_matches_symmetric_lax_conv(kernel, strides, groups):
  x = jax.random.normal(jax.random.key(7), (2, 10, 11, 8))
  conv = layers.Conv2d(16, kernel, strides, groups=groups)
  variables = conv.init(jax.random.key(0), x)
  pad = kernel // 2
  expected = jax.lax.conv_general_dilated(
      x,
      variables['params']['kernel'],
      (strides, strides),
      ((pad, pad), (pad, pad)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=groups,
  )
  np.testing.assert_allclose(
      conv.apply(variables, x), expected, rtol=1e-5, atol=1e-5
  )


@pytest.mark.parametrize(
    'in_features,features,strides,dtype',
    [
        (8, 32, 1, jnp.float32),  # expanding
        (32, 8, 1, jnp.float32),  # contracting
        (8, 32, 2, jnp.float32),
        (32, 8, 2, jnp.bfloat16),
    ],
)
@CPU_ONLY
def test_cpu_1x1_gradient_rule_equals_xla_autodiff(
    in_features, features, strides, dtype
):
  # The 'auto' layer rules on the CPU backend use a custom VJP (PERFORMANCE.md,
  # "1x1 weight gradients"); it must be the same function and gradient as
  # plain XLA ops.
  x = jax.random.normal(jax.random.key(3), (2, 9, 10, in_features))
  g = jax.random.normal(
      jax.random.key(4),
      (2, 5 if strides == 2 else 9, 5 if strides == 2 else 10, features),
  )
  variables = layers.Conv2d(features, 1, strides).init(jax.random.key(0), x)

  conv = layers.Conv2d(features, 1, strides, dtype=dtype)

  def grads(rules):
    def loss(v, x):
      y = conv.apply(v, x)
      return jnp.sum(y.astype(jnp.float32) * g)

    with layers.layer_rules(rules):
      return jax.grad(loss, argnums=(0, 1))(variables, x)

  (dv_auto, dx_auto), (dv_xla, dx_xla) = grads('auto'), grads('off')
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  np.testing.assert_allclose(
      dv_auto['params']['kernel'],
      dv_xla['params']['kernel'],
      rtol=tol,
      atol=tol,
  )
  np.testing.assert_allclose(dx_auto, dx_xla, rtol=tol, atol=tol)
  assert dv_auto['params']['kernel'].dtype == jnp.float32
  assert dx_auto.dtype == x.dtype


def _copies_in_compiled_gradient(rules):
  x = jnp.ones((4, 14, 14, 64))
  conv = layers.Conv2d(256, 1)
  variables = conv.init(jax.random.key(0), x)

  def loss(v, x):  # An elementwise producer, as BN backward or a residual.
    return jnp.sum(conv.apply(v, jax.nn.relu(x * 2.0)) ** 2)

  step = jax.jit(jax.grad(loss), compiler_options=runtime.compiler_options())
  with layers.layer_rules(rules):
    lowered = step.lower(variables, x)
  hlo = lowered.compile().as_text()
  return [line for line in hlo.splitlines() if ' copy(' in line]


@CPU_ONLY
def test_cpu_1x1_weight_gradient_reads_its_operands_in_place(full_optimization):
  # XLA's own transpose rule makes the CPU backend copy an operand into
  # (C, N*H*W) order (and recompute its producer there); the CPU rule's
  # product must not (PERFORMANCE.md, "1x1 weight gradients").
  assert _copies_in_compiled_gradient('off')
  assert not _copies_in_compiled_gradient('auto')


def test_layer_rules_off_allow_forward_mode_and_a_bad_setting_is_named():
  x = jnp.ones((1, 4, 4, 8))
  conv = layers.Conv2d(4, 1)
  variables = conv.init(jax.random.key(0), x)
  with layers.layer_rules('off'):
    assert not layers.use_cpu_rules()
    _, tangent = jax.jvp(lambda x: conv.apply(variables, x), (x,), (x,))
  np.testing.assert_allclose(tangent, conv.apply(variables, x), rtol=1e-6)
  with pytest.raises(ValueError, match='layer_rules must be one of'):
    with layers.layer_rules('oneDNN'):
      pass


@CPU_ONLY
def test_batch_norm_factory_gives_flax_batch_norm_when_the_rules_are_off():
  assert layers.use_cpu_rules()
  assert type(layers.batch_norm(True)('bn')) is layers.BatchNorm
  with layers.layer_rules('off'):
    assert type(layers.batch_norm(True)('bn')) is nn.BatchNorm


@pytest.mark.parametrize(
    'kernel,padding,expected_pads',
    [
        ((1, 7), None, ((0, 0), (3, 3))),
        ((3, 1), None, ((1, 1), (0, 0))),
        (3, 0, ((0, 0), (0, 0))),
        (5, (1, 2), ((1, 1), (2, 2))),
        ((3, 3), ((0, 1), (2, 0)), ((0, 1), (2, 0))),
    ],
)
def test_conv_rectangular_kernels_and_explicit_padding(
    kernel, padding, expected_pads
):
  x = jax.random.normal(jax.random.key(8), (1, 9, 10, 4))
  conv = layers.Conv2d(6, kernel, padding=padding, use_bias=True)
  assert conv.explicit_padding() == expected_pads
  variables = conv.init(jax.random.key(0), x)
  kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
  assert variables['params']['kernel'].shape == (kh, kw, 4, 6)
  expected = jax.lax.conv_general_dilated(
      x,
      variables['params']['kernel'],
      (1, 1),
      expected_pads,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
  )
  np.testing.assert_allclose(
      conv.apply(variables, x),
      expected + variables['params']['bias'],
      rtol=1e-5,
      atol=1e-5,
  )


def test_avg_pool_counts_padding_or_not():
  x = jnp.ones((1, 3, 3, 1))
  # Caffe AVE / PyTorch default: zero padding is in the divisor.
  with_pad = layers.avg_pool(x, 3, 1, padding=1, count_include_pad=True)
  np.testing.assert_allclose(
      with_pad[0, :, :, 0],
      [[4 / 9, 6 / 9, 4 / 9], [6 / 9, 1, 6 / 9], [4 / 9, 6 / 9, 4 / 9]],
      rtol=1e-6,
  )
  # timm IRv2 mixed_5b: only real pixels count, so a constant stays put.
  without = layers.avg_pool(x, 3, 1, padding=1, count_include_pad=False)
  np.testing.assert_allclose(without, x, rtol=1e-6)
  assert (
      layers.avg_pool(
          x.astype(jnp.bfloat16), 3, 1, count_include_pad=False
      ).dtype
      == jnp.bfloat16
  )


@pytest.mark.parametrize('size,out', [(2, 7), (3, 7), (10, 7), (7, 7), (9, 4)])
def test_adaptive_avg_pool_uses_pytorch_bins(size, out):
  x = jax.random.normal(jax.random.key(9), (2, size, size + 1, 3))
  y = layers.adaptive_avg_pool(x, (out, out + 1))
  assert y.shape == (2, out, out + 1, 3)

  def bin_(i, n, m):  # torch: [floor(i n / m), ceil((i + 1) n / m)).
    return slice(int(np.floor(i * n / m)), int(np.ceil((i + 1) * n / m)))

  for i in range(out):
    for j in range(out + 1):
      window = x[:, bin_(i, size, out), bin_(j, size + 1, out + 1)]
      np.testing.assert_allclose(
          y[:, i, j], window.mean((1, 2)), rtol=1e-5, atol=1e-6
      )
