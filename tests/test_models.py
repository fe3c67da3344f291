"""Registry, SE integration variants and the model call contract."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import se_flax
from se_flax import layers
from se_flax.models import resnet

TIMM_NAMES = [
    'resnet18',
    'resnet34',
    'resnet50',
    'resnet101',
    'resnet152',
    'resnext50_32x4d',
    'resnext101_32x4d',
    'seresnet18',
    'seresnet34',
    'seresnet50',
    'seresnet101',
    'seresnet152',
    'seresnext50_32x4d',
    'seresnext101_32x4d',
    'legacy_seresnet18',
    'legacy_seresnet34',
    'legacy_seresnet50',
    'legacy_seresnet101',
    'legacy_seresnet152',
    'legacy_seresnext26_32x4d',
    'legacy_seresnext50_32x4d',
    'legacy_seresnext101_32x4d',
    'legacy_senet154',
    'senet154',
]


def test_registry_has_every_timm_name_and_paper_alias():
  names = set(se_flax.list_models())
  assert set(TIMM_NAMES) <= names
  assert {
      'se_resnet50',
      'se_resnet101',
      'se_resnet152',
      'se_resnext50_32x4d',
      'se_resnext101_32x4d',
  } <= names


def test_unknown_names_and_fields_fail_clearly():
  with pytest.raises(ValueError, match='Did you mean.*seresnet50'):
    se_flax.create_model('seresnet5')
  with pytest.raises(ValueError, match='unknown fields.*reducton'):
    se_flax.create_model('seresnet50', reducton=8)
  with pytest.raises(ValueError, match='Unknown SqueezeExcite fields'):
    se_flax.create_model('seresnet50', se={'ratio': 8})
  with pytest.raises(ValueError, match='se_position'):
    se_flax.model_stats('seresnet50', se_position='middle')


def test_overrides_reach_the_module():
  model = se_flax.create_model(
      'se_resnet50',
      num_classes=10,
      se={'reduction': 8, 'gate': 'tanh'},
      se_stages=(3, 4),
      dtype=jnp.bfloat16,
  )
  assert model.num_classes == 10 and model.se_stages == (3, 4)
  assert model.se.keywords == {
      'hidden_rule': 'floor',
      'reduction': 8,
      'gate': 'tanh',
  }
  assert se_flax.create_model('se_resnet50', se=None).se is None
  assert se_flax.create_model('resnet50', se=True).se is not None


def _tiny(**overrides):
  return se_flax.create_model('seresnet_tiny', num_classes=7, **overrides)


@pytest.fixture(scope='module')
def tiny_batch():
  return jax.random.normal(jax.random.key(0), (4, 32, 32, 3))


def test_train_mode_updates_batch_stats_and_eval_does_not(tiny_batch):
  model = _tiny(drop_rate=0.5)
  variables = model.init(jax.random.key(1), tiny_batch, train=False)
  logits, updates = model.apply(
      variables,
      tiny_batch,
      train=True,
      mutable=['batch_stats'],
      rngs={'dropout': jax.random.key(2)},
  )
  assert logits.shape == (4, 7) and logits.dtype == jnp.float32
  changed = jax.tree_util.tree_map(
      lambda a, b: not np.allclose(a, b),
      variables['batch_stats'],
      updates['batch_stats'],
  )
  assert all(jax.tree_util.tree_leaves(changed))
  a = model.apply(variables, tiny_batch, train=False)
  b = model.apply(variables, tiny_batch, train=False)
  np.testing.assert_array_equal(a, b)  # Dropout is off in eval.


def test_every_parameter_gets_a_gradient(tiny_batch):
  model = _tiny(zero_init_last_bn=False)
  variables = model.init(jax.random.key(1), tiny_batch, train=False)

  def loss(params):
    logits, _ = model.apply(
        {**variables, 'params': params},
        tiny_batch,
        train=True,
        mutable=['batch_stats'],
    )
    return jnp.mean(logits**2)

  grads = jax.grad(loss)(variables['params'])
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    assert bool(jnp.all(jnp.isfinite(g))), path
    assert float(jnp.abs(g).max()) > 0, path


def test_layer_rules_change_speed_not_the_function(tiny_batch):
  # 'auto' uses CPU-only gradient rules (PERFORMANCE.md); 'off' plain Flax
  # layers, which forward-mode autodiff needs. The model is the same one.
  model = _tiny(zero_init_last_bn=False)
  variables = model.init(jax.random.key(1), tiny_batch, train=False)

  def loss(model, params):
    logits, _ = model.apply(
        {**variables, 'params': params},
        tiny_batch,
        train=True,
        mutable=['batch_stats'],
    )
    return jnp.mean(logits**2)

  grad = lambda: jax.jit(jax.grad(functools.partial(loss, model)))
  g_auto = grad()(variables['params'])
  with layers.layer_rules('off'):
    g_off = grad()(variables['params'])  # Traced here, so under 'off'.
  # Float32 rounding differs between the two (the fused BN + SE layer sums
  # per sample first), so the tolerance is relative to each leaf's largest
  # gradient; the float64 check of the rules is in test_cpu_grads.
  for a, b in zip(
      jax.tree_util.tree_leaves(g_auto), jax.tree_util.tree_leaves(g_off)
  ):
    np.testing.assert_allclose(
        a, b, rtol=1e-4, atol=2e-5 * float(jnp.max(jnp.abs(b)))
    )
  if jax.default_backend() == 'cpu':  # The rules are on: different HLO.
    hlo = lambda: grad().lower(variables['params']).as_text()
    on = hlo()
    with layers.layer_rules('off'):
      assert hlo() != on
  tangent = jax.tree_util.tree_map(jnp.ones_like, variables['params'])
  with layers.layer_rules('off'):
    _, jvp = jax.jit(
        lambda p, t: jax.jvp(functools.partial(loss, model), (p,), (t,))
    )(variables['params'], tangent)
  assert np.isfinite(float(jvp))
  assert layers.current_layer_rules() == 'auto'  # Restored after the block.
  with pytest.raises(ValueError, match='layer_rules must be one of'):
    with layers.layer_rules('cudnn'):
      pass


def test_standard_se_fuses_with_the_last_bn_only_where_it_can(tiny_batch):
  # BN + standard SE is one layer in training under the CPU rules; a ReLU
  # between them (legacy SE-ResNet-18/34), another SE position, eval mode
  # or the rules off keep the plain composition.
  def fused_layers(train, rules='auto', **overrides):
    model = _tiny(**overrides)
    variables = model.init(jax.random.key(1), tiny_batch, train=False)
    apply = lambda v: model.apply(
        v, tiny_batch, train=train, mutable=['batch_stats']
    )
    with layers.layer_rules(rules):
      return str(jax.make_jaxpr(apply)(variables)).count(
          'name=batch_norm_gated'
      )

  expected = 4 if jax.default_backend() == 'cpu' else 0  # One per block.
  assert fused_layers(True) == expected
  assert fused_layers(False) == 0
  assert fused_layers(True, 'off') == 0
  assert fused_layers(True, relu_before_se=True) == 0
  assert fused_layers(True, se_position='post') == 0


def test_bf16_compute_keeps_fp32_params_and_logits(tiny_batch):
  model = _tiny(dtype=jnp.bfloat16)
  variables = model.init(jax.random.key(1), tiny_batch, train=False)
  assert {p.dtype for p in jax.tree_util.tree_leaves(variables)} == {
      jnp.dtype(jnp.float32)
  }
  logits_bf16 = model.apply(variables, tiny_batch, train=False)
  logits_fp32 = _tiny().apply(variables, tiny_batch, train=False)
  assert logits_bf16.dtype == jnp.float32
  np.testing.assert_allclose(logits_bf16, logits_fp32, rtol=0.1, atol=0.1)


def test_zero_init_last_bn():
  shapes = jax.eval_shape(
      lambda: _tiny().init(
          jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False
      )
  )
  del shapes  # Shapes only; values need a real init below.
  variables = _tiny().init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False
  )
  block = variables['params']['stage2_block0']
  assert float(jnp.abs(block['bn2']['scale']).max()) == 0.0
  assert float(jnp.abs(block['bn1']['scale']).min()) == 1.0


def test_nchw_input_is_refused():
  with pytest.raises(ValueError, match='NHWC'):
    _tiny().init(jax.random.key(0), jnp.zeros((1, 3, 32, 32)), train=False)


def _block(se_position, planes=32):
  conv = functools.partial(layers.Conv2d)
  return resnet.Block(
      planes=planes,
      bottleneck=True,
      width=planes,
      conv1_width=planes,
      strides=1,
      stride_on='3x3',
      groups=1,
      downsample_kernel=1,
      relu_before_se=False,
      zero_init_last_bn=False,
      conv=conv,
      norm=layers.batch_norm(train=False),
      se=functools.partial(layers.SqueezeExcite, reduction=4),
      se_position=se_position,
  )


def _closed_gate(variables):
  """Sets the SE gate to sigmoid(-1e4) = 0 through fc2's bias."""
  params = jax.tree_util.tree_map(lambda x: x, variables['params'])
  params['se']['fc2']['kernel'] = jnp.zeros_like(params['se']['fc2']['kernel'])
  params['se']['fc2']['bias'] = jnp.full_like(params['se']['fc2']['bias'], -1e4)
  return {**variables, 'params': params}


@pytest.mark.parametrize('position', resnet.SE_POSITIONS)
def test_se_placement(position):
  x = jax.random.normal(jax.random.key(3), (2, 8, 8, 128))
  block = _block(position)
  variables = _with_bn_biases(block.init(jax.random.key(0), x))
  closed = block.apply(_closed_gate(variables), x)
  se_channels = variables['params']['se']['fc2']['bias'].shape[0]
  if position == 'standard':
    # The gate scales only the residual branch: the identity passes as is.
    np.testing.assert_allclose(closed, jax.nn.relu(x), atol=1e-6)
  elif position == 'identity':
    # SE-Identity scales the shortcut: a closed gate leaves only the branch,
    # so with the branch cut from the input (conv1 zeroed) nothing of the
    # input reaches the output; with the gate open it does.
    cut = _zeroed(variables, 'conv1')
    other = x[::-1]
    np.testing.assert_allclose(
        block.apply(_closed_gate(cut), x),
        block.apply(_closed_gate(cut), other),
        atol=1e-6,
    )
    assert not np.allclose(block.apply(cut, x), block.apply(cut, other))
  elif position == 'post':
    np.testing.assert_allclose(closed, 0.0, atol=1e-6)
  elif position in ('pre', '3x3'):
    # 'pre' gates the branch input, '3x3' the 3x3 conv's output: closed,
    # the block equals itself with the next conv's kernel zeroed (the
    # branch then carries only BN biases), and is not relu(x).
    assert se_channels == (128 if position == 'pre' else 32)
    after = 'conv1' if position == 'pre' else 'conv3'
    cut = _zeroed(variables, after)
    np.testing.assert_allclose(closed, block.apply(cut, x), atol=1e-5)
    assert not np.allclose(closed, jax.nn.relu(x), atol=1e-3)


def _with_bn_biases(variables):
  """Non-zero BN biases, so that a zeroed branch still adds something."""
  params = jax.tree_util.tree_map(lambda x: x, variables['params'])
  for i, name in enumerate(n for n in params if n.startswith('bn')):
    params[name]['bias'] = jnp.full_like(params[name]['bias'], 0.1 * (i + 1))
  return {**variables, 'params': params}


def _zeroed(variables, conv):
  params = jax.tree_util.tree_map(lambda x: x, variables['params'])
  params[conv]['kernel'] = jnp.zeros_like(params[conv]['kernel'])
  return {**variables, 'params': params}
