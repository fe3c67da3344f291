"""The CPU derivative rules (`se_flax.cpu_grads`) are the same functions.

Forward outputs are compared bit for bit with the plain Flax/XLA ops, and
gradients with JAX's own derivatives of those ops.
"""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from se_flax import cpu_grads, layers
from se_flax.benchmark import hlo


def _ties(shape, key, dtype=jnp.float32):
  # Post-ReLU values on a coarse grid: many zeros and many equal maxima.
  x = jax.nn.relu(jax.random.normal(jax.random.key(key), shape))
  return (jnp.round(x * 2) / 2).astype(dtype)


@pytest.mark.parametrize(
    'size,window,stride,pads',
    [
        (12, 3, 2, ((1, 1), (1, 1))),  # ResNet stem (torchvision)
        (13, 3, 2, ((0, 1), (0, 1))),  # Caffe ceil mode: bottom/right only
        (9, 3, 1, ((1, 1), (1, 1))),  # Inception branch pool
        (10, 2, 2, ((0, 0), (0, 0))),  # VGG
        # Inputs smaller than the window: taps that never land in x.
        (1, 3, 2, ((1, 1), (1, 1))),
        (2, 3, 2, ((0, 2), (0, 2))),
    ],
)
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_max_pool_rule_equals_xla(size, window, stride, pads, dtype):
  x = _ties((2, size, size + 1, 5), 0, dtype)
  plain = lambda x: nn.max_pool(
      x, (window, window), (stride, stride), padding=pads
  )
  rule = lambda x: cpu_grads.max_pool(x, window, stride, pads)
  y, vjp = jax.vjp(rule, x)
  y_ref, vjp_ref = jax.vjp(plain, x)
  np.testing.assert_array_equal(y, y_ref)
  g = jax.random.normal(jax.random.key(1), y.shape).astype(dtype)
  # Ties go to the first maximum in row-major window order, as XLA's
  # select-and-scatter does; only the order of the adds may differ.
  (dx,), (dx_ref,) = vjp(g), vjp_ref(g)
  tol = 1e-6 if dtype == jnp.float32 else 1e-2
  np.testing.assert_allclose(np.float32(dx), np.float32(dx_ref), atol=tol)
  # Forward mode works too (a JVP rule, unlike the custom VJPs). XLA's own
  # JVP breaks ties in no documented order, so compare without ties.
  x = jax.random.normal(jax.random.key(2), x.shape)
  tangent = jax.random.normal(jax.random.key(3), x.shape)
  _, t = jax.jvp(rule, (x,), (tangent,))
  _, t_ref = jax.jvp(plain, (x,), (tangent,))
  np.testing.assert_array_equal(t, t_ref)


def test_max_pool_rule_with_infinite_windows():
  # Windows whose every input is -inf: as in XLA's select-and-scatter, the
  # first element of the window wins, and a padding winner drops the
  # gradient (no index outside x).
  x = jnp.full((1, 5, 5, 2), -jnp.inf).at[0, 3, 3, 0].set(1.0)
  pads = ((1, 1), (1, 1))
  loss = lambda pool: lambda x: jnp.sum(
      pool(x) * jnp.arange(1.0, 19.0).reshape(1, 3, 3, 2)
  )
  dx = jax.jit(jax.grad(loss(lambda x: cpu_grads.max_pool(x, 3, 2, pads))))(x)
  ref = jax.grad(loss(lambda x: nn.max_pool(x, (3, 3), (2, 2), padding=pads)))(
      x
  )
  np.testing.assert_array_equal(dx, ref)


def _bn_pair(train, dtype, x):
  ours = layers.BatchNorm(
      use_running_average=not train, dtype=dtype, momentum=0.9, epsilon=1e-5
  )
  flax_bn = nn.BatchNorm(
      use_running_average=not train, dtype=dtype, momentum=0.9, epsilon=1e-5
  )
  shapes = lambda v: jax.tree_util.tree_map(jnp.shape, v)
  assert shapes(ours.init(jax.random.key(0), x)) == shapes(
      flax_bn.init(jax.random.key(0), x)
  )
  variables = {
      'params': {
          'scale': jax.random.uniform(jax.random.key(2), (5,)) + 0.5,
          'bias': jax.random.normal(jax.random.key(3), (5,)),
      },
      'batch_stats': {
          'mean': jnp.arange(5.0) / 10,
          'var': jnp.arange(1.0, 6.0),
      },
  }
  return ours, flax_bn, variables


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('train', [True, False])
def test_batch_norm_is_flax_batch_norm_bit_for_bit(train, dtype):
  x = (jax.random.normal(jax.random.key(1), (4, 6, 7, 5)) * 3 + 1).astype(dtype)
  ours, flax_bn, variables = _bn_pair(train, dtype, x)
  for rules in ('auto', 'off'):
    with layers.layer_rules(rules):
      y, stats = ours.apply(variables, x, mutable=['batch_stats'])
    y_ref, stats_ref = flax_bn.apply(variables, x, mutable=['batch_stats'])
    assert y.dtype == y_ref.dtype == dtype
    np.testing.assert_array_equal(y, y_ref)
    jax.tree_util.tree_map(np.testing.assert_array_equal, stats, stats_ref)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_batch_norm_gradient_rule_equals_autodiff(dtype):
  x = (jax.random.normal(jax.random.key(1), (4, 6, 7, 5)) * 3 + 1).astype(dtype)
  g = jax.random.normal(jax.random.key(4), x.shape)
  ours, flax_bn, variables = _bn_pair(True, dtype, x)

  def grads(module):
    def loss(params, x):
      y, _ = module.apply(
          {**variables, 'params': params}, x, mutable=['batch_stats']
      )
      return jnp.sum(jax.nn.relu(y.astype(jnp.float32)) * g)

    return jax.jit(jax.grad(loss, argnums=(0, 1)))(variables['params'], x)

  ref = grads(flax_bn)
  tol = 2e-5 if dtype == jnp.float32 else 2e-2
  for rules in ('auto', 'off'):
    with layers.layer_rules(rules):
      got = grads(ours)
    for a, b in zip(
        jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)
    ):
      assert a.dtype == b.dtype
      np.testing.assert_allclose(
          np.float32(a),
          np.float32(b),
          rtol=tol,
          atol=tol * float(jnp.max(jnp.abs(b))),
      )


def _bn_se_case(dtype):
  keys = jax.random.split(jax.random.key(7), 5)
  x = jax.random.normal(keys[0], (3, 5, 6, 8), dtype) * 2 + 1.5
  scale = jax.random.uniform(keys[1], (8,), dtype) + 0.5
  bias = jax.random.normal(keys[2], (8,), dtype)
  kernel = jax.random.normal(keys[3], (8, 8), dtype)
  g = jax.random.normal(keys[4], x.shape, dtype)
  return x, scale, bias, kernel, g


def test_batch_norm_squeeze_and_gate_rules_are_se_after_bn_in_float64():
  # In float64 the rules' algebra (squeeze from per-sample sums, the
  # shared reductions in the gradient) must match autodiff of the plain
  # composition to float64 rounding, not just to float32's.
  with jax.enable_x64(True):
    args = _bn_se_case(jnp.float64)
    x, scale, bias, kernel, g = args

    def plain(x, scale, bias, kernel):
      mean, var = cpu_grads.batch_stats(x)
      y = cpu_grads.normalize(x, mean, var, scale, bias, 1e-5)
      gate = jax.nn.sigmoid(y.mean((1, 2)) @ kernel)
      return jnp.sum(jax.nn.relu(y * gate[:, None, None, :]) * g)

    def fused(x, scale, bias, kernel):
      squeezed = cpu_grads.batch_norm_squeeze(x, scale, bias, 1e-5)
      gate = jax.nn.sigmoid(squeezed @ kernel)
      y = cpu_grads.batch_norm_gated(x, scale, bias, gate, 1e-5)
      return jnp.sum(jax.nn.relu(y) * g)

    grads = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3)))(
        *args[:4]
    )
    (v_ref, g_ref), (v, g_got) = grads(plain), grads(fused)
    np.testing.assert_allclose(v, v_ref, rtol=1e-12)
    for a, b in zip(g_got, g_ref):
      assert a.dtype == jnp.float64
      np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def _reductions_of_first_parameter(hlo_text: str) -> int:
  """Ops of the optimised entry computation that read parameter 0 and
  return something smaller than it (reductions, in whatever fusion)."""
  entry = hlo.entry_instructions(hlo_text)
  ((_, name, shape, _, _),) = [
      i for i in entry if i[3] == 'parameter' and i[4].startswith('0)')
  ]
  return sum(
      result_shape != shape
      for _, _, result_shape, _, rest in entry
      if f'%{name}' in re.split(r'[ ,)]+', rest)
  )


def test_batch_norm_then_se_reads_its_input_no_more_than_batch_norm(
    full_optimization,
):
  # The squeeze comes from BN's own statistics pass: after all of XLA's
  # passes (which fold nested reductions), the fused forward reduces x as
  # often as BN alone (sums and sums of squares), not once more.
  x, scale, bias, kernel, _ = _bn_se_case(jnp.float32)

  def plain(x, scale, bias):
    return cpu_grads.batch_norm_train(x, scale, bias, 1e-5)

  def fused(x, scale, bias, kernel):
    gate = jax.nn.sigmoid(
        cpu_grads.batch_norm_squeeze(x, scale, bias, 1e-5) @ kernel
    )
    return cpu_grads.batch_norm_gated(x, scale, bias, gate, 1e-5)

  counts = [
      _reductions_of_first_parameter(jax.jit(f).lower(*a).compile().as_text())
      for f, a in ((plain, (x, scale, bias)), (fused, (x, scale, bias, kernel)))
  ]
  assert counts[0] >= 1 and counts[1] == counts[0], counts


class _BnThenSe(nn.Module):
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x, train):
    norm = layers.batch_norm(train, dtype=self.dtype)('bn')
    se = layers.SqueezeExcite(reduction=2, dtype=self.dtype, name='se')
    return layers.excite_after_norm(norm, se, x)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_excite_after_norm_is_se_of_flax_batch_norm(dtype):
  x = (jax.random.normal(jax.random.key(1), (4, 6, 7, 8)) * 3 + 1).astype(dtype)
  r = jax.random.normal(jax.random.key(4), x.shape)
  module = _BnThenSe(dtype)
  variables = module.init(jax.random.key(0), x, train=False)
  variables = jax.tree_util.tree_map(
      lambda v: v + 0.1 * jax.random.normal(jax.random.key(5), v.shape),
      variables,
  )

  def run(train, rules):
    def loss(params, x):
      y, state = module.apply(
          {**variables, 'params': params},
          x,
          train,
          mutable=['batch_stats', 'intermediates'],
      )
      return jnp.sum(jax.nn.relu(y.astype(jnp.float32)) * r), (y, state)

    with layers.layer_rules(rules):
      jaxpr = str(jax.make_jaxpr(loss)(variables['params'], x))
      f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
      (_, aux), grads = f(variables['params'], x)
    return jaxpr, aux, grads

  # 'off': nn.BatchNorm, then SqueezeExcite, differentiated by JAX.
  for train in (False, True):
    jaxpr, (y, state), grads = run(train, 'auto')
    _, (y_ref, state_ref), grads_ref = run(train, 'off')
    assert ('batch_norm_gated' in jaxpr) == train
    assert ('batch_norm_squeeze' in jaxpr) == train
    assert y.dtype == y_ref.dtype == dtype
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    close = lambda a, b: np.testing.assert_allclose(
        np.float32(a),
        np.float32(b),
        rtol=tol,
        atol=tol * float(jnp.max(jnp.abs(np.float32(b)))),
    )
    if train:
      close(y, y_ref)
      jax.tree_util.tree_map(close, state, state_ref)
      jax.tree_util.tree_map(close, grads, grads_ref)
    else:  # Eval is the plain composition in both.
      np.testing.assert_array_equal(y, y_ref)
    assert state['intermediates']['se']['gate'][0].shape == (4, 8)
