"""`train.py`'s own logged step time against timm's train step, in turns.

What a user of `python train.py --config configs/synthetic.py` reads in
the log (`train/step_time_ms`: synchronised windows after compilation),
measured round by round against timm's model trained the same way (the
benchmark's timm worker: channels_last, the same batch, SGD with the same
momentum and weight decay). Each round runs one whole `train.py` process,
then the same number of timm steps; the ratio is per round (paired), then
the median, as in `python -m se_flax.benchmark`.

  python tools/compare_train_py_with_timm.py \\
      [--torch_python /path/to/venv-with-torch-and-timm/bin/python] \\
      [--rounds 3 --steps 16 --log_every 4 --warmup_steps 8 --batch 16]

Windows that start before `--warmup_steps` are dropped: a fresh process's
heap is still growing then (on the 2-core CPU, fp32 batch 16, page
faults stop by about step 8, and steps 2-8 take up to 1.2x a later step;
PERFORMANCE.md entry 17), and what a long run logs is the steady state.
The windows kept are weighted by their steps (the stopwatch time of those
steps), and timm runs as many. The defaults time steps 9-16.
`--se_overhead` also runs, in each round, `train.py` with
`--config.model.se=False` (the plain twin) and timm's plain twin
(resnet50 for seresnet50), so SE / plain is paired per round as well
(the order of the two train.py runs alternates between rounds). With 6
rounds or more, each median comes with its distribution-free 95% interval
(`timing.median_interval`). Without `--torch_python` (then
`--se_overhead` is required) only the two `train.py` twins run, round by
round: SE / plain with no timm process between them. Extra `--config.*`
overrides go after `--`. Needs no TensorFlow (the synthetic config).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

# pylint: disable=wrong-import-position
from se_flax.benchmark import cli, report, timing, workers

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')


def logged_windows(workdir: str, warmup_steps: int) -> list:
  """`(steps, seconds per step)` of the logged windows that start at or
  after step `warmup_steps`, from `train/step_time_ms`.

  The first window starts at step 1, the compiling step, whose time the
  loop logs as `compile_seconds`, not as step time.
  """
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  rows = [r for r in rows if 'train/step_time_ms' in r]
  starts = [1] + [r['step'] for r in rows[:-1]]
  windows = [
      (row['step'] - start, row['train/step_time_ms'] / 1e3)
      for start, row in zip(starts, rows)
      if start >= warmup_steps
  ]
  if not windows:
    raise SystemExit(
        f'{workdir}: no logged window starts at or after step '
        f'{warmup_steps} (logged at steps {[r["step"] for r in rows]}); '
        'raise --steps or lower --warmup_steps'
    )
  return windows


def run_train_py(args, extra) -> tuple:
  """`(steps, seconds per step)` of one `train.py` run after its warm-up:
  the windows kept, weighted by their steps (their stopwatch time)."""
  # Removed afterwards: each run's final checkpoint is hundreds of MB.
  with tempfile.TemporaryDirectory(prefix='train_py_vs_timm_') as workdir:
    windows = _logged_run(args, extra, workdir)
  steps = sum(n for n, _ in windows)
  return steps, sum(n * seconds for n, seconds in windows) / steps


def _logged_run(args, extra, workdir: str) -> list:
  command = [
      args.python,
      os.path.join(ROOT, 'train.py'),
      '--config',
      os.path.join(ROOT, 'configs', 'synthetic.py'),
      '--workdir',
      workdir,
      f'--config.model.name={args.model}',
      f'--config.model.dtype={args.dtype}',
      f'--config.batch_size={args.batch}',
      f'--config.num_train_steps={args.steps}',
      f'--config.log_every_steps={args.log_every}',
      '--config.data.synthetic_eval_examples=16',
      *extra,
  ]
  done = subprocess.run(command, capture_output=True, text=True)
  if done.returncode:
    raise SystemExit(
        f'train.py failed ({done.returncode}):\n{done.stderr[-3000:]}'
    )
  return logged_windows(workdir, args.warmup_steps)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
      '--torch_python', help='timm side; omit for train.py twins only'
  )
  parser.add_argument('--python', default=sys.executable)
  parser.add_argument('--model', default='seresnet50')
  parser.add_argument('--timm_model', default=None, help='default: --model')
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--dtype', default='float32')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--steps', type=int, default=16)
  parser.add_argument('--log_every', type=int, default=4)
  parser.add_argument(
      '--warmup_steps',
      type=int,
      default=8,
      help='windows starting before this step are not timed',
  )
  parser.add_argument(
      '--se_overhead',
      action='store_true',
      help='also the plain twin (train.py and timm), paired per round',
  )
  args, extra = parser.parse_known_args()
  extra = [a for a in extra if a != '--']
  if not args.torch_python and not args.se_overhead:
    parser.error(
        'nothing to compare: give --torch_python, --se_overhead or both'
    )
  twins = ['se', 'plain'] if args.se_overhead else ['se']
  timm_names = {}
  if args.torch_python:
    timm_names['se'] = args.timm_model or args.model
    if args.se_overhead:
      timm_names['plain'] = cli.timm_plain_name(timm_names['se'])
      if not timm_names['plain']:
        raise SystemExit(f'no plain timm twin of {timm_names["se"]}')
  timm_workers = {}
  times = {
      (who, twin): []
      for who, names in (('train.py', twins), ('timm', timm_names))
      for twin in names
  }
  try:
    for twin, name in timm_names.items():
      timm_workers[twin] = workers.torch_worker(
          name,
          args.batch,
          224,
          args.dtype,
          kinds=('train',),
          python=args.torch_python,
      )
    for round_ in range(args.rounds):
      order = twins if round_ % 2 == 0 else twins[::-1]
      for twin in order:
        twin_extra = ['--config.model.se=False'] if twin == 'plain' else []
        timed_steps, seconds = run_train_py(args, extra + twin_extra)
        times['train.py', twin].append(seconds)
      for twin in (order if timm_workers else ()):
        answer = timm_workers[twin].request(kind='train', steps=timed_steps)
        times['timm', twin].append(answer['wall_s'] / timed_steps)
      shown = '; '.join(
          f'{who} {twin} {values[-1]:.3f} s/step'
          for (who, twin), values in times.items()
      )
      print(f'round {round_} ({timed_steps} steps each): {shown}', flush=True)
  finally:
    for worker in timm_workers.values():
      worker.close()

  def show(what, numerator, denominator):
    ratios = [a / b for a, b in zip(times[numerator], times[denominator])]
    summary = timing.time_ratio_summary(ratios)
    print(f'{what}: median time ratio {report.format_time_ratio(summary)}')

  if args.torch_python:
    show('train.py / timm', ('train.py', 'se'), ('timm', 'se'))
  if args.se_overhead:
    show('train.py SE / plain', ('train.py', 'se'), ('train.py', 'plain'))
  if args.se_overhead and args.torch_python:
    show('timm SE / plain', ('timm', 'se'), ('timm', 'plain'))
    show(
        'train.py plain / timm plain', ('train.py', 'plain'), ('timm', 'plain')
    )


if __name__ == '__main__':
  main()
