"""se_flax.nnx: registry networks as NNX modules, checked against linen:
the same initial weights and logits, the same training steps (params,
optimizer, BatchNorm statistics), and weights back to linen and timm.

Compiling dominates on a 2-core CPU, so each jitted function is built once
per network (`Linen`) and the default run uses seresnet_tiny only."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx

import se_flax
from se_flax import convert
from se_flax import layers
from se_flax import nnx as se_nnx
from se_flax import testing
from se_flax.models import image_sizes
from tests import hub_cache

NAME, CLASSES, SIZE, BATCH = 'seresnet_tiny', 10, 32, 4
LR, MOMENTUM, STEPS = 0.02, 0.9, 3
SEED = 3


def images(seed=0, batch=BATCH, size=SIZE):
  nchw = testing.random_images(seed, batch, size)
  return jnp.asarray(nchw.transpose(0, 2, 3, 1))


@dataclasses.dataclass
class Linen:
  """A linen network, its variables and its jitted eval forward, which
  also returns the stem conv's output (the first BatchNorm's input)."""

  model: nn.Module
  variables: dict
  size: int = SIZE

  def __post_init__(self):
    self.forward = jax.jit(self._forward)

  def _forward(self, variables, x):
    logits, state = self.model.apply(
        variables,
        x,
        train=False,
        capture_intermediates=lambda m, _: m.name == 'conv1',
        mutable=['intermediates'],
    )
    stem = state['intermediates'].get('stem', {}).get('conv1')
    return logits, stem['__call__'][0] if stem else None

  def logits(self, x, variables=None):
    return self.forward(variables or self.variables, x)[0]


def timm_state(name, num_classes, seed=0):
  """Seeded random weights in timm's format: BatchNorm statistics away from
  (0, 1) and no compile (a jitted linen init costs ~7 s CPU here)."""
  layout = convert.timm_layout(name, num_classes)
  shapes = [(k, leaf.torch_shape, 'float32') for k, leaf in layout.items()]
  return testing.random_state_dict(shapes, seed)


@pytest.fixture(scope='module')
def tiny():
  model = se_flax.create_model(NAME, num_classes=CLASSES)
  state = timm_state(NAME, CLASSES)
  return Linen(model, convert.from_timm(state, NAME))


@nnx.jit
def nnx_forward(module, x):
  """The module's logits in its own mode (`module.train()` / `.eval()`)."""
  return module(x)


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def max_diff(a, b) -> float:
  diffs = jax.tree.map(lambda p, q: float(jnp.max(jnp.abs(p - q))), a, b)
  return max(jax.tree.leaves(diffs))


def test_to_nnx_and_back_are_linen_weights(tiny):
  wrapped = se_nnx.to_nnx(tiny.model, tiny.variables)
  assert_trees_equal(se_nnx.to_linen_variables(wrapped), tiny.variables)
  # NNX state paths are the collection + linen's module path.
  params = nnx.to_pure_dict(nnx.state(wrapped, nnx.Param))['params']
  assert_trees_equal(params, tiny.variables['params'])
  stats = nnx.to_pure_dict(nnx.state(wrapped, nnx.BatchStat))
  assert_trees_equal(stats['batch_stats'], tiny.variables['batch_stats'])
  with pytest.raises(ValueError, match="'params' and optionally"):
    se_nnx.to_nnx(tiny.model, {'weights': {}})
  with pytest.raises(TypeError, match='takes an se_flax.nnx.Network'):
    se_nnx.to_linen_variables(tiny.model)


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def nnx_steps(module, x, labels, steps):
  """SGD steps in the module's own mode; (losses, variables after step 1)."""
  optimizer = nnx.Optimizer(module, optax.sgd(LR, MOMENTUM), wrt=nnx.Param)

  @nnx.jit
  def step(module, optimizer, x, labels):
    def loss_fn(module):
      return cross_entropy(module(x), labels)

    loss, grads = nnx.value_and_grad(loss_fn)(module)
    optimizer.update(module, grads)
    return loss

  losses = [float(step(module, optimizer, x, labels))]
  first = jax.tree.map(np.array, se_nnx.to_linen_variables(module))
  losses += [
      float(step(module, optimizer, x, labels)) for _ in range(steps - 1)
  ]
  return losses, first


def linen_steps(model, variables, x, labels, steps):
  """The reference: the same SGD steps written with linen and optax."""
  tx = optax.sgd(LR, MOMENTUM)

  @jax.jit
  def step(variables, opt_state, key):
    def loss_fn(params):
      logits, updates = model.apply(
          {'params': params, 'batch_stats': variables['batch_stats']},
          x,
          train=True,
          mutable=['batch_stats'],
          rngs={'dropout': key},
      )
      return cross_entropy(logits, labels), updates

    params = variables['params']
    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    changes, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, changes)
    return {'params': params, **updates}, opt_state, loss

  opt_state = tx.init(variables['params'])
  keys = nnx.Rngs(dropout=SEED)  # The module's dropout keys, in order.
  losses = []
  for _ in range(steps):
    variables, opt_state, loss = step(variables, opt_state, keys.dropout())
    losses.append(float(loss))
  return variables, losses


def train_and_compare(net: Linen, rules: str, expected=None):
  """NNX steps under `rules`, checked against linen's ('off') steps.

  Returns linen's result, for the next call to reuse.
  """
  x, labels = images(1, size=net.size), jnp.arange(BATCH) % 5
  module = se_nnx.to_nnx(net.model, net.variables, rngs=nnx.Rngs(dropout=SEED))
  start, stem_conv = net.forward(net.variables, x)
  # Eval mode by default: linen's eval logits, statistics untouched.
  diff = float(jnp.max(jnp.abs(nnx_forward(module, x) - start)))
  assert diff <= 1e-6, diff  # Measured 0.0: the same program.
  assert_trees_equal(se_nnx.to_linen_variables(module), net.variables)
  module.train()
  with layers.layer_rules(rules):  # Read when the steps are traced.
    losses, first = nnx_steps(module, x, labels, STEPS)
    if expected is None:
      with layers.layer_rules('off'):
        expected = linen_steps(net.model, net.variables, x, labels, STEPS)
  variables, linen_losses = expected
  assert losses[-1] < losses[0], losses
  np.testing.assert_allclose(losses, linen_losses, rtol=1e-5)
  # Step 1's forward moved each running mean towards its batch mean by
  # 1 - momentum (the weights it saw were the initial ones).
  momentum = net.model.bn_momentum
  if stem_conv is not None:
    old = net.variables['batch_stats']['stem']['bn1']['mean']
    new = first['batch_stats']['stem']['bn1']['mean']
    batch_mean = jnp.mean(stem_conv, axis=(0, 1, 2))
    np.testing.assert_allclose(
        new, momentum * old + (1 - momentum) * batch_mean, atol=1e-6
    )
  trained = se_nnx.to_linen_variables(module)
  assert max_diff(trained['params'], net.variables['params']) > 1e-3
  assert max_diff(trained, variables) < 1e-5, max_diff(trained, variables)
  # The linen network with the NNX weights gives the NNX module's logits.
  module.eval()
  np.testing.assert_array_equal(net.logits(x, trained), nnx_forward(module, x))
  assert_trees_equal(se_nnx.to_linen_variables(module), trained)
  return expected


def test_training_with_both_layer_rules_equals_linen_steps(tiny):
  expected = train_and_compare(tiny, 'off')
  train_and_compare(tiny, 'auto', expected)


def test_pretrained_weights_load_and_go_back_to_timm(tiny, tmp_path):
  """A timm-format directory (model.safetensors + config.json) written from
  the NNX module's weights loads back into NNX and linen alike."""
  module = se_nnx.to_nnx(tiny.model, tiny.variables)
  state = convert.to_timm(se_nnx.to_linen_variables(module), NAME)
  cfg = {'input_size': [3, SIZE, SIZE], 'mean': [0.5, 0.4, 0.3]}
  cfg.update(std=[0.2, 0.25, 0.3], num_classes=CLASSES)
  for name, data in hub_cache.timm_hub_files(state, NAME, cfg).items():
    (tmp_path / name).write_bytes(data)
  loaded, config = se_nnx.load_pretrained(str(tmp_path))
  linen = se_flax.load_pretrained(str(tmp_path))
  assert config == linen.config and config.mean == (0.5, 0.4, 0.3)
  assert_trees_equal(se_nnx.to_linen_variables(loaded), tiny.variables)
  x = images(2)
  np.testing.assert_array_equal(
      nnx_forward(loaded, x), tiny.logits(x, linen.variables)
  )
  # Another class count: a fresh head, which needs rngs.
  with pytest.raises(ValueError, match='num_classes=3 .*rngs=nnx.Rngs'):
    se_nnx.load_pretrained(str(tmp_path), num_classes=3)


@pytest.mark.slow  # Initialising the new head compiles linen's init.
def test_pretrained_with_a_new_head(tiny, tmp_path):
  state = convert.to_timm(tiny.variables, NAME)
  cfg = {'input_size': [3, SIZE, SIZE], 'num_classes': CLASSES}
  for name, data in hub_cache.timm_hub_files(state, NAME, cfg).items():
    (tmp_path / name).write_bytes(data)
  module, config = se_nnx.load_pretrained(
      str(tmp_path), num_classes=3, rngs=nnx.Rngs(0)
  )
  weights = se_nnx.to_linen_variables(module)
  assert weights['params']['fc']['kernel'].shape == (128, 3)
  assert config.num_classes == 3
  del weights['params']['fc']
  without_fc = dict(tiny.variables['params'])
  del without_fc['fc']
  assert_trees_equal(weights, {**tiny.variables, 'params': without_fc})
  assert nnx_forward(module, images(size=SIZE)).shape == (BATCH, 3)


# One network of each structure, at its smallest input size: dropout
# (legacy), concatenated branches, depthwise and grouped convs. Left out
# for time: se_inception_resnet_v2 (passed once: 17 min) and se_vgg16_bn
# (equal to linen, but its loss rises at this rate from random weights).
FAMILIES = (
    'legacy_seresnext26_32x4d',
    'se_bn_inception',
    'se_mobilenetv1_100',
    'se_shufflenet_g3',
)


@pytest.mark.slow
@pytest.mark.parametrize('name', (NAME,) + FAMILIES)
def test_every_family_creates_and_trains_like_linen(name):
  module = se_nnx.create_model(name, rngs=nnx.Rngs(params=SEED), num_classes=5)
  size = image_sizes.smallest_size(module.model)
  key = nnx.Rngs(params=SEED).params()  # create_model's key.
  x = jnp.zeros((1, size, size, 3))
  init = jax.jit(lambda key, x: module.model.init(key, x, train=False))
  assert_trees_equal(se_nnx.to_linen_variables(module), init(key, x))
  net = Linen(module.model, se_nnx.to_linen_variables(module), size)
  train_and_compare(net, 'off')
