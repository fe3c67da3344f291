"""CPU serving speed: se_flax's runtimes and exports against timm, one run.

    python -m se_flax.benchmark.serving --model seresnet50 --batches 1,16 \\
        --timm_python /path/to/venv-with-torch-and-timm/bin/python

What is timed: one call of the eval network on a float32 NHWC batch
(preprocessed images, random weights) returning (batch, 1000) logits, per
runtime, each in a worker process of its own (`serving_worker.py`):
- 'jit_off' / 'jit_auto': `jax.jit` of the linen module's eval apply with
  layer rules 'off' (the plain program, what exports contain) and 'auto'
  (the default: XLA:CPU rules), in a process `configure_runtime()` set up;
- 'stablehlo': the `se_flax.export.stablehlo` file reloaded by
  `jax.export.deserialize(...).call` under `jax.jit`;
- 'savedmodel': the `se_flax.export.savedmodel` folder reloaded by
  `tf.saved_model.load(...).signatures['serving_default']`;
- 'onnx': the `se_flax.export.onnx` file in onnxruntime (every graph
  optimisation, sequential execution, `threads` intra-op threads);
- timm's model of the same name in PyTorch (`serving_torch.py`, run by
  `--timm_python`): eval, `torch.inference_mode()`, in each configuration
  of `--timm_configs` ('eager', 'eager_cl' = channels_last, 'compile',
  'compile_cl' = `torch.compile`), each in its own process.
Method (as `python -m se_flax.benchmark`, reusing its machinery): every
worker pinned to the same `threads` CPUs (affinity, and each framework's
intra-op thread count), built and called once, `--warmup` calls, then
`--reps` rounds of `--steps` calls, all variants interleaved round by
round (order reversed every other round); figures are medians over rounds
with the min-max spread, ratios per round (paired) then their median. Each
se_flax runtime also answers a probe input, and the run reports how far
its logits are from 'jit_off''s (same weights: key 0 everywhere).
"""

import argparse
from concurrent import futures
import functools
import json
import os
import statistics
import sys
import tempfile
from typing import Dict, List, Optional, Sequence

from se_flax.benchmark import report, timing, workers
from se_flax.benchmark.serving_worker import RUNTIMES

SERVING_TORCH_SCRIPT = os.path.join(
    os.path.dirname(__file__), 'serving_torch.py'
)
TIMM_CONFIGS = {
    'eager': dict(compile=False, channels_last=False),
    'eager_cl': dict(compile=False, channels_last=True),
    'compile': dict(compile=True, channels_last=False),
    'compile_cl': dict(compile=True, channels_last=True),
}


def se_flax_worker(spec: dict) -> workers.WorkerProcess:
  """A `serving_worker` process for `spec` (its docstring lists the keys)."""
  return workers.WorkerProcess(
      [
          sys.executable,
          '-m',
          'se_flax.benchmark.serving_worker',
          json.dumps(spec),
      ],
      spec['runtime'],
  )


def timm_worker(
    python: Optional[str], args: dict, name: str
) -> workers.WorkerProcess:
  """A `serving_torch.py` process (run with -c: the package folder stays
  off its sys.path, so it imports neither se_flax nor JAX)."""
  with open(SERVING_TORCH_SCRIPT) as f:
    script = f.read()
  return workers.WorkerProcess(
      [python or sys.executable, '-c', script, json.dumps(args)], name
  )


def worker_variants(
    worker: workers.WorkerProcess, label: str, framework: str
) -> List[timing.Variant]:
  """One `Variant` per batch size the worker built (kind 'serve')."""
  out = []
  for index, fields in enumerate(worker.info['variants']):

    def run(n, index=index):
      answer = worker.request(index=index, steps=n)
      return {k: answer[k] for k in ('cpu_s', 'sys_s', 'faults')}

    out.append(
        timing.Variant(
            label=label,
            framework=framework,
            kind='serve',
            batch=fields['batch'],
            run=run,
            path=label,
            compile_s=fields['first_s'],
            handle=fields,
        )
    )
  return out


def probe_differences(variants: Sequence[timing.Variant]) -> List[dict]:
  """Per se_flax runtime and batch: max |logits - jit_off's| on the probe,
  absolute and relative to jit_off's max |logit|."""
  import numpy as np

  ref = {
      v.batch: np.asarray(v.handle['probe'])
      for v in variants
      if v.label == 'jit_off'
  }
  out = []
  for v in variants:
    if v.framework == 'torch' or v.label == 'jit_off' or v.batch not in ref:
      continue
    diff = np.abs(np.asarray(v.handle['probe']) - ref[v.batch]).max()
    scale = np.abs(ref[v.batch]).max()
    out.append(
        dict(
            runtime=v.label,
            batch=v.batch,
            max_abs=float(diff),
            max_rel=float(diff / scale),
        )
    )
  return out


def _start(make, name: str, notes: List[str]):
  try:
    return make()
  except (RuntimeError, OSError) as e:
    notes.append(f'{name} skipped: {e}')
    return None


def worker_makers(model, batches, image_size, runtimes, threads, workdir):
  """`(name, framework, make)` for each se_flax runtime's worker."""
  out = []
  for name in runtimes:
    spec = dict(
        runtime=name,
        model=model,
        batches=list(batches),
        image_size=image_size,
        threads=threads,
        workdir=workdir,
    )
    out.append((name, 'jax', functools.partial(se_flax_worker, spec)))
  return out


def timm_makers(timm_model, batches, image_size, configs, threads, python):
  """`(name, framework, make)` for each timm configuration's worker."""
  out = []
  for config in configs:
    args = dict(
        model=timm_model,
        batches=list(batches),
        image_size=image_size,
        threads=threads,
        **TIMM_CONFIGS[config],
    )
    name = f'timm {config}'
    out.append(
        (name, 'torch', functools.partial(timm_worker, python, args, name))
    )
  return out


def run_serving(
    model: str = 'seresnet50',
    batches: Sequence[int] = (1, 16),
    image_size: int = 224,
    runtimes: Sequence[str] = RUNTIMES,
    timm: bool = True,
    timm_model: Optional[str] = None,
    timm_configs: Sequence[str] = ('eager', 'eager_cl'),
    timm_python: Optional[str] = None,
    threads: Optional[int] = None,
    reps: int = 3,
    steps: int = 5,
    warmup: int = 2,
) -> dict:
  """Builds a worker per runtime, times them interleaved; returns a dict.

  Keys: 'args', 'env' (cpus, threads, load before/after), 'variants'
  (`timing.summarize` rows plus 'first_s' / 'build_s'), 'ratios' (per
  batch, time(x) / time(fastest timm config)), 'probe' (logit differences
  from 'jit_off'), 'workers' (versions, runtime settings), 'notes'. A
  runtime whose worker fails to start (e.g. TF or onnxruntime missing) is
  skipped with a note; so is timm without torch.
  """
  unknown = set(runtimes) - set(RUNTIMES)
  unknown |= set(timm_configs) - set(TIMM_CONFIGS)
  if unknown:
    raise ValueError(
        f'runtimes/timm_configs: unknown {sorted(unknown)}; expected '
        f'{list(RUNTIMES)} / {list(TIMM_CONFIGS)}'
    )
  threads = threads or len(os.sched_getaffinity(0))
  args = dict(
      model=model,
      batches=list(batches),
      image_size=image_size,
      runtimes=list(runtimes),
      timm=timm,
      timm_model=timm_model,
      timm_configs=list(timm_configs),
      threads=threads,
      reps=reps,
      steps=steps,
      warmup=warmup,
  )
  load_before = os.getloadavg()[0]
  notes: List[str] = []
  variants: List[timing.Variant] = []
  started: Dict[str, workers.WorkerProcess] = {}
  with tempfile.TemporaryDirectory(prefix='se_flax_serving_') as workdir:
    makers = worker_makers(
        model, batches, image_size, runtimes, threads, workdir
    )
    if timm and not workers.torch_available(timm_python):
      notes.append('torch/timm not importable: timm skipped')
    elif timm:
      makers += timm_makers(
          timm_model or model,
          batches,
          image_size,
          timm_configs,
          threads,
          timm_python,
      )
    try:
      # Builds overlap (imports, tracing and compiles are mostly one
      # thread); timing starts once all are ready, so they do not meet it.
      with futures.ThreadPoolExecutor(threads) as pool:
        made = pool.map(lambda m: _start(m[2], m[0], notes), makers)
        for (name, framework, _), w in zip(makers, list(made)):
          if w:
            started[name] = w
            variants += worker_variants(w, name, framework)
      timing.time_interleaved(variants, reps, steps, warmup)
    finally:
      for w in started.values():
        w.close()
  rows = []
  for v in variants:
    row = timing.summarize(v, None)
    row.update(first_s=v.handle['first_s'], build_s=v.handle.get('build_s'))
    rows.append(row)
  return dict(
      args=args,
      env=dict(
          cpus=os.cpu_count(),
          threads=threads,
          loadavg_before=load_before,
          loadavg_after=os.getloadavg()[0],
      ),
      variants=rows,
      ratios=ratios_to_timm(variants),
      probe=probe_differences(variants),
      workers={
          name: {k: w.info.get(k) for k in ('versions', 'runtime', 'cpus')}
          for name, w in started.items()
      },
      notes=notes,
  )


def ratios_to_timm(variants: Sequence[timing.Variant]) -> List[dict]:
  """Per batch: paired time(x) / time(timm's fastest config) for every
  other variant (images/s ratio = 1 / time ratio at equal batch)."""
  out = []
  for batch in sorted({v.batch for v in variants}):
    same = [v for v in variants if v.batch == batch]
    timm_ = [v for v in same if v.framework == 'torch']
    if not timm_:
      continue
    best = min(timm_, key=lambda v: statistics.median(v.times))
    out += [
        dict(timing.paired_ratio(v, best), batch=batch)
        for v in same
        if v is not best
    ]
  return out


def format_serving(results: dict) -> str:
  """A markdown table of `run_serving`'s result, ratios and probe below."""
  env, args = results['env'], results['args']
  lines = [
      f"{args['model']} @ {args['image_size']} px float32, CPU: "
      f"{env['cpus']} CPUs, {env['threads']} threads per runtime; load "
      f"{env['loadavg_before']:.2f} -> {env['loadavg_after']:.2f}; "
      f"{args['reps']} rounds x {args['steps']} calls",
      '',
      '| runtime | batch | img/s | ms/call (min-max) | first call s | '
      'CPU s/call |',
      '|---|---:|---:|---:|---:|---:|',
  ]
  for s in sorted(results['variants'], key=lambda s: s['batch']):
    lines.append(
        f"| {s['label']} | {s['batch']} | {s['images_per_s']:.1f} | "
        f"{s['step_ms']:.1f} ({s['step_ms_min']:.1f}-{s['step_ms_max']:.1f})"
        f" | {s['first_s']:.2f} | {s['cpu_s_per_step']:.3f} |"
    )
  lines.append('')
  for r in results['ratios']:
    lines.append(
        f"batch {r['batch']}: time({r['numerator']}) / "
        f"time({r['denominator']}) = {report.format_time_ratio(r)}"
    )
  for p in results['probe']:
    lines.append(
        f"logits vs jit_off, {p['runtime']} batch {p['batch']}: max abs "
        f"{p['max_abs']:.2e}, max rel {p['max_rel']:.2e}"
    )
  for name, w in results['workers'].items():
    lines.append(f'{name}: {w}')
  lines += results['notes']
  return '\n'.join(lines)


def _csv(text: str) -> List[str]:
  return [t for t in text.split(',') if t]


def main(argv: Optional[Sequence[str]] = None) -> dict:
  p = argparse.ArgumentParser(
      prog='python -m se_flax.benchmark.serving',
      description=__doc__.split('\n\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument('--model', default='seresnet50')
  p.add_argument('--batches', default='1,16', help='comma list')
  p.add_argument('--image_size', type=int, default=224)
  p.add_argument('--runtimes', default=','.join(RUNTIMES), help='comma list')
  p.add_argument('--no_timm', action='store_true')
  p.add_argument('--timm_model', default=None)
  p.add_argument(
      '--timm_configs',
      default='eager,eager_cl',
      help=f'comma list of {list(TIMM_CONFIGS)}',
  )
  p.add_argument(
      '--timm_python', default=None, help='interpreter with torch + timm'
  )
  p.add_argument(
      '--threads', type=int, default=None, help='default: usable CPUs'
  )
  p.add_argument('--reps', type=int, default=3)
  p.add_argument('--steps', type=int, default=5, help='calls per round')
  p.add_argument('--warmup', type=int, default=2)
  p.add_argument('--json', default=None, help='also write results here')
  a = p.parse_args(argv)
  results = run_serving(
      a.model,
      [int(b) for b in _csv(a.batches)],
      a.image_size,
      _csv(a.runtimes),
      not a.no_timm,
      a.timm_model,
      _csv(a.timm_configs),
      a.timm_python,
      a.threads,
      a.reps,
      a.steps,
      a.warmup,
  )
  print(format_serving(results))
  if a.json:
    with open(a.json, 'w') as f:
      json.dump(results, f, indent=2, default=str)
  return results


if __name__ == '__main__':
  main()
