"""The pure steps, the optimizer and the sharded step on 8 CPU devices."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

import se_flax
from se_flax.train import config as config_lib
from se_flax.train import loop, optim, sharding, steps


def _config(**overrides):
  c = config_lib.base_config()
  c.model.name = 'seresnet_tiny'
  c.batch_size = 16
  c.learning_rate = 0.1
  c.weight_decay = 1e-4
  for k, v in overrides.items():
    c[k] = v
  return c


def _batch(seed, n=16, size=32, classes=10):
  rng = np.random.default_rng(seed)
  return {
      'image': rng.integers(0, 256, (n, size, size, 3), np.uint8),
      'label': rng.integers(0, classes, (n,), np.int32),
  }


def _setup(config, mesh, classes=10):
  model = config_lib.build_model(config, classes)
  schedule = optim.create_schedule(config, steps_per_epoch=10)
  tx = optim.create_optimizer(config, schedule)
  state = loop.create_state(config, model, tx, 32, mesh)
  fn = jax.jit(
      functools.partial(
          steps.train_step,
          model=model,
          tx=tx,
          schedule=schedule,
          bn_groups=config.model.bn_groups,
          ema_decay=config.ema_decay,
      ),
      in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)),
      out_shardings=(sharding.replicated(mesh), sharding.replicated(mesh)),
      donate_argnums=0,
  )
  return state, fn


def _run(config, mesh, num_steps=3):
  state, fn = _setup(config, mesh)
  for i in range(num_steps):
    batch = sharding.global_batch(_batch(i), sharding.batch_sharding(mesh))
    state, metrics = fn(state, batch)
  return jax.device_get(state), jax.device_get(metrics)


def test_eight_devices_match_one_device():
  assert jax.device_count() == 8, 'conftest sets 8 host devices'
  config = _config()
  one = Mesh(np.asarray(jax.devices()[:1]), ('data',))
  eight = sharding.create_mesh()
  state1, m1 = _run(config, one)
  state8, m8 = _run(config, eight)
  assert int(state8.step) == 3
  for a, b in zip(
      jax.tree_util.tree_leaves(state1.params),
      jax.tree_util.tree_leaves(state8.params),
  ):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
  for a, b in zip(
      jax.tree_util.tree_leaves(state1.batch_stats),
      jax.tree_util.tree_leaves(state8.batch_stats),
  ):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(m1['loss'], m8['loss'], rtol=1e-5)


# ~30 s; a training option for pmap-era BN semantics.
@pytest.mark.slow
def test_bn_groups_normalise_per_group():
  """bn_groups=2 on a batch made of two different halves differs from
  global BN, equals running each half separately with global BN, and its
  running statistics are the mean of the two halves' updates."""
  model = se_flax.create_model('seresnet_tiny', num_classes=10)
  x = steps.normalize_images(_batch(0)['image'])
  x = x.at[8:].multiply(3.0)
  variables = model.init(jax.random.key(0), x[:1], train=False)
  rng = jax.random.key(1)
  logits_g, stats_g = steps._forward_train(model, variables, x, rng, 2)
  logits_a, stats_a = steps._forward_train(model, variables, x[:8], rng, 1)
  logits_b, stats_b = steps._forward_train(model, variables, x[8:], rng, 1)
  logits_all, _ = steps._forward_train(model, variables, x, rng, 1)
  np.testing.assert_allclose(logits_g[:8], logits_a, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(logits_g[8:], logits_b, rtol=1e-4, atol=1e-4)
  assert not np.allclose(logits_g, logits_all, atol=1e-3)
  leaves = zip(
      *(jax.tree_util.tree_leaves(s) for s in (stats_g, stats_a, stats_b))
  )
  for grouped, a, b in leaves:
    np.testing.assert_allclose(grouped, (a + b) / 2, rtol=1e-5, atol=1e-6)


def _assert_unchanged_but_counted(old, new):
  """`new` is `old` with the step and skipped-step counters advanced."""
  old, new = jax.device_get(old), jax.device_get(new)
  assert int(new.step) == int(old.step) + 1
  assert int(new.skipped_steps) == int(old.skipped_steps) + 1
  for field in ('params', 'batch_stats', 'opt_state', 'rng'):
    for a, b in zip(
        jax.tree_util.tree_leaves(getattr(old, field)),
        jax.tree_util.tree_leaves(getattr(new, field)),
    ):
      np.testing.assert_array_equal(a, b, err_msg=field)


def test_nonfinite_step_is_skipped_and_counted():
  config = _config()
  mesh = Mesh(np.asarray(jax.devices()[:1]), ('data',))
  state, fn = _setup(config, mesh)
  batch = sharding.global_batch(_batch(0), sharding.batch_sharding(mesh))
  poisoned = state.replace(
      params=jax.tree_util.tree_map(
          lambda p: p.at[...].set(jnp.nan) if p.ndim == 4 else p, state.params
      )
  )
  kept = jax.device_get(poisoned)
  new, metrics = fn(poisoned, batch)
  assert not bool(metrics['finite'])
  _assert_unchanged_but_counted(kept, new)


def test_nonfinite_optimizer_state_is_never_applied():
  """Finite loss and gradients, but a damaged momentum buffer: the guard
  looks at the whole new state, so the step is skipped."""
  config = _config()
  mesh = Mesh(np.asarray(jax.devices()[:1]), ('data',))
  state, fn = _setup(config, mesh)
  batch = sharding.global_batch(_batch(0), sharding.batch_sharding(mesh))
  trace = state.opt_state[1][0].trace
  damaged = jax.tree_util.tree_map(
      lambda t: t.at[(0,) * t.ndim].set(jnp.inf), trace
  )
  poisoned = state.replace(
      opt_state=(
          state.opt_state[0],
          (
              state.opt_state[1][0]._replace(trace=damaged),
              *state.opt_state[1][1:],
          ),
      )
  )
  kept = jax.device_get(poisoned)
  new, metrics = fn(poisoned, batch)
  assert np.isfinite(float(metrics['loss']))
  assert np.isfinite(float(metrics['l2_grads']))
  assert not bool(metrics['finite'])
  _assert_unchanged_but_counted(kept, new)
  # And a healthy state on the same batch does step.
  fresh, _ = _setup(config, mesh)
  stepped, ok = fn(fresh, batch)
  assert bool(ok['finite']) and int(stepped.skipped_steps) == 0


def test_squared_norm_flags_every_non_finite_leaf_and_only_overflow_besides():
  tree = {
      'w': jnp.ones((3, 2)),
      'b': jnp.zeros(4, jnp.bfloat16),
      'count': jnp.array(7, jnp.int32),  # Not floating point: not counted.
  }
  assert float(steps.squared_norm(tree)) == 6.0
  assert float(steps.squared_norm({'n': None, 'i': jnp.int32(1)})) == 0.0
  for bad in (jnp.nan, jnp.inf, -jnp.inf):
    for leaf in ('w', 'b'):
      hurt = dict(tree, **{leaf: tree[leaf].at[0].set(bad)})
      assert not np.isfinite(float(steps.squared_norm(hurt))), (bad, leaf)
  # Finite, but beyond float32's squares: counted as a diverged tree.
  assert not np.isfinite(float(steps.squared_norm({'w': jnp.full(2, 2e19)})))
  assert np.isfinite(float(steps.squared_norm({'w': jnp.full(2, 1e18)})))


def test_ema_tracks_params():
  config = _config(ema_decay=0.5)
  mesh = Mesh(np.asarray(jax.devices()[:1]), ('data',))
  state, fn = _setup(config, mesh)
  p0 = jax.device_get(state.params)
  batch = sharding.global_batch(_batch(0), sharding.batch_sharding(mesh))
  new, _ = fn(state, batch)
  new = jax.device_get(new)
  for e, a, b in zip(
      jax.tree_util.tree_leaves(new.ema_params),
      jax.tree_util.tree_leaves(p0),
      jax.tree_util.tree_leaves(new.params),
  ):
    np.testing.assert_allclose(e, 0.5 * a + 0.5 * b, rtol=1e-5, atol=1e-6)


def test_eval_step_masks_padding():
  model = se_flax.create_model('seresnet_tiny', num_classes=10)
  batch = _batch(0)
  variables = model.init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False
  )
  full = steps.eval_step(
      variables, {**batch, 'mask': np.ones(16, bool)}, model=model
  )
  half_mask = np.arange(16) < 5
  padded = {k: v.copy() for k, v in batch.items()}
  padded['label'][5:] = 0  # Padding content must not matter.
  half = steps.eval_step(variables, {**padded, 'mask': half_mask}, model=model)
  first5 = steps.eval_step(
      variables,
      {k: v[:5] for k, v in batch.items()} | {'mask': np.ones(5, bool)},
      model=model,
  )
  assert int(half['count']) == 5 and int(full['count']) == 16
  for k in ('loss_sum', 'top1_count', 'top5_count'):
    np.testing.assert_allclose(half[k], first5[k], rtol=1e-5)


def test_weight_decay_mask():
  model = se_flax.create_model('seresnet_tiny', num_classes=10)
  params = jax.eval_shape(
      lambda: model.init(
          jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False
      )
  )['params']
  mask = optim.weight_decay_mask(params, decay_se=False)
  block = mask['stage1_block0']
  assert block['conv1']['kernel'] is True
  assert block['bn1']['scale'] is False and block['bn1']['bias'] is False
  assert block['se']['fc1']['kernel'] is False
  assert mask['fc']['kernel'] is True and mask['fc']['bias'] is False
  assert (
      optim.weight_decay_mask(params)['stage1_block0']['se']['fc1']['kernel']
      is True
  )


def test_schedules():
  config = _config(batch_size=512, learning_rate=0.15)
  config.lr_decay_epochs = (30, 60, 90)
  s = optim.create_schedule(config, steps_per_epoch=100)
  assert optim.learning_rate(config) == pytest.approx(0.3)
  np.testing.assert_allclose(
      [s(0), s(2999), s(3000), s(6000), s(9000)],
      [0.3, 0.3, 0.03, 0.003, 0.0003],
      rtol=1e-5,
  )
  config.lr_schedule = 'cosine'
  config.warmup_epochs = 5.0
  config.num_epochs = 100.0
  s = optim.create_schedule(config, steps_per_epoch=100)
  assert float(s(0)) == pytest.approx(0.3 / 500, rel=1e-4)
  assert float(s(500)) == pytest.approx(0.3, rel=1e-4)
  assert float(s(10_000)) == pytest.approx(0.0, abs=1e-6)


def test_cross_entropy_label_smoothing():
  logits = jnp.array([[2.0, 0.0, -1.0]])
  plain = steps.cross_entropy(logits, jnp.array([0]))
  smooth = steps.cross_entropy(logits, jnp.array([0]), 0.3)
  logp = jax.nn.log_softmax(logits)[0]
  np.testing.assert_allclose(plain, -logp[0], rtol=1e-6)
  expected = -(0.8 * logp[0] + 0.1 * logp[1] + 0.1 * logp[2])
  np.testing.assert_allclose(smooth, expected, rtol=1e-6)
