"""Helpers the train tests share: metrics, tree equality, train.py runs."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np

# Wall-clock figures differ between runs; everything else must not.
_TIMING = (
    'images_per_sec',
    'step_time_ms',
    'data_wait_fraction',
    'compile_seconds',
    'steps_per_sec',
    'device_memory',
)


def read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  kept = [
      {k: v for k, v in r.items() if not any(t in k for t in _TIMING)}
      for r in records
  ]
  return [r for r in kept if len(r) > 1]


def assert_trees_equal(a, b):
  flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
  flat_b = jax.tree_util.tree_flatten_with_path(b)[0]
  assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
  for (path, x), (_, y) in zip(flat_a, flat_b):
    np.testing.assert_array_equal(
        np.asarray(x), np.asarray(y), err_msg=str(path)
    )


ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
TINY_CONFIG = os.path.join(ROOT, 'tests', 'train', 'tiny_config.py')


def train_command(workdir, *overrides):
  """The README's command on the tiny config: train.py in a new process."""
  return [
      sys.executable,
      os.path.join(ROOT, 'train.py'),
      f'--config={TINY_CONFIG}',
      f'--workdir={workdir}',
      *[f'--config.{o}' for o in overrides],
  ]


def train_env():
  return dict(
      os.environ,
      JAX_PLATFORMS='cpu',
      PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''),
  )


def run_train(workdir, *overrides, timeout=300):
  """Runs train.py to completion; returns the CompletedProcess (text)."""
  return subprocess.run(
      train_command(workdir, *overrides),
      cwd=ROOT,
      env=train_env(),
      capture_output=True,
      text=True,
      timeout=timeout,
  )


def start_train(workdir, *overrides):
  return subprocess.Popen(
      train_command(workdir, *overrides),
      cwd=ROOT,
      env=train_env(),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
  )


def last_line(text):
  lines = [line for line in text.strip().splitlines() if line.strip()]
  return lines[-1] if lines else ''


def data_files(step_dir):
  """A checkpoint's array data files (under state/.../d/), smallest first."""
  files = []
  for root, _, names in os.walk(os.path.join(step_dir, 'state')):
    if os.path.basename(root) == 'd':
      files += [os.path.join(root, n) for n in names]
  return sorted(files, key=os.path.getsize)


def foreign_lock_record(heartbeat: float, host: str = 'other-host') -> bytes:
  """An object-store lock record of a trainer on another host."""
  return json.dumps(
      {
          'host': host,
          'pid': 4242,
          'process_start': None,
          'start_time': '2026-01-01T00:00:00+00:00',
          'token': 'f' * 32,
          'heartbeat': heartbeat,
      }
  ).encode()


def free_port() -> int:
  """A localhost TCP port nobody listens on now."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]
