"""One se_flax serving runtime in a worker process (`serving.py` drives it).

    python -m se_flax.benchmark.serving_worker SPEC_JSON

SPEC: {'runtime', 'model', 'batches', 'image_size', 'threads', 'workdir'}.
`runtime` is one of `RUNTIMES`: 'jit_off' / 'jit_auto' (`jax.jit` of the
module's eval apply, traced with layer rules 'off' / 'auto'), 'stablehlo'
(`jax.export.deserialize(...).call` under `jax.jit`), 'savedmodel'
(`tf.saved_model.load(...).signatures['serving_default']`), 'onnx'
(onnxruntime, tuned `SessionOptions`). Exports are written with
`se_flax.export.<format>.save` into `workdir`, then reloaded through the
format's own runtime, as a server would. Inputs: float32 NHWC images
(preprocessed), outputs: (batch, classes) logits. Random weights (key 0):
speed does not depend on them, and every worker builds the same ones.

Protocol (`workers.WorkerProcess`): {'ready': info} once every batch size
is built and called once; then {'index', 'steps'} -> {'wall_s', 'cpu_s',
'sys_s', 'faults'}, until EOF.
"""

import json
import os
import sys
import time
from typing import Callable, Dict

RUNTIMES = ('jit_off', 'jit_auto', 'stablehlo', 'savedmodel', 'onnx')
# The input every worker answers 'probe' on (same seed, same weights), so
# the driver can check that all runtimes compute the same logits.
PROBE_SEED = 1


def pin_threads(threads: int) -> None:
  """Restricts this process to the first `threads` CPUs it may use.

  Called before any framework starts: XLA, TF, onnxruntime and torch size
  their thread pools from the CPUs a process may run on, so the same
  affinity pins them all alike.
  """
  cpus = sorted(os.sched_getaffinity(0))
  if threads < len(cpus):
    os.sched_setaffinity(0, cpus[:threads])


def init_model(model_name: str, image_size: int):
  """`(model, variables)`: `model_name` with random weights (key 0)."""
  import jax
  import jax.numpy as jnp

  from se_flax.models import registry

  model = registry.create_model(model_name)
  x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  init = jax.jit(lambda k: model.init(k, x, train=False))
  return model, init(jax.random.key(0))


def jit_function(model, variables, rules: str):
  """Eval logits as a user's `jax.jit` traces them, under layer rules
  `rules` ('auto' is the default a user gets; 'off' the plain layers)."""
  from se_flax import layers

  def fn(images):
    with layers.layer_rules(rules):
      return model.apply(variables, images, train=False)

  return fn


def _images(batch: int, image_size: int, seed: int = 0):
  import numpy as np

  rng = np.random.default_rng(seed)
  return rng.standard_normal((batch, image_size, image_size, 3), np.float32)


def _jit_runner(fn, images) -> Callable[[int], None]:
  import jax

  compiled = jax.jit(fn).lower(images).compile()
  x = jax.device_put(images)

  def run(n):
    jax.block_until_ready([compiled(x) for _ in range(n)])

  return run, lambda a: jax.device_get(compiled(jax.device_put(a)))


def _stablehlo_runner(path, images):
  from se_flax.benchmark import serving_exports

  # Timed as jit's own: the reloaded module's `call`, compiled once.
  return _jit_runner(serving_exports.load_stablehlo(path).call, images)


def _savedmodel_runner(path, images):
  from se_flax.benchmark import serving_exports

  serve = serving_exports.load_savedmodel(path)
  import tensorflow as tf  # The SavedModel's runtime; loaded just above.

  x = tf.constant(images)

  def call(a):
    (out,) = serve(tf.constant(a)).values()
    return out

  def run(n):
    # Eager TF returns computed tensors: .numpy() only syncs the last one.
    outs = [call(x) for _ in range(n)]
    outs[-1].numpy()

  return run, lambda a: call(a).numpy()


def _onnx_runner(path, images, threads):
  from se_flax.benchmark import serving_exports

  session = serving_exports.onnx_session(path, threads)
  name = session.get_inputs()[0].name

  def run(n):
    for _ in range(n):
      session.run(None, {name: images})

  return run, lambda a: session.run(None, {name: a})[0]


def build_runner(spec: dict, batch: int):
  """`(run, predict)` of `spec['runtime']` at `batch`: `run(n)` does n calls
  and waits; `predict(np_images) -> np logits` (for the probe)."""
  from se_flax.benchmark import serving_exports

  from se_flax.export import serving

  runtime, size = spec['runtime'], spec['image_size']
  images = _images(batch, size)
  model, variables = init_model(spec['model'], size)
  if runtime in ('jit_off', 'jit_auto'):
    rules = runtime[len('jit_') :]
    return _jit_runner(jit_function(model, variables, rules), images)
  # What `python -m se_flax.export` writes (preprocess=False, logits).
  fn = serving.serving_fn(model, variables)
  path = os.path.join(spec['workdir'], f'{runtime}_b{batch}')
  serving_exports.save(runtime, fn, batch, size, path)
  if runtime == 'stablehlo':
    return _stablehlo_runner(path, images)
  if runtime == 'savedmodel':
    return _savedmodel_runner(path, images)
  if runtime == 'onnx':
    return _onnx_runner(path, images, spec['threads'])
  raise ValueError(f'runtime {runtime!r}; expected one of {RUNTIMES}')


def serve(spec: dict) -> None:
  """The worker: builds each batch's runner, reports, answers commands."""
  import numpy as np

  from se_flax import runtime as runtime_lib
  from se_flax.benchmark import serving_exports

  pin_threads(spec['threads'])
  if spec['runtime'] == 'savedmodel':
    # TF fixes its pools at its first op, which the export's save runs.
    serving_exports.pin_tf_threads(spec['threads'])
  else:
    runtime_lib.configure()  # Before JAX starts, as the docs tell users.
  from se_flax.benchmark.timing import usage, usage_since

  runners, info = [], []
  for batch in spec['batches']:
    start = time.perf_counter()
    run, predict = build_runner(spec, batch)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    run(1)
    first_s = time.perf_counter() - start
    probe = predict(_images(batch, spec['image_size'], PROBE_SEED))
    runners.append(run)
    info.append(
        dict(
            batch=batch,
            build_s=build_s,
            first_s=first_s,
            probe=np.asarray(probe, np.float64)[:, :8].tolist(),
            shape=list(np.shape(probe)),
        )
    )
  settings = runtime_lib.current()
  ready = dict(
      variants=info,
      cpus=len(os.sched_getaffinity(0)),
      runtime=settings.describe() if settings else None,
      versions=_versions(spec['runtime']),
  )
  print(json.dumps({'ready': ready}), flush=True)
  for line in sys.stdin:
    command = json.loads(line)
    before, start = usage(), time.perf_counter()
    runners[command['index']](command['steps'])
    wall = time.perf_counter() - start
    print(json.dumps(dict(usage_since(before), wall_s=wall)), flush=True)


def _versions(runtime: str) -> Dict[str, str]:
  import jax

  out = {'jax': jax.__version__}
  if runtime == 'savedmodel':
    import tensorflow as tf  # Only to report the version the worker ran.

    out['tensorflow'] = tf.__version__
  if runtime == 'onnx':
    import onnxruntime

    out['onnxruntime'] = onnxruntime.__version__
  return out


if __name__ == '__main__':
  try:
    serve(json.loads(sys.argv[1]))
  except Exception as e:  # The driver reads the reason from the first line.
    print(json.dumps({'error': f'{type(e).__name__}: {e}'}), flush=True)
    raise
