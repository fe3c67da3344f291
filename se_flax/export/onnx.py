"""ONNX export through jax2onnx, reloaded with onnxruntime.

`save(fn, spec, path)` converts `fn(images NHWC) -> outputs`, traced with
the plain layers, to an ONNX model (opset 23) whose input `images` has the
spec's shape (a symbolic batch `b` when `spec.batch` is None) and dtype.
NHWC pooling and 1x1 channel matmuls are lowered by `onnx_layout` as
NCHW MaxPool / AveragePool / Conv; convolutions are jax2onnx's NCHW `Conv` between
Transposes, which onnxruntime's layout optimiser removes between
neighbours. A primitive jax2onnx has no lowering for is refused before
conversion with an `ExportError` naming it and the layer.

jax2onnx, onnx and onnxruntime are optional (`pip install
'se_flax[export]'`); they are imported only when a function here runs.
"""

import collections
import contextlib
from typing import Callable, Iterator, Optional

import jax
import numpy as np

from se_flax import layers
from se_flax.export.spec import ExportError
from se_flax.export.spec import InputSpec

INPUT_NAME = 'images'
OUTPUT_NAME = 'outputs'
OPSET = 23
_INSTALL = (
    'the ONNX export needs jax2onnx, onnx and onnxruntime: pip install'
    " 'se_flax[export]' && pip install --no-deps jax2onnx==0.17.1 (its"
    ' metadata caps orbax-checkpoint below the version se_flax uses)'
)
# Bookkeeping primitives that jax2onnx inlines rather than lowers.
_INLINED = frozenset(
    {
        'pjit',
        'jit',
        'closed_call',
        'core_call',
        'custom_jvp_call',
        'custom_vjp_call',
        'custom_vjp_call_jaxpr',
        'remat',
        'checkpoint',
    }
)


def _jax2onnx():
  try:
    import jax2onnx  # pylint: disable=g-import-not-at-top
    from jax2onnx.plugins import plugin_system  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(_INSTALL) from e
  return jax2onnx, plugin_system


def _onnxruntime():
  try:
    import onnxruntime  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(_INSTALL) from e
  return onnxruntime


def input_struct(spec: InputSpec) -> jax.ShapeDtypeStruct:
  """The traced input: `(b|batch, H, W, 3)` of the spec's dtype."""
  if spec.batch is None:
    shape = jax.export.symbolic_shape(f'b, {spec.height}, {spec.width}, 3')
  else:
    shape = spec.shape()
  return jax.ShapeDtypeStruct(shape, np.dtype(spec.dtype))


def _subjaxprs(eqn) -> Iterator:
  for param in eqn.params.values():
    for item in param if isinstance(param, (tuple, list)) else (param,):
      if hasattr(item, 'eqns'):
        yield item
      elif hasattr(getattr(item, 'jaxpr', None), 'eqns'):
        yield item.jaxpr


def _walk(jaxpr) -> Iterator:
  """Every equation of `jaxpr` and of the jaxprs nested in it."""
  for eqn in jaxpr.eqns:
    yield eqn
    for sub in _subjaxprs(eqn):
      yield from _walk(sub)


def _layer(eqn) -> str:
  stack = str(eqn.source_info.name_stack)
  return f' in layer {stack!r}' if stack else ''


def check_primitives(fn: Callable, spec: InputSpec, lowered: set) -> None:
  """Raises `ExportError` for the first primitive not in `lowered`.

  The error names the primitive and the Flax layer (the JAX name stack)
  it comes from.
  """
  with layers.layer_rules('off'):
    closed = jax.make_jaxpr(fn)(input_struct(spec))
  for eqn in _walk(closed.jaxpr):
    name = eqn.primitive.name
    if name not in lowered and name not in _INLINED:
      raise ExportError(
          f'primitive {name!r}{_layer(eqn)} has no ONNX lowering in jax2onnx'
      )


# jax2onnx's Flax pooling plugins patch `nn.avg_pool` & co. while tracing and
# take string paddings only; without them the pools trace to `reduce_window`.
_HIDDEN_PLUGIN_MODULES = tuple(
    f'jax2onnx.plugins.flax.linen.{name}'
    for name in ('pool', 'avg_pool', 'max_pool', 'min_pool')
)


@contextlib.contextmanager
def _nhwc_lowerings(plugin_system) -> Iterator[None]:
  """jax2onnx's registry with `onnx_layout`'s lowerings, for one conversion."""
  from se_flax.export import onnx_layout  # pylint: disable=g-import-not-at-top

  registry = plugin_system.PLUGIN_REGISTRY
  saved = dict(registry)
  for name, plugin in saved.items():
    if type(plugin).__module__ in _HIDDEN_PLUGIN_MODULES:
      del registry[name]
  registry.update(onnx_layout.plugins(saved))
  try:
    yield
  finally:
    registry.clear()
    registry.update(saved)


def save(fn: Callable, spec: InputSpec, path: str) -> None:
  """Writes `fn` as an ONNX model file at `path`.

  Args:
    fn: a pure function of one `(batch, H, W, 3)` NHWC array (float32
      preprocessed images or uint8 pixels, per `spec.dtype`) returning one
      array; its parameters are baked in as initializers.
    spec: the input shape and dtype; `spec.batch=None` exports a symbolic
      batch dimension.
    path: the `.onnx` file to write.

  Raises:
    ExportError: `fn` uses a primitive (or a pooling option) that the
      export cannot express; the message names it.
  """
  jax2onnx, plugin_system = _jax2onnx()
  plugin_system.import_all_plugins()
  with _nhwc_lowerings(plugin_system):
    check_primitives(fn, spec, set(plugin_system.PLUGIN_REGISTRY))
    with layers.layer_rules('off'):
      model = jax2onnx.to_onnx(
          fn,
          [input_struct(spec)],
          model_name='se_flax',
          opset=OPSET,
          input_names=[INPUT_NAME],
          output_names=[OUTPUT_NAME],
      )
  # jax2onnx annotates the outputs of its NCHW convs with NHWC shapes;
  # onnxruntime infers them itself, so drop the optional, wrong ones (and
  # its 'Error merging shape info' warnings).
  del model.graph.value_info[:]
  with open(path, 'wb') as f:
    f.write(model.SerializeToString())


def session(path: str, optimized_path: Optional[str] = None, threads: int = 0):
  """An onnxruntime CPU `InferenceSession` with every graph optimisation.

  `optimized_path` also writes the optimised graph there (to inspect the
  Transposes left); `threads=0` lets onnxruntime choose.
  """
  ort = _onnxruntime()
  options = ort.SessionOptions()
  options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
  options.intra_op_num_threads = threads
  if optimized_path:
    options.optimized_model_filepath = optimized_path
  return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def load(path: str) -> Callable[[np.ndarray], np.ndarray]:
  """The saved model as `images (batch, H, W, 3) -> outputs` on numpy."""
  sess = session(path)
  name = sess.get_inputs()[0].name

  def run(images: np.ndarray) -> np.ndarray:
    return sess.run(None, {name: np.asarray(images)})[0]

  return run


def op_counts(path: str) -> collections.Counter:
  """Node count per op type of an ONNX file (e.g. an optimised graph)."""
  import onnx  # pylint: disable=g-import-not-at-top

  model = onnx.load(path)
  return collections.Counter(node.op_type for node in model.graph.node)
