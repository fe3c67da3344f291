"""Feature extraction: timm's `features_only` maps, pre-logits and head.

The fixtures (tools/make_feature_fixtures.py, torch + timm) hold timm's
float64 feature maps, pooled pre-logits and logits for the golden
fixtures' seeded weights, and timm's `feature_info`; the weights and
images are rebuilt here from the seed.
"""

import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import se_flax
from se_flax import convert, testing
from se_flax.models import feature_info, inception, mobilenet, resnet, vgg

FIXTURES = pathlib.Path(__file__).parent / 'fixtures' / 'features'
NAMES = sorted(p.stem for p in FIXTURES.glob('*.json'))
# By default one size per key layout (48: the Caffe ceil-mode pool pads,
# 24 -> 12; 33: odd grids, 17 -> 9 padded); the other sizes, the Caffe
# bottleneck (33: 17 -> 8 in ceil mode) and the 115M-weight SENet-154s
# (~10 s each) under -m slow.
DEFAULT_CASES = {('seresnet18', 33), ('legacy_seresnet18', 48)}
RTOL = 1e-4  # Of each map's max |value|.


def _load(name):
  meta = json.loads((FIXTURES / f'{name}.json').read_text())
  return meta, np.load(FIXTURES / f'{name}.npz')


def _close(actual, expected):
  scale = np.abs(expected).max()
  return np.abs(np.asarray(actual) - expected).max() <= RTOL * scale


def _cases():
  for name in NAMES:
    meta = json.loads((FIXTURES / f'{name}.json').read_text())
    for size in meta['input_sizes']:
      slow = (name, size) not in DEFAULT_CASES
      yield pytest.param(name, size, marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize('name,size', list(_cases()))
def test_matches_timm_features_only(name, size):
  meta, reference = _load(name)
  state = testing.random_state_dict(meta['keys'], meta['seed'])
  assert testing.state_dict_fingerprint(state) == meta['weights_fingerprint']
  variables = convert.from_timm(state, name)
  model = se_flax.create_model(name)
  assert feature_info(name) == meta['feature_info']
  assert meta['out_indices'] == list(range(len(meta['feature_info'])))
  images = testing.random_images(meta['seed'], meta['batch'], size)
  images = images.transpose(0, 2, 3, 1)
  # Eager: compiling these nets costs more than running them once.
  with jax.disable_jit():
    maps = model.apply(variables, images, train=False, method='features')
    pooled = model.apply(variables, images, train=False, method='pre_logits')
    logits = model.apply(variables, pooled, train=False, method='head')
  assert len(maps) == len(meta['feature_info'])
  for i, m in enumerate(maps):
    expected = reference[f'features_{size}_{i}'].transpose(0, 2, 3, 1)
    assert m.shape == expected.shape, i
    assert _close(m, expected), i
  assert _close(pooled, reference[f'pre_logits_{size}'])
  assert _close(logits, reference[f'logits_{size}'])


@pytest.fixture(scope='module')
def tiny():
  """seresnet_tiny with timm-style random weights and BN statistics."""
  name = 'seresnet_tiny'
  keys = [
      (key, leaf.torch_shape, 'float32')
      for key, leaf in convert.timm_layout(name, num_classes=10).items()
  ]
  variables = convert.from_timm(testing.random_state_dict(keys, 0), name)
  model = se_flax.create_model(name, num_classes=10, drop_rate=0.5)
  x = jax.random.normal(jax.random.key(1), (2, 40, 40, 3))
  return model, variables, x


def test_head_of_pre_logits_is_the_network(tiny):
  model, variables, x = tiny
  rngs = {'dropout': jax.random.key(2)}

  @jax.disable_jit()
  def run(method, inputs, train, rngs=rngs):
    return model.apply(
        variables,
        inputs,
        train=train,
        method=method,
        rngs=rngs,
        mutable=['batch_stats'] if train else False,
    )

  np.testing.assert_array_equal(
      run('head', run('pre_logits', x, False), False),
      run('__call__', x, False),
  )
  # Training: the same dropout mask, and the same BN statistics updates.
  pooled, pooled_stats = run('pre_logits', x, True)
  logits, _ = run('head', pooled, True)
  expected, stats = run('__call__', x, True)
  np.testing.assert_array_equal(logits, expected)
  other_mask, _ = run('head', pooled, True, {'dropout': jax.random.key(3)})
  assert not np.allclose(other_mask, logits)  # `head` owns the dropout.
  jax.tree.map(np.testing.assert_array_equal, pooled_stats, stats)
  maps, map_stats = run('features', x, True)
  jax.tree.map(np.testing.assert_array_equal, map_stats, stats)
  np.testing.assert_array_equal(pooled, jnp.mean(maps[-1], axis=(1, 2)))
  eval_maps = run('features', x, False)
  assert not np.allclose(eval_maps[-1], maps[-1])


def test_maps_follow_feature_info_under_jit(tiny):
  model, variables, x = tiny
  info = model.feature_info()
  assert info == feature_info('seresnet_tiny')
  assert [d['module'] for d in info] == ['act1'] + [
      f'layer{i}' for i in range(1, 5)
  ]
  features = jax.jit(
      lambda v, x: model.apply(v, x, train=False, method='features')
  )
  maps = features(variables, x)
  # 40 px: 20, 10, 5, 3, 2 (the padded convs and pool round up).
  assert [m.shape for m in maps] == [
      (2, -(-40 // d['reduction']), -(-40 // d['reduction']), d['num_chs'])
      for d in info
  ]
  with jax.disable_jit():
    eager = model.apply(variables, x, train=False, method='features')
  for m, e in zip(maps, eager):
    np.testing.assert_allclose(m, e, rtol=1e-5, atol=1e-5)
  picked = jax.eval_shape(
      lambda v, x: model.apply(
          v, x, train=False, method='features', out_indices=(1, -1)
      ),
      variables,
      x,
  )
  assert [m.shape for m in picked] == [maps[1].shape, maps[4].shape]


@pytest.mark.parametrize(
    'out_indices,error',
    [
        ((5,), ValueError),
        ((2, 1), ValueError),
        ((), ValueError),
        (3, TypeError),
    ],
)
def test_bad_out_indices_fail_clearly(tiny, out_indices, error):
  model, variables, x = tiny
  with pytest.raises(error, match='out_indices'):
    jax.eval_shape(
        lambda v: model.apply(
            v, x, train=False, method='features', out_indices=out_indices
        ),
        variables,
    )


def test_bad_parts_fail_clearly(tiny):
  model, variables, x = tiny
  with pytest.raises(ValueError, match='part must be one of'):
    model.apply(variables, x, train=False, part='stem')
  with pytest.raises(ValueError, match=r'\(N, C\) pre-logits'):
    model.apply(variables, x, train=False, method='head')
  with pytest.raises(NotImplementedError, match='ShuffleNetV1'):
    feature_info('shufflenet_g3')
  with pytest.raises(TypeError, match='model name or an se_flax network'):
    feature_info(nn.Dense(3))


def test_a_parent_module_reuses_the_network_and_its_tree(tiny):
  model, variables, x = tiny

  class Probe(nn.Module):
    backbone: nn.Module

    @nn.compact
    def __call__(self, x, *, train):
      maps = self.backbone.features(x, train=train, out_indices=(2, 3, 4))
      pooled = self.backbone.pre_logits(x, train=train)
      return maps, self.backbone.head(pooled, train=train)

  probe = Probe(backbone=model)
  mine = jax.eval_shape(lambda: probe.init(jax.random.key(0), x, train=False))
  assert jax.tree.structure(mine['params']['backbone']) == jax.tree.structure(
      variables['params']
  )
  wrapped = {k: {'backbone': v} for k, v in variables.items()}
  with jax.disable_jit():
    maps, logits = probe.apply(wrapped, x, train=False)
    expected = model.apply(variables, x, train=False, method='features')
    direct = model.apply(variables, x, train=False)
  for m, e in zip(maps, expected[2:], strict=True):
    np.testing.assert_array_equal(m, e)
  np.testing.assert_array_equal(logits, direct)


def test_bf16_features_skip_the_head():
  model = se_flax.create_model(
      'resnet_tiny', num_classes=10, dtype=jnp.bfloat16
  )
  x = jnp.ones((1, 32, 32, 3))
  shapes = jax.eval_shape(
      lambda: model.init_with_output(
          jax.random.key(0), x, train=False, method='features'
      )
  )
  maps, variables = shapes
  assert {m.dtype for m in maps} == {jnp.dtype(jnp.bfloat16)}
  assert 'fc' not in variables['params']  # `features` never builds the head.


# Tracing the deep ones costs ~1 s each; by default one of each stem and
# key layout (the fixtures above check seresnet18 and its Caffe twin), and
# the other timm-backed families.
DEFAULT_INFO = {
    'seresnet50',
    'legacy_senet154',
    'mobilenetv1_100',
    'vgg16_bn',
    'inception_resnet_v2',
}
FEATURE_NAMES = sorted(
    list(resnet.CONFIGS)
    + list(vgg.CONFIGS)
    + list(mobilenet.CONFIGS)
    + list(inception.INCEPTION_RESNET_V2_CONFIGS)
)


@pytest.mark.parametrize(
    'name',
    [
        n if n in DEFAULT_INFO else pytest.param(n, marks=pytest.mark.slow)
        for n in FEATURE_NAMES
    ],
)
def test_feature_info_matches_the_maps(name):
  model = se_flax.create_model(name)
  info = feature_info(model)
  # Inception-ResNet-v2's VALID convs need >= 75 px and shrink the grids
  # below H / reduction (299 px: 147, 71, 35, 17, 8).
  size = 139 if 'inception' in name else 64
  maps, _ = jax.eval_shape(
      lambda: model.init_with_output(
          jax.random.key(0),
          jnp.ones((1, size, size, 3)),
          train=False,
          method='features',
      )
  )
  assert [m.shape[-1] for m in maps] == [d['num_chs'] for d in info]
  if 'inception' in name:
    assert [m.shape[1] for m in maps] == [67, 31, 15, 7, 3]
  else:
    assert [m.shape[1:3] for m in maps] == [
        (size // d['reduction'],) * 2 for d in info
    ]
  if name in resnet.CONFIGS:
    caffe = model.stem_pool == 'ceil'
    assert info[0]['module'] == ('layer0' if caffe else 'act1')
