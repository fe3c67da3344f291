"""`train.py`'s own logged step time against timm's train step, in turns.

What a user of `python train.py --config configs/synthetic.py` reads in
the log (`train/step_time_ms`: synchronised windows after compilation),
measured round by round against timm's model trained the same way (the
benchmark's timm worker: channels_last, the same batch, SGD with the same
momentum and weight decay). Each round runs one whole `train.py` process,
then the same number of timm steps; the ratio is per round (paired), then
the median, as in `python -m se_flax.benchmark`.

  python tools/compare_train_py_with_timm.py \\
      --torch_python /path/to/venv-with-torch-and-timm/bin/python \\
      [--rounds 3 --steps 12 --log_every 4 --batch 16 --model seresnet50]

The first window of each run holds the compiling step and is dropped;
the rest are weighted by their steps (the stopwatch time of those steps),
and timm runs as many. `--steps` 12 with `--log_every` 4 times steps 5-12.
Extra `--config.*` overrides go after `--`. Needs no TensorFlow (the
synthetic config).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

from se_flax.benchmark import workers  # pylint: disable=wrong-import-position

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')


def logged_windows(workdir: str) -> list:
  """`(steps, seconds per step)` of every logged window but the first
  (it holds the compiling step), from `train/step_time_ms`."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  rows = [r for r in rows if 'train/step_time_ms' in r]
  if len(rows) < 2:
    raise SystemExit(
        f'{workdir}: {len(rows)} logged window(s); need 2 or more '
        '(raise --steps or lower --log_every)'
    )
  return [
      (row['step'] - previous['step'], row['train/step_time_ms'] / 1e3)
      for previous, row in zip(rows, rows[1:])
  ]


def run_train_py(args, extra) -> list:
  # Removed afterwards: each run's final checkpoint is hundreds of MB.
  with tempfile.TemporaryDirectory(prefix='train_py_vs_timm_') as workdir:
    return _logged_run(args, extra, workdir)


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
  return logged_windows(workdir)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--torch_python', required=True)
  parser.add_argument('--python', default=sys.executable)
  parser.add_argument('--model', default='seresnet50')
  parser.add_argument('--timm_model', default=None, help='default: --model')
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--dtype', default='float32')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--steps', type=int, default=12)
  parser.add_argument('--log_every', type=int, default=4)
  args, extra = parser.parse_known_args()
  extra = [a for a in extra if a != '--']

  timm_worker = workers.torch_worker(
      args.timm_model or args.model,
      args.batch,
      224,
      args.dtype,
      kinds=('train',),
      python=args.torch_python,
  )
  ratios = []
  try:
    for round_ in range(args.rounds):
      windows = run_train_py(args, extra)
      steps = sum(n for n, _ in windows)
      # The stopwatch time of those steps: windows weighted by their steps.
      ours = sum(n * seconds for n, seconds in windows) / steps
      answer = timm_worker.request(kind='train', steps=steps)
      theirs = answer['wall_s'] / steps
      ratios.append(ours / theirs)
      shown = ', '.join(f'{n} x {seconds:.3f}' for n, seconds in windows)
      print(
          f'round {round_}: train.py {ours:.3f} s/step over {steps} steps '
          f'(windows: {shown}); timm {theirs:.3f} s/step; time ratio '
          f'{ours / theirs:.3f}',
          flush=True,
      )
  finally:
    timm_worker.close()
  median = statistics.median(ratios)
  print(
      f'train.py / timm step time: median {median:.3f} (rounds '
      f'{min(ratios):.3f}-{max(ratios):.3f}); train.py images/s = '
      f'{1 / median:.3f}x timm'
  )


if __name__ == '__main__':
  main()
