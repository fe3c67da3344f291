"""Writes an export and reloads it through its format's own runtime.

Writing goes through `se_flax.export.<format>.save(fn, spec, path)`; the
reload is what a server runs, not the export's numpy round-trip `load`:
StableHLO deserialized by `jax.export`, the SavedModel's
'serving_default' signature, an onnxruntime session with tuned options.
"""

import glob
import os


def save(fmt: str, fn, batch: int, image_size: int, path: str) -> None:
  """Exports `fn` (float32 NHWC images -> logits) at a fixed `batch`."""
  from se_flax.export import format_module
  from se_flax.export.spec import InputSpec

  spec = InputSpec(batch, image_size, image_size, 'float32')
  format_module(fmt).save(fn, spec, path)


def _single_file(path: str, suffixes) -> str:
  """`path` itself, or the one file under it ending in one of `suffixes`."""
  if os.path.isfile(path):
    return path
  found = [
      f
      for s in suffixes
      for f in glob.glob(os.path.join(path, '**', '*' + s), recursive=True)
  ]
  if len(found) != 1:
    raise FileNotFoundError(
        f'{path}: expected one {"/".join(suffixes)} file, found {found}'
    )
  return found[0]


def load_stablehlo(path: str):
  """The `jax.export.Exported` serialized at `path` (a file or its folder)."""
  from jax import export

  with open(
      _single_file(path, ('.bin', '.stablehlo', '.jax_exported')), 'rb'
  ) as f:
    return export.deserialize(bytearray(f.read()))


def pin_tf_threads(threads: int) -> None:
  """`threads` intra-op threads for TF, inter-op 1 (one call at a time, as
  the other runtimes); before TF runs its first op."""
  import tensorflow as tf  # The SavedModel format's runtime is TF itself.

  tf.config.threading.set_intra_op_parallelism_threads(threads)
  tf.config.threading.set_inter_op_parallelism_threads(1)


def load_savedmodel(path: str):
  """The 'serving_default' signature of the SavedModel at `path`."""
  import tensorflow as tf  # The SavedModel format's runtime is TF itself.

  return tf.saved_model.load(path).signatures['serving_default']


def onnx_session(path: str, threads: int):
  """An onnxruntime CPU session tuned for one request at a time: every
  graph optimisation, `threads` intra-op threads, sequential execution
  (a CNN's graph is a chain; parallel execution only adds hand-offs)."""
  import onnxruntime as ort

  options = ort.SessionOptions()
  options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
  options.intra_op_num_threads = threads
  options.inter_op_num_threads = 1
  options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
  return ort.InferenceSession(
      _single_file(path, ('.onnx',)),
      options,
      providers=['CPUExecutionProvider'],
  )
