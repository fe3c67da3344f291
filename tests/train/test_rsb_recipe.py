"""The RSB recipe's wiring: LAMB through `create_optimizer`, timm's
learning-rate scaling, BCE and Mixup/CutMix inside the train step, and the
config checks. (Each component's equality with timm: test_lamb.py,
test_losses.py, test_mixup.py and their live twins.)"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from se_flax.train import config as config_lib
from se_flax.train import lamb, losses, mixup, optim, steps, validation
from se_flax.train.state import TrainState


def _config(**overrides):
  c = config_lib.base_config()
  c.model.name = 'seresnet_tiny'
  c.data.image_size = 32
  c.batch_size = 8
  c.eval_batch_size = 8
  c.learning_rate = 5e-3
  for k, v in overrides.items():
    c[k] = v
  return c


def _batch(seed, n=8, size=32, classes=10):
  rng = np.random.default_rng(seed)
  return {
      'image': jnp.asarray(rng.integers(0, 256, (n, size, size, 3), np.uint8)),
      'label': jnp.asarray(rng.integers(0, classes, (n,), np.int32)),
  }


def _state(config, tx, classes=10):
  model = config_lib.build_model(config, classes)
  variables = model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False
  )
  state = TrainState.create(variables, tx, jax.random.PRNGKey(1), use_ema=False)
  return model, state


def _step(config, classes=10):
  schedule = optim.create_schedule(config, steps_per_epoch=10)
  tx = optim.create_optimizer(config, schedule)
  model, state = _state(config, tx, classes)
  fn = jax.jit(
      functools.partial(
          steps.train_step,
          model=model,
          tx=tx,
          schedule=schedule,
          label_smoothing=config.label_smoothing,
          loss=config.loss,
          bce_target_threshold=config.bce_target_threshold,
          mixup=mixup.from_config(config, classes),
      )
  )
  return model, state, fn


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, variables, images, rng):
  return steps._forward_train(model, variables, images, rng, 0)


def test_lamb_from_the_config_is_timms_lamb_with_the_decay_mask():
  config = _config(optimizer='lamb', weight_decay=0.02)
  # timm's mask (ndim > 1, not a bias) is the config's on a real network.
  shapes = jax.eval_shape(
      lambda: config_lib.build_model(config, 10).init(
          jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False
      )
  )['params']
  assert jax.tree_util.tree_all(
      jax.tree_util.tree_map(
          lambda a, b: a == b,
          lamb.timm_weight_decay_mask(shapes),
          optim.weight_decay_mask(shapes),
      )
  )
  tx = optim.create_optimizer(config, 5e-3)
  reference = lamb.lamb(5e-3, weight_decay=0.02)
  keys = iter(jax.random.split(jax.random.PRNGKey(0), 64))
  tensor = lambda *shape: jax.random.normal(next(keys), shape)
  params = {
      'conv1': {'kernel': tensor(3, 3, 3, 8)},
      'bn1': {'scale': tensor(8), 'bias': tensor(8)},
      'se': {'fc1': {'kernel': tensor(8, 2), 'bias': tensor(2)}},
      'fc': {'kernel': tensor(8, 10), 'bias': tensor(10)},
  }
  opt, ref = tx.init(params), reference.init(params)
  p, q = params, params
  for _ in range(3):
    grads = jax.tree_util.tree_map(lambda x: 10 * tensor(*x.shape), params)
    u, opt = tx.update(grads, opt, p)
    v, ref = reference.update(grads, ref, q)
    p, q = optax.apply_updates(p, u), optax.apply_updates(q, v)
  for a, b in zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(q)):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(p['fc']['kernel'], params['fc']['kernel'])


@pytest.mark.parametrize(
    'scaling,batch,expected',
    [('sqrt', 512, 2.5e-3), ('sqrt', 2048, 5e-3), ('linear', 512, 1.25e-3)],
)
def test_learning_rate_scaling_rules(scaling, batch, expected):
  config = _config(
      batch_size=batch, lr_base_batch_size=2048, lr_scaling=scaling
  )
  assert optim.learning_rate(config) == pytest.approx(expected, rel=1e-12)


def test_default_scaling_keeps_the_rate_per_256_images():
  assert optim.learning_rate(_config(learning_rate=0.1, batch_size=1024)) == (
      pytest.approx(0.4)
  )


def test_bce_step_loss_is_timms_bce_of_the_train_logits():
  config = _config(loss='bce', bce_target_threshold=0.2, label_smoothing=0.1)
  model, state, fn = _step(config)
  batch = _batch(0)
  # The same forward the step runs (same key: the step's fold of rng).
  rng = jax.random.fold_in(state.rng, state.step)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  images = steps.normalize_images(batch['image'], jnp.float32)
  logits, _ = _forward(model, variables, images, rng)
  expected = losses.binary_cross_entropy(logits, batch['label'], 0.1, 0.2)
  _, metrics = fn(state, batch)
  np.testing.assert_allclose(metrics['loss'], expected, rtol=1e-6)
  softmax = steps.cross_entropy(logits, batch['label'], 0.1).mean()
  assert abs(float(expected) - float(softmax)) > 0.1


def test_mixup_never_applied_leaves_the_step_bitwise_unchanged():
  plain = _config()
  never = _config()
  never.mixup.mixup_alpha = 0.2
  never.mixup.cutmix_alpha = 1.0
  never.mixup.prob = 0.0  # drawn, never applied
  results = []
  for config in (plain, never):
    _, state, fn = _step(config)
    state, metrics = fn(state, _batch(1))
    results.append((state.params, metrics['loss']))
  for a, b in zip(*(jax.tree_util.tree_leaves(r) for r in results)):
    np.testing.assert_array_equal(a, b)


def test_mixup_step_is_a_function_of_seed_and_step_and_mixes():
  config = _config(loss='bce', bce_target_threshold=0.2)
  config.mixup.mixup_alpha = 0.2
  config.mixup.cutmix_alpha = 1.0
  model, state, fn = _step(config)
  batch = dict(_batch(2), label=jnp.arange(8, dtype=jnp.int32))  # pairs differ
  first, m1 = fn(state, batch)
  again, m2 = fn(state, batch)
  np.testing.assert_array_equal(m1['loss'], m2['loss'])
  # The step's own mix, recomputed outside: the loss agrees.
  rng = jax.random.fold_in(state.rng, state.step)
  images, targets = mixup.mixup(
      mixup.from_config(config, 10),
      jax.random.fold_in(rng, steps._MIXUP_STREAM),
      steps.normalize_images(batch['image'], jnp.float32),
      batch['label'],
  )
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  logits, _ = _forward(model, variables, images, rng)
  np.testing.assert_allclose(
      m1['loss'],
      losses.binary_cross_entropy(logits, targets, 0.0, 0.2),
      rtol=1e-6,
  )
  assert float(jnp.abs(targets.sum(-1) - 1).max()) < 1e-6
  assert float(targets.max()) < 1.0  # mixed: no one-hot row left
  plain_logits, _ = _forward(
      model,
      variables,
      steps.normalize_images(batch['image'], jnp.float32),
      rng,
  )
  assert float(jnp.abs(plain_logits - logits).max()) > 1e-3


@pytest.mark.parametrize(
    'overrides,field',
    [
        (dict(optimizer='adam'), 'optimizer'),
        (dict(lr_scaling='cube'), 'lr_scaling'),
        (dict(lr_base_batch_size=0), 'lr_base_batch_size'),
        (dict(loss='hinge'), 'loss'),
        (dict(bce_target_threshold=0.2), 'bce_target_threshold'),
        (dict(loss='bce', bce_target_threshold=1.5), 'bce_target_threshold'),
        (dict(mixup=dict(mixup_alpha=-0.1)), 'mixup.mixup_alpha'),
        (dict(mixup=dict(prob=1.5)), 'mixup.prob'),
        (dict(model=dict(drop_path_rate=1.0)), 'model.drop_path_rate'),
        (dict(data=dict(rand_augment='rand-x3')), 'data.rand_augment'),
        (
            dict(data=dict(repeated_augmentation=-1)),
            'data.repeated_augmentation',
        ),
    ],
)
def test_recipe_values_that_cannot_be_meant_are_refused(overrides, field):
  config = _config()
  for key, value in overrides.items():
    if isinstance(value, dict):
      for k, v in value.items():
        config[key][k] = v
    else:
      config[key] = value
  with pytest.raises(ValueError, match=rf'^config\.{field}[:=]'):
    validation.validate_config(config)


def test_mix_batch_mixes_within_each_slice_with_its_own_draws():
  config = mixup.MixupConfig(mixup_alpha=0.2, cutmix_alpha=1.0, num_classes=4)
  key = jax.random.PRNGKey(3)
  # Slice g's images are all g: a mix within the slice keeps the value.
  images = jnp.repeat(jnp.arange(2.0), 4)[:, None, None, None] * jnp.ones(
      (8, 6, 6, 3)
  )
  labels = jnp.array([0, 1, 2, 3, 3, 2, 1, 0], jnp.int32)
  mixed, targets = steps.mix_batch(config, key, images, labels, groups=2)
  np.testing.assert_array_equal(mixed, images)
  keys = jax.random.split(key, 2)
  for g in range(2):
    part = slice(4 * g, 4 * g + 4)
    x, y = mixup.mixup(config, keys[g], images[part], labels[part])
    np.testing.assert_array_equal(mixed[part], x)
    np.testing.assert_array_equal(targets[part], y)
  # One group is the whole batch's Mixup, flipped across the slices.
  _, whole = steps.mix_batch(config, key, images, labels, groups=1)
  np.testing.assert_array_equal(
      whole, mixup.mixup(config, key, images, labels)[1]
  )


def _collectives(config):
  from se_flax.train import loop, sharding

  mesh = sharding.create_mesh()
  model = config_lib.build_model(config, 10)
  schedule = optim.create_schedule(config, steps_per_epoch=10)
  tx = optim.create_optimizer(config, schedule)
  train_fn, _ = loop.jit_steps(config, model, tx, schedule, mesh)
  state = loop.create_state(config, model, tx, 32, mesh)
  batch = sharding.global_batch(
      jax.tree_util.tree_map(np.asarray, _batch(0, n=16)),
      sharding.batch_sharding(mesh),
  )
  text = train_fn.lower(state, batch).compile().as_text()
  names = ('collective-permute', 'all-to-all', 'all-gather', 'all-reduce')
  # Scalar predicates are the Beta sampler's loop conditions, agreed over
  # the devices that draw the slices' lambdas: no image data.
  lines = [line for line in text.splitlines() if '= pred[] ' not in line]
  return {
      n: sum(f' {n}(' in line or f' {n}-start(' in line for line in lines)
      for n in names
  }


def test_mixup_on_eight_devices_moves_no_image_between_them():
  assert jax.device_count() == 8
  plain = _config(batch_size=16, loss='bce', bce_target_threshold=0.2)
  mixed = _config(batch_size=16, loss='bce', bce_target_threshold=0.2)
  mixed.mixup.mixup_alpha = 0.2
  mixed.mixup.cutmix_alpha = 1.0
  assert _collectives(mixed) == _collectives(plain)
