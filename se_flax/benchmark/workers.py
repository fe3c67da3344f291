"""Worker processes the benchmark drives round by round.

Some variants must not share the benchmark's process: timm (torch's
threads and heap slow XLA's steps when they share one; PERFORMANCE.md)
and se_flax without `runtime.configure` (the allocator and XLA_FLAGS are
process-wide). Each runs in a worker that speaks one JSON object per
line: {'ready': info} once built and warmed up, then for each command
{'kind' or 'index', 'steps'} the answer {'wall_s', 'cpu_s', 'sys_s',
'faults'} for those steps, until EOF on stdin.
"""

import json
import os
import subprocess
import sys
from typing import List, Optional, Sequence

import jax.numpy as jnp

from se_flax.benchmark.timing import Variant

TORCH_WORKER_SCRIPT = os.path.join(os.path.dirname(__file__), 'torch_worker.py')
# Round-trip limit for one command to a worker.
_TIMEOUT_S = 3600


class WorkerProcess:
  """A child process speaking the JSON-lines protocol above."""

  def __init__(
      self, argv: Sequence[str], name: str, env: Optional[dict] = None
  ):
    self.name = name
    self.proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    first = self._read()
    if 'ready' not in first:
      self.close()
      raise RuntimeError(first.get('error', str(first)))
    self.info = first['ready']

  def _read(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      code = self.proc.wait(timeout=_TIMEOUT_S)
      raise RuntimeError(f'worker for {self.name} exited ({code})')
    return json.loads(line)

  def request(self, **command) -> dict:
    self.proc.stdin.write(json.dumps(command) + '\n')
    self.proc.stdin.flush()
    return self._read()

  def close(self):
    if self.proc.poll() is None:
      self.proc.stdin.close()
      try:
        self.proc.wait(timeout=60)
      except subprocess.TimeoutExpired:
        self.proc.kill()


def _usage_of(answer: dict) -> dict:
  return {k: answer[k] for k in ('cpu_s', 'sys_s', 'faults')}


def torch_available(python: Optional[str] = None) -> bool:
  """Whether `python` (default: this interpreter) can import torch, timm."""
  try:
    done = subprocess.run(
        [python or sys.executable, '-c', 'import torch, timm'],
        capture_output=True,
        timeout=300,
    )
  except (OSError, subprocess.TimeoutExpired):
    return False
  return done.returncode == 0


def torch_worker(
    timm_name: str,
    batch: int,
    image_size: int,
    dtype,
    kinds: Sequence[str] = ('train', 'infer'),
    python: Optional[str] = None,
    compile_model: bool = False,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
) -> WorkerProcess:
  """timm's `timm_name` in a worker: channels_last, the same batch, uint8
  input normalised on the device, the same SGD; bf16/fp16 via autocast."""
  from se_flax.data.config import MEAN_RGB, STDDEV_RGB

  args = dict(
      model=timm_name,
      batch=batch,
      image_size=image_size,
      dtype=jnp.dtype(dtype).name,
      kinds=list(kinds),
      classes=1000,
      mean=list(MEAN_RGB),
      std=list(STDDEV_RGB),
      compile=compile_model,
      lr=lr,
      momentum=momentum,
      weight_decay=weight_decay,
  )
  with open(TORCH_WORKER_SCRIPT) as f:
    script = f.read()  # Run with -c: the package folder stays off sys.path.
  worker = WorkerProcess(
      [python or sys.executable, '-c', script, json.dumps(args)], timm_name
  )
  worker.compiled = compile_model
  return worker


def torch_variants(
    worker: WorkerProcess, label: str, batch: int, flops: Optional[dict] = None
) -> List[Variant]:
  out = []
  for kind, first_s in worker.info['first_s'].items():

    def run(n, kind=kind):
      return _usage_of(worker.request(kind=kind, steps=n))

    out.append(
        Variant(
            label=label,
            framework='torch',
            kind=kind,
            batch=batch,
            run=run,
            path='timm',
            flops_per_image=(flops or {}).get(kind),
            compile_s=first_s if worker.compiled else None,
        )
    )
  return out


# Variant fields a JAX worker reports once, at 'ready'.
_JAX_FIELDS = (
    'label',
    'kind',
    'path',
    'batch',
    'devices',
    'flops_per_image',
    'compile_s',
    'xla_memory',
    'xla_flops_per_image',
    'host_transfers',
    'se_fusion',
)


def untuned_env(added_xla_flags: str) -> dict:
  """This process's environment without what `runtime.configure` added;
  GPU memory is not preallocated, so several workers can share a GPU."""
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE='false')
  flags = env.get('XLA_FLAGS', '').split()
  kept = [f for f in flags if f not in added_xla_flags.split()]
  if kept:
    env['XLA_FLAGS'] = ' '.join(kept)
  else:
    env.pop('XLA_FLAGS', None)
  return env


def jax_worker(spec: dict, env: dict, name: str) -> WorkerProcess:
  """se_flax variants in a worker process: for each `spec['twins']` flag
  (SE on/off), `jax_steps.variants_for` of the rest of `spec`. With
  `spec['tuned']` the worker calls `runtime.configure()` first, as
  `train.py` does; without, its runtime stays as Python starts it."""
  return WorkerProcess(
      [sys.executable, '-m', 'se_flax.benchmark.jax_worker', json.dumps(spec)],
      name,
      env=env,
  )


def jax_worker_variants(worker: WorkerProcess, suffix: str = '') -> List[tuple]:
  """`(role, Variant)` pairs, role 'se' or 'plain', driving the worker."""
  out = []
  for index, fields in enumerate(worker.info['variants']):

    def run(n, index=index):
      return _usage_of(worker.request(index=index, steps=n))

    fields = dict(fields)
    role = fields.pop('role')
    fields.update(label=fields['label'] + suffix, path=fields['path'] + suffix)
    out.append((role, Variant(framework='jax', run=run, **fields)))
  return out


def serve_jax(spec: dict) -> None:
  """The worker's side (`python -m se_flax.benchmark.jax_worker SPEC`)."""
  import time

  from se_flax import runtime

  if spec.pop('tuned'):
    runtime.configure()  # First: before JAX starts.
  from se_flax.benchmark import jax_steps
  from se_flax.benchmark.timing import usage, usage_since

  twins = spec.pop('twins')
  spec['dtype'] = jnp.dtype(spec['dtype'])
  variants, info = [], []
  for se in twins:
    for v in jax_steps.variants_for(se=se, **spec):
      variants.append(v)
      info.append(
          dict(
              {k: getattr(v, k) for k in _JAX_FIELDS},
              role='se' if se else 'plain',
          )
      )
  settings = runtime.current()
  print(
      json.dumps(
          {
              'ready': {
                  'variants': info,
                  'xla_flags': os.environ.get('XLA_FLAGS'),
                  'runtime': settings.describe() if settings else None,
              }
          }
      ),
      flush=True,
  )
  for line in sys.stdin:
    command = json.loads(line)
    before, start = usage(), time.perf_counter()
    variants[command['index']].run(command['steps'])
    wall = time.perf_counter() - start
    print(json.dumps(dict(usage_since(before), wall_s=wall)), flush=True)
