"""TF SavedModel through jax2tf native serialization.

The SavedModel holds a `tf.Module` with one `tf.function` whose body is a
single `XlaCallModule` op: the same StableHLO `jax.export` makes (lowered
for 'cpu', 'cuda' and 'tpu'). The weights of a `serving.ServingFunction`
are the module's tf.Variables, passed to that op as arguments (jax2tf's
pattern for large models: as graph constants a VGG-16's weights make the
reload run out of memory); any other callable's are constants. Its signature
`serving_default` takes `images` ((batch, H, W, 3) float32, or uint8 with
the preprocessing inside; batch None when dynamic) and returns a dict with
one output named `output_name` ('logits' or 'probabilities' from
`se_flax.export.export`).

Why jax2tf rather than orbax-export: orbax-export wraps the same jax2tf
conversion (plus a checkpoint of the weights as tf.Variables), but it is
not installed and would need a pin next to orbax-checkpoint 0.12.8;
jax2tf ships with jax. Native serialization is jax2tf's only mode in this
jax: the old TF-op lowering (`enable_xla=False`) is gone, so the graph
runs wherever TF runs XLA (TF Serving, TF's Python and C++ runtimes), not
in TFLite or TF.js.
"""

import functools
import logging
import os
from typing import Callable

import numpy as np

from se_flax.export import spec as spec_lib
from se_flax.export import stablehlo

INPUT_NAME = 'images'
SIGNATURE = 'serving_default'


def _polymorphic_shape(spec: spec_lib.InputSpec) -> str:
  return '(' + ', '.join(map(str, spec.shape('b'))) + ')'


def save(
    fn: Callable,
    spec: spec_lib.InputSpec,
    path: str,
    *,
    output_name: str = 'outputs',
) -> None:
  """Writes a SavedModel directory at `path` (which must not exist)."""
  # TensorFlow only here: the other formats and se_flax work without it.
  import tensorflow as tf
  from jax.experimental import jax2tf

  if os.path.exists(path):
    raise FileExistsError(f'{path} exists; expected a new directory path')
  signature = tf.TensorSpec(
      (spec.batch, spec.height, spec.width, 3),
      tf.dtypes.as_dtype(spec.dtype),
      name=INPUT_NAME,
  )
  convert = functools.partial(
      jax2tf.convert,
      with_gradient=False,
      native_serialization_platforms=stablehlo.PLATFORMS,
  )
  module = tf.Module()
  weights = getattr(fn, 'variables', None)
  if weights is None:
    call = convert(fn, polymorphic_shapes=[_polymorphic_shape(spec)])
  else:
    module.weights = tf.nest.map_structure(tf.Variable, weights)
    apply = convert(
        fn.apply, polymorphic_shapes=[None, _polymorphic_shape(spec)]
    )
    call = lambda images: apply(module.weights, images)
  module.serve = tf.function(
      lambda images: {output_name: call(images)},
      input_signature=[signature],
      autograph=False,
  )
  # TF's save marks absl's flags parsed, which sets the process's 'absl'
  # logger to WARNING (its --verbosity default): put the level back, so a
  # training run or notebook keeps its INFO logs after an export.
  absl_logger = logging.getLogger('absl')
  level = absl_logger.level
  try:
    tf.saved_model.save(
        module,
        path,
        signatures={SIGNATURE: module.serve.get_concrete_function()},
    )
  finally:
    absl_logger.setLevel(level)


def load(path: str) -> Callable[[np.ndarray], np.ndarray]:
  """`serving_default` of the SavedModel at `path`: numpy in, numpy out."""
  # TensorFlow only here: the other formats and se_flax work without it.
  import tensorflow as tf

  loaded = tf.saved_model.load(path)
  serve = loaded.signatures[SIGNATURE]
  (name,) = serve.structured_outputs

  def call(images: np.ndarray) -> np.ndarray:
    return serve(**{INPUT_NAME: tf.constant(images)})[name].numpy()

  call.saved_model = loaded  # A signature must not outlive its object.
  return call
