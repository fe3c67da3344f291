"""Stochastic depth (se_flax.layers.drop_path) against timm's fixtures.

tests/fixtures/drop_path/ (tools/make_drop_path_fixtures.py) holds timm
1.0.31's per-block rates of its own ResNets and the train-mode logits of
an SE-ResNet (`seresnet_tiny`) with the masks timm's DropPath drew; here
the same masks are forced into the JAX network (`nn.intercept_methods`
on `DropPath.sample_keep`). The rest checks what timm cannot: the JAX
draws' statistics, eval and rate 0 unchanged, RNG use, errors.
"""

import contextlib
import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import se_flax
from se_flax import convert
from se_flax import layers
from se_flax import testing
from se_flax.layers import drop_path
from se_flax.models import resnet

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'drop_path')


def _json(name):
  with open(os.path.join(FIXTURES, name)) as f:
    return json.load(f)


@functools.lru_cache(maxsize=None)
def _tiny():
  meta = _json('tiny.json')
  with np.load(os.path.join(FIXTURES, 'tiny.npz')) as z:
    arrays = dict(z)
  layout = convert.timm_layout(meta['name'], meta['num_classes'])
  state = testing.random_state_dict(
      [(k, leaf.torch_shape, 'float32') for k, leaf in layout.items()],
      meta['seed'],
  )
  return meta, arrays, convert.from_timm(state, meta['name'])


def forced_keep(masks):
  """Within the block, each DropPath uses masks[its block's name]."""

  def interceptor(next_fun, args, kwargs, context):
    if (
        isinstance(context.module, drop_path.DropPath)
        and context.method_name == 'sample_keep'
    ):
      return jnp.asarray(masks[context.module.parent.name])
    return next_fun(*args, **kwargs)

  return nn.intercept_methods(interceptor)


def train_fn(model):
  """Jitted (variables, images, key, masks) -> (train-mode logits, sown keep
  masks by block); `masks` {block: (N,) bool} forced, or None to draw."""

  def run(variables, images, key, masks):
    forcing = forced_keep(masks) if masks else contextlib.nullcontext()
    with forcing:  # Trace-time, so inside the jitted function.
      logits, state = model.apply(
          variables,
          images,
          train=True,
          mutable=['batch_stats', 'intermediates'],
          rngs={'dropout': key},
      )
    keep = {
        block: v['drop_path']['keep'][0]
        for block, v in state['intermediates'].items()
        if 'drop_path' in v
    }
    return logits, keep

  return jax.jit(run)


@pytest.mark.parametrize('arch', sorted(_json('rates.json')['rates']))
def test_block_rates_equal_timms(arch):
  model = se_flax.create_model(arch)
  for rate, want in _json('rates.json')['rates'][arch].items():
    got = drop_path.block_rates(float(rate), model.stage_sizes)
    assert [r for stage in got for r in stage] == want  # Exact floats.


def test_each_block_gets_its_rate():
  model = se_flax.create_model('resnet18', drop_path_rate=0.1)
  seen = {}

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, resnet.Block):
      seen[context.module.name] = context.module.drop_path_rate
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(
        functools.partial(model.init, train=False),
        jax.random.key(0),
        jnp.zeros((1, 32, 32, 3)),
    )
  want = _json('rates.json')['rates']['resnet18']['0.1']
  assert [seen[k] for k in sorted(seen)] == want


# float32 batch-norm statistics and convs in two libraries: ~1e-6 of the
# logits' scale; a flipped mask or rate changes them by >1e-2 (below).
ATOL = 2e-5


@pytest.mark.parametrize('rules', layers.LAYER_RULES)
def test_train_logits_equal_timms_with_its_masks(rules):
  meta, arrays, variables = _tiny()
  masks = {b: arrays[f'keep/{b}'] for b in meta['blocks']}
  model = se_flax.create_model(
      meta['name'],
      num_classes=meta['num_classes'],
      drop_path_rate=meta['rate'],
  )
  images, key = arrays['images'], jax.random.key(0)
  with layers.layer_rules(rules):
    run = train_fn(model)
    logits, keep = run(variables, images, key, masks)
  assert sorted(keep) == meta['blocks']  # One DropPath per block with p > 0.
  for block, mask in masks.items():
    np.testing.assert_array_equal(keep[block], mask)
  want = arrays['logits']
  err = np.abs(np.asarray(logits) - want).max()
  assert err <= ATOL, (err, np.abs(want).max())
  if rules == 'off':
    return
  # The test can fail: one sample's mask flipped, or all kept (the same
  # trace; the rates are checked exactly above).
  block = meta['blocks'][-1]
  flipped = dict(masks, **{block: masks[block] ^ (np.arange(8) == 0)})
  kept = {b: np.ones_like(m) for b, m in masks.items()}
  for other in (
      run(variables, images, key, flipped)[0],
      run(variables, images, key, kept)[0],
  ):
    assert np.abs(np.asarray(other) - want).max() > 100 * ATOL


def _jaxpr(model, variables, images, **kwargs):
  return str(
      jax.make_jaxpr(functools.partial(model.apply, **kwargs))(
          variables, images
      )
  )


def test_eval_and_rate_zero_unchanged():
  """Eval at any rate, and training at rate 0, trace to the computation of
  the network without stochastic depth (so golden logits cannot move)."""
  meta, arrays, variables = _tiny()
  images = arrays['images'][:2]
  plain = se_flax.create_model(meta['name'], num_classes=meta['num_classes'])
  dropping = plain.clone(drop_path_rate=meta['rate'])
  assert plain.drop_path_rate == 0.0  # The default.
  assert _jaxpr(dropping, variables, images, train=False) == _jaxpr(
      plain, variables, images, train=False
  )
  train = dict(train=True, mutable=['batch_stats', 'intermediates'])
  plain_train = _jaxpr(plain, variables, images, **train)
  assert 'random' not in plain_train and 'threefry' not in plain_train
  _, state = jax.eval_shape(
      functools.partial(plain.apply, **train), variables, images
  )
  assert not any('drop_path' in v for v in state['intermediates'].values())
  # A rate in training needs the 'dropout' stream (what the train step
  # passes), and draws from it.
  with pytest.raises(Exception, match='dropout'):
    _jaxpr(dropping, variables, images, **train)
  dropping_train = _jaxpr(
      dropping, variables, images, rngs={'dropout': jax.random.key(0)}, **train
  )
  assert 'random_bits' in dropping_train


def test_draws_follow_the_key():
  meta, arrays, variables = _tiny()
  model = se_flax.create_model(
      meta['name'], num_classes=meta['num_classes'], drop_path_rate=0.5
  )
  run = train_fn(model)
  images = arrays['images']
  a_logits, a = run(variables, images, jax.random.key(1), None)
  b_logits, b = run(variables, images, jax.random.key(1), None)
  _, c = run(variables, images, jax.random.key(2), None)
  np.testing.assert_array_equal(a_logits, b_logits)
  assert all(np.array_equal(a[k], b[k]) for k in a)
  assert not all(np.array_equal(a[k], c[k]) for k in a)
  # Blocks draw independently (Flax folds the module path into the key).
  masks = [np.asarray(a[k]) for k in sorted(a)]
  assert not all(np.array_equal(masks[0], m) for m in masks[1:])


@pytest.mark.parametrize('rate', [0.05, 0.3, 0.7])
def test_drop_fraction_and_mean(rate):
  n = 40_000
  x = jnp.ones((n, 2, 3, 4))
  layer = drop_path.DropPath(rate)
  y = np.asarray(
      layer.apply(
          {}, x, deterministic=False, rngs={'dropout': jax.random.key(3)}
      )
  )
  per_sample = y.reshape(n, -1)
  # Whole samples: each all 0 or all 1 / (1 - p).
  assert np.all(per_sample == per_sample[:, :1])
  np.testing.assert_allclose(
      np.unique(per_sample), [0, np.float32(1) / np.float32(1 - rate)]
  )
  dropped = np.mean(per_sample[:, 0] == 0)
  sigma = np.sqrt(rate * (1 - rate) / n)
  assert abs(dropped - rate) < 5 * sigma, (dropped, rate)
  # E[y] = x: the mean over samples within 5 standard errors of 1.
  se = np.sqrt(rate / (1 - rate) / n)
  assert abs(per_sample.mean() - 1) < 5 * se
  # Deterministic: the input, unchanged.
  assert layer.apply({}, x, deterministic=True) is x


def test_keep_dtype_and_scale():
  keep = jnp.array([True, False, True])
  x = jnp.full((3, 2, 2, 5), 3.0, jnp.bfloat16)
  y = drop_path.drop_path(x, keep, 0.2)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_array_equal(
      np.asarray(y[:, 0, 0, 0], np.float32),
      np.asarray(
          jnp.array([3.0, 0.0, 3.0], jnp.bfloat16)
          * (jnp.bfloat16(1) / jnp.bfloat16(0.8))
      ),
  )


@pytest.mark.parametrize('rate', [-0.1, 1.0, 1.5, '0.1', True])
def test_bad_rate_is_refused(rate):
  with pytest.raises(ValueError, match=r'drop_path_rate must be in \[0, 1\)'):
    se_flax.create_model('seresnet50', drop_path_rate=rate)


@pytest.mark.parametrize(
    'name', ['vgg16_bn', 'mobilenetv1_100', 'inception_resnet_v2']
)
def test_other_families_refuse_a_rate(name):
  with pytest.raises(ValueError, match=f'{name}: drop_path_rate=0.1.*ResNet'):
    se_flax.create_model(name, drop_path_rate=0.1)
  # Rate 0 is no stochastic depth: accepted (a config may always pass it).
  assert not hasattr(
      se_flax.create_model(name, drop_path_rate=0.0), 'drop_path_rate'
  )
