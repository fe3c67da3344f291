"""ONNX export (jax2onnx) reloaded in onnxruntime equals se_flax's outputs."""

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from se_flax import layers
from se_flax.export.spec import ExportError
from se_flax.export.spec import InputSpec
from se_flax.layers import pooling
from se_flax.models import registry

pytest.importorskip('jax2onnx')
pytest.importorskip('onnxruntime')

from se_flax.export import onnx as onnx_export  # pylint: disable=g-import-not-at-top

# (network, image size) at the smallest size each takes, for the default run.
SMALL = [('seresnet_tiny', 64)]
# A full-size network (the slow case): (network, image size).
FULL = [('seresnet50', 224)]
# Every family at a reduced size; conversions over ~8 s here are slow.
REDUCED = [
    ('legacy_seresnet18', 96),
    ('legacy_seresnext26_32x4d', 96),
    ('bn_inception', 96),
    ('inception_resnet_v2', 96),
    ('senet154', 96),
    ('vgg16_bn', 96),
    ('mobilenetv1_100', 96),
    ('shufflenet_g3', 96),
]
NHWC = ('NHWC', 'HWIO', 'NHWC')
MEAN = np.asarray([0.485, 0.456, 0.406], np.float32)
STD = np.asarray([0.229, 0.224, 0.225], np.float32)


@functools.lru_cache(maxsize=2)  # one init (and jit cache) per network
def _network(name, size):
  """`fn(images) -> logits` of a randomly initialised 10-class network."""
  model = registry.create_model(name, num_classes=10)
  with layers.layer_rules('off'):
    init = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))
    variables = init(jnp.zeros((1, size, size, 3)))
  return lambda x: model.apply(variables, x, train=False)


def _with_preprocessing(fn):
  """uint8 RGB 0-255 in: x / 255, (x - mean) / std, then `fn`."""

  def serve(pixels):
    x = pixels.astype(jnp.float32) / 255.0
    return fn((x - MEAN) / STD)

  return serve


def _reference(fn, x):
  with layers.layer_rules('off'):
    return np.asarray(jax.jit(fn)(x))


def _assert_round_trip(fn, spec, path, batches):
  onnx_export.save(fn, spec, str(path))
  run = onnx_export.load(str(path))
  for batch in batches:
    x = spec.example(batch, seed=batch)
    ref, out = _reference(fn, x), run(x)
    assert out.shape == ref.shape
    scale = np.abs(ref).max()
    assert np.abs(out - ref).max() <= 1e-4 * scale, (batch, spec)


def test_seresnet_tiny_dynamic_and_fixed_batch(tmp_path):
  fn = _network('seresnet_tiny', 64)
  _assert_round_trip(fn, InputSpec(None, 64, 64), tmp_path / 'd.onnx', (1, 3))
  _assert_round_trip(fn, InputSpec(2, 64, 64), tmp_path / 'f.onnx', (2,))
  with pytest.raises(Exception):  # a fixed batch takes only its own size
    onnx_export.load(str(tmp_path / 'f.onnx'))(np.zeros((3, 64, 64, 3)))


def test_seresnet_tiny_uint8_input(tmp_path):
  fn = _with_preprocessing(_network('seresnet_tiny', 64))
  spec = InputSpec(None, 64, 64, 'uint8')
  _assert_round_trip(fn, spec, tmp_path / 'u8.onnx', (2,))


def _pools(x):
  """Every pooling the families use, on one NHWC array, concatenated."""
  ys = [
      pooling.max_pool_ceil(x, 3, 2),  # Caffe: -inf pads bottom/right only
      pooling.max_pool_padded(x, 3, 2, 1),
      pooling.max_pool_padded(x, 2, 2, 0),
      pooling.avg_pool(x, 3, 1, 1, count_include_pad=True),
      pooling.avg_pool(x, 3, 1, 1, count_include_pad=False),
  ]
  return jnp.concatenate([y.reshape(y.shape[0], -1) for y in ys], axis=1)


@pytest.mark.parametrize('size', [8, 9])  # even/odd: ceil mode pads or not
def test_nhwc_pools_match(tmp_path, size):
  spec = InputSpec(None, size, size)
  _assert_round_trip(_pools, spec, tmp_path / 'pool.onnx', (1, 3))


def test_pools_and_1x1_convs_leave_no_transposes_between(tmp_path):
  """conv -> 1x1 matmul -> pool: onnxruntime cancels the Transpose pairs."""
  k1 = jnp.asarray(np.random.default_rng(0).standard_normal((3, 3, 3, 8)))
  k2 = jnp.asarray(np.random.default_rng(1).standard_normal((8, 16)))

  def fn(x):
    y = jax.lax.conv_general_dilated(
        x, k1, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC
    )
    y = jax.nn.relu(y) @ k2
    return pooling.max_pool_ceil(y, 3, 2).mean(axis=(1, 2))

  path = tmp_path / 'chain.onnx'
  _assert_round_trip(fn, InputSpec(1, 16, 16), path, (1,))
  optimised = str(tmp_path / 'opt.onnx')
  onnx_export.session(str(path), optimised)
  ops = onnx_export.op_counts(optimised)
  assert ops['Einsum'] == 0 and ops['MatMul'] == 0
  assert ops['Transpose'] <= 1  # the input's NHWC -> NCHW only


def test_unsupported_primitive_is_refused_by_name(tmp_path):
  prim = jax.extend.core.Primitive('se_flax_test_op')
  prim.def_abstract_eval(lambda x: x)

  def fn(x):
    with jax.named_scope('head'):
      return prim.bind(x * 2.0)

  with pytest.raises(ExportError, match="'se_flax_test_op'.*head"):
    onnx_export.save(fn, InputSpec(1, 8, 8), str(tmp_path / 'x.onnx'))
  assert not (tmp_path / 'x.onnx').exists()


def test_pool_over_channels_is_refused(tmp_path):
  def fn(x):
    return jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, 2, 2, 2), (1, 1, 1, 1), 'VALID'
    )

  with pytest.raises(ExportError, match='reduce_window_max'):
    onnx_export.save(fn, InputSpec(1, 8, 8), str(tmp_path / 'x.onnx'))


@pytest.mark.slow
@pytest.mark.parametrize('name,size', REDUCED)
def test_family_round_trip_reduced_size(tmp_path, name, size):
  spec = InputSpec(None, size, size)
  _assert_round_trip(_network(name, size), spec, tmp_path / 'm.onnx', (1, 3))


@pytest.mark.slow
@pytest.mark.parametrize('name,size', FULL)
def test_family_round_trip_full_size(tmp_path, name, size):
  fn = _network(name, size)
  _assert_round_trip(
      fn, InputSpec(None, size, size), tmp_path / 'd.onnx', (1, 2)
  )
  _assert_round_trip(fn, InputSpec(1, size, size), tmp_path / 'f.onnx', (1,))


def test_missing_packages_say_what_to_install(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, 'jax2onnx', None)  # import fails
  with pytest.raises(ImportError, match=r"pip install 'se_flax\[export\]'"):
    onnx_export.save(lambda x: x, InputSpec(1, 8, 8), str(tmp_path / 'x'))
