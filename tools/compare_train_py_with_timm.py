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
      [--rounds 3 --steps 13 --log_every 4 --batch 16 --model seresnet50]

The first window of each run holds the compiling step and is dropped, so
`--steps` 13 with `--log_every` 4 times 3 windows of 4 steps (the window
ending at step 4 times steps 2-4). Extra `--config.*` overrides go after
`--`. Needs no TensorFlow (the synthetic config).
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


def logged_step_seconds(workdir: str) -> list:
  """`train/step_time_ms` of every window but the first, in seconds."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  windows = [
      r['train/step_time_ms'] / 1e3 for r in rows if 'train/step_time_ms' in r
  ]
  if len(windows) < 2:
    raise SystemExit(
        f'{workdir}: {len(windows)} logged window(s); need 2 or more '
        '(raise --steps or lower --log_every)'
    )
  return windows[1:]


def run_train_py(args, extra) -> list:
  workdir = tempfile.mkdtemp(prefix='train_py_vs_timm_')
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
  return logged_step_seconds(workdir)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--torch_python', required=True)
  parser.add_argument('--python', default=sys.executable)
  parser.add_argument('--model', default='seresnet50')
  parser.add_argument('--timm_model', default=None, help='default: --model')
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--dtype', default='float32')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--steps', type=int, default=13)
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
  timed = args.steps - args.log_every  # What train.py's later windows time.
  ratios = []
  try:
    for round_ in range(args.rounds):
      windows = run_train_py(args, extra)
      ours = statistics.median(windows)
      answer = timm_worker.request(kind='train', steps=timed)
      theirs = answer['wall_s'] / timed
      ratios.append(ours / theirs)
      print(
          f'round {round_}: train.py step {ours:.3f} s (windows '
          f'{", ".join(f"{w:.3f}" for w in windows)}); timm {theirs:.3f} s '
          f'over {timed} steps; time ratio {ours / theirs:.3f}',
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
