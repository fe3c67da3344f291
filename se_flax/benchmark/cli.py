"""`python -m se_flax.benchmark`: builds, interleaves, times and reports."""

import argparse
import json
import os
from typing import Dict, List, Optional, Sequence

from se_flax import runtime

DTYPES = {
    'fp32': 'float32',
    'float32': 'float32',
    'bf16': 'bfloat16',
    'bfloat16': 'bfloat16',
    'fp16': 'float16',
    'float16': 'float16',
}
PATHS = {'loop': 'train loop step', 'user': 'user jit step'}
UNTUNED = ', untuned'


def _loadavg() -> Optional[float]:
  try:
    return round(os.getloadavg()[0], 2)
  except OSError:
    return None


def timm_plain_name(name: str) -> Optional[str]:
  """timm's plain twin of an SE model name (same style), if there is one."""
  for prefix, plain in (('seresnext', 'resnext'), ('seresnet', 'resnet')):
    if name.startswith(prefix):
      return plain + name[len(prefix) :]
  return None


def run(
    model: str = 'seresnet50',
    batch: int = 32,
    image_size: int = 224,
    dtype: str = 'bf16',
    kinds: Sequence[str] = ('train', 'infer'),
    paths: Sequence[str] = ('loop',),
    runtimes: Sequence[str] = ('tuned',),
    se_overhead: bool = False,
    timm: bool = False,
    timm_model: Optional[str] = None,
    torch_python: Optional[str] = None,
    reps: int = 5,
    steps: int = 5,
    warmup: int = 2,
    peak_size: Optional[int] = None,
    torch_compile: bool = False,
    keep_hlo: bool = False,
    model_overrides: Optional[dict] = None,
) -> dict:
  """Builds, times and summarises every requested variant; returns a dict.

  `paths`: 'loop' (the train loop's step, what `train.py` runs) and/or
  'user' (a plain `jax.jit` step a notebook writes). One path runs in this
  process, configured as far as `runtime.configure()` could (call it
  before JAX starts). `runtimes`: 'tuned' (configured as `train.py`
  configures itself) and/or 'untuned' (a process nobody configured, as a
  notebook that skipped `configure_runtime()`). Several paths, or untuned
  ones, run each in a worker process of its own; all are timed in the
  same rounds. Keys: 'env', 'args', 'peak' (the matmul, timed in the same
  rounds), 'variants' (summaries), 'ratios' (paired time ratios per kind:
  SE / plain and se_flax / timm per path, timm SE / plain),
  'peak_device_memory', 'notes'. With `keep_hlo`, '_variants' holds the
  `Variant`s with the optimized HLO of each program of this process.
  """
  import jax
  import jax.numpy as jnp

  from se_flax.benchmark import hlo, jax_steps, timing, workers

  settings = runtime.current()
  args = dict(
      model=model,
      batch=batch,
      image_size=image_size,
      dtype=dtype,
      kinds=list(kinds),
      paths=list(paths),
      runtimes=list(runtimes),
      se_overhead=se_overhead,
      timm=timm,
      timm_model=timm_model,
      reps=reps,
      steps=steps,
      warmup=warmup,
  )
  jdtype = jnp.dtype(DTYPES[dtype])
  full_paths = [PATHS[p] for p in paths]
  load_before = _loadavg()
  roles: Dict[str, Dict[tuple, timing.Variant]] = {}
  variants: List[timing.Variant] = []
  notes: List[str] = []

  def add(role, vs):
    for v in vs:
      roles.setdefault(v.kind, {})[(v.path, role)] = v
      variants.append(v)

  twins = [True, False] if se_overhead else [True]
  # One path, tuned: in this process. Several paths, or untuned ones: each
  # (path, tuning) in a worker process of its own, as users run them (one
  # process holding 8 programs slowed the first one by up to 20%).
  unknown = set(runtimes) - {'tuned', 'untuned'}
  if unknown or not runtimes:
    raise ValueError(
        f"runtimes: {sorted(unknown)}; expected 'tuned' and/or " "'untuned'"
    )
  isolate = list(runtimes) != ['tuned'] or len(full_paths) > 1
  if isolate and (keep_hlo or model_overrides):
    raise ValueError(
        'keep_hlo and model_overrides need one tuned path (in ' 'this process)'
    )
  if not isolate:
    for se in twins:
      add(
          'se' if se else 'plain',
          jax_steps.variants_for(
              full_paths,
              model,
              batch,
              image_size,
              jdtype,
              se,
              kinds,
              keep_hlo=keep_hlo,
              **(
                  {'model_overrides': model_overrides}
                  if model_overrides
                  else {}
              ),
          ),
      )
  workers_: List[workers.WorkerProcess] = []
  try:
    if isolate:
      env = workers.untuned_env(settings.xla_flags if settings else '')
      for tuned in [r == 'tuned' for r in runtimes]:
        for path in full_paths:
          suffix = '' if tuned else UNTUNED
          worker = workers.jax_worker(
              dict(
                  paths=[path],
                  model_name=model,
                  batch=batch,
                  image_size=image_size,
                  dtype=jdtype.name,
                  twins=twins,
                  kinds=list(kinds),
                  tuned=tuned,
              ),
              env,
              path + suffix,
          )
          workers_.append(worker)
          for role, v in workers.jax_worker_variants(worker, suffix):
            add(role, [v])
          notes.append(
              f'{path}{suffix}: own process; '
              f"{worker.info['runtime'] or 'runtime not configured'}"
              f"; its environment's XLA_FLAGS: "
              f"{worker.info['xla_flags']}"
          )
    if timm:
      if not workers.torch_available(torch_python):
        notes.append('torch/timm not importable: side-by-side skipped')
      else:
        name = timm_model or model
        pairs = [('timm', name, 'se')]
        if se_overhead:
          plain = timm_plain_name(name)
          if plain:
            pairs.append(('timm_plain', plain, 'plain'))
          else:
            notes.append(
                f'no plain timm twin of {name}: timm SE overhead ' 'skipped'
            )
        for role, timm_name, twin in pairs:
          try:
            worker = workers.torch_worker(
                timm_name,
                batch,
                image_size,
                jdtype,
                kinds,
                python=torch_python,
                compile_model=torch_compile,
            )
          except RuntimeError as e:
            notes.append(f'timm {timm_name} skipped: {e}')
            continue
          workers_.append(worker)
          flops = {
              k: next(
                  v.flops_per_image
                  for (_, r), v in roles[k].items()
                  if r == twin
              )
              for k in roles
          }
          for v in workers.torch_variants(
              worker, f'timm {timm_name}', batch, flops
          ):
            roles[v.kind][('timm', role)] = v
            variants.append(v)
          info = worker.info
          notes.append(
              f"timm {timm_name}: torch {info['torch']}, timm "
              f"{info['timm']}, {info['device']}, "
              f"{info['threads']} threads"
          )
    # The peak is timed in the same rounds, so it sees the same machine.
    peak_variant = timing.matmul_peak_variant(jdtype, peak_size)
    timing.time_interleaved(variants + [peak_variant], reps, steps, warmup)
  finally:
    for worker in workers_:
      worker.close()
  ratios = []
  for group in roles.values():
    timm_se = group.get(('timm', 'timm'))
    if timm_se and ('timm', 'timm_plain') in group:
      ratios.append(timing.paired_ratio(timm_se, group[('timm', 'timm_plain')]))
    for (path, role), v in group.items():
      if role != 'se':
        continue
      if (path, 'plain') in group:
        ratios.append(timing.paired_ratio(v, group[(path, 'plain')]))
      if timm_se:
        ratios.append(timing.paired_ratio(v, timm_se))
  peak = timing.peak_of(peak_variant)
  device = jax.devices()[0]
  results = {
      'env': {
          'backend': jax.default_backend(),
          'devices': jax.device_count(),
          'device_kind': device.device_kind,
          'jax': jax.__version__,
          'cpu_count': os.cpu_count(),
          'loadavg_before': load_before,
          'loadavg_after': _loadavg(),
          'runtime': (
              settings.describe() if settings else 'runtime not configured'
          ),
          'glibc_tunables': os.environ.get('GLIBC_TUNABLES'),
          'xla_flags': os.environ.get('XLA_FLAGS'),
      },
      'args': args,
      'peak': peak,
      'variants': [timing.summarize(v, peak['flops_per_s']) for v in variants],
      'ratios': sorted(ratios, key=lambda r: (r['kind'], r['numerator'])),
      'peak_device_memory': hlo.peak_device_memory(),
      'notes': notes,
  }
  if keep_hlo:
    results['_variants'] = variants
  return results


def main(argv: Optional[Sequence[str]] = None) -> dict:
  from se_flax import benchmark

  p = argparse.ArgumentParser(
      prog='python -m se_flax.benchmark',
      description=benchmark.__doc__.split('\n\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument('--model', default='seresnet50')
  p.add_argument(
      '--batch', type=int, default=32, help='global batch, over all devices'
  )
  p.add_argument('--image_size', type=int, default=224)
  p.add_argument('--dtype', default='bf16', choices=sorted(DTYPES))
  p.add_argument(
      '--kinds', default='train,infer', help="comma list of 'train', 'infer'"
  )
  p.add_argument(
      '--paths',
      default='loop',
      help="comma list of 'loop' (train.py's step) and 'user' "
      '(a plain jax.jit step, as a notebook writes it)',
  )
  p.add_argument(
      '--runtimes',
      default='tuned',
      help="comma list: 'tuned' (as train.py configures itself) "
      "and/or 'untuned' (no se_flax.configure_runtime())",
  )
  p.add_argument(
      '--se_overhead',
      action='store_true',
      help='also time the plain twin (SE off), interleaved',
  )
  p.add_argument(
      '--timm',
      action='store_true',
      help="also time timm's model in PyTorch (if installed)",
  )
  p.add_argument(
      '--timm_model', default=None, help='timm name, if not the same as --model'
  )
  p.add_argument(
      '--torch_python',
      default=None,
      help='interpreter with torch + timm for the worker',
  )
  p.add_argument(
      '--torch_compile',
      action='store_true',
      help='torch.compile the timm model',
  )
  p.add_argument('--reps', type=int, default=5, help='timed rounds')
  p.add_argument('--steps', type=int, default=5, help='steps per round')
  p.add_argument('--warmup', type=int, default=2)
  p.add_argument(
      '--peak_size',
      type=int,
      default=None,
      help='matmul size for the peak (CPU 2048, else 8192)',
  )
  p.add_argument('--json', default=None, help='also write results here')
  a = p.parse_args(argv)
  unknown = set(a.paths.split(',')) - set(PATHS)
  if unknown:
    p.error(f'--paths: unknown {sorted(unknown)}; expected {sorted(PATHS)}')
  # As train.py does, before JAX starts.
  if not runtime.backends_started():
    runtime.configure()
  results = run(
      a.model,
      a.batch,
      a.image_size,
      a.dtype,
      tuple(k for k in a.kinds.split(',') if k),
      paths=tuple(a.paths.split(',')),
      runtimes=tuple(a.runtimes.split(',')),
      se_overhead=a.se_overhead,
      timm=a.timm,
      timm_model=a.timm_model,
      torch_python=a.torch_python,
      reps=a.reps,
      steps=a.steps,
      warmup=a.warmup,
      peak_size=a.peak_size,
      torch_compile=a.torch_compile,
  )
  from se_flax.benchmark.report import format_table

  print(format_table(results))
  if a.json:
    with open(a.json, 'w') as f:
      json.dump(results, f, indent=2, default=str)
  return results
