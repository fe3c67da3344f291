"""Metric writers and progress reporting for the loop.

Process 0 writes `metrics.jsonl` (one JSON object per write, always), and
TensorBoard summaries through CLU when TensorFlow is installed (CLU's writers
import it); without TensorFlow, e.g. on a GPU box that only has JAX, the
console and the JSONL file remain.
"""

import json
import time
from typing import Any, Mapping

from absl import logging

from se_flax.train import paths


class JsonlWriter:
  """Appends `{"step": s, name: value, ...}` lines to `metrics.jsonl`.

  Local files are appended to; on an object store (gs://), where objects
  cannot be appended to, the file is rewritten whole at each flush.
  """

  def __init__(self, workdir: str):
    self._path = paths.workdir_path(workdir) / 'metrics.jsonl'
    self._path.parent.mkdir(parents=True, exist_ok=True)
    self._remote = paths.is_url(self._path)
    self._lines = []
    if self._remote:
      if self._path.exists():
        self._lines = self._path.read_text().splitlines(keepends=True)
      self._file = None
    else:
      self._file = self._path.open('a')

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    record = {'step': int(step), **{k: float(v) for k, v in scalars.items()}}
    line = json.dumps(record, sort_keys=True) + '\n'
    if self._remote:
      self._lines.append(line)
    else:
      self._file.write(line)

  def write_hparams(self, hparams: Mapping[str, Any]):
    del hparams  # config.json holds them.

  def flush(self):
    if self._remote:
      self._path.write_text(''.join(self._lines))
    else:
      self._file.flush()

  def close(self):
    self.flush()
    if self._file is not None:
      self._file.close()


class _LogWriter:
  """The console: one line per write; hyperparameters only at -v 1."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    logging.info(
        '[%d] %s',
        step,
        ', '.join(f'{k}={v:.6g}' for k, v in sorted(scalars.items())),
    )

  def write_hparams(self, hparams):
    # config.json holds them; the console stays readable.
    logging.vlog(1, 'hparams: %s', hparams)

  def flush(self):
    pass

  def close(self):
    pass


class Writers:
  """Fans each call out to several writers (none on processes other than 0).

  Only the writer methods below exist, so a misspelt call fails on every
  process, not just on the one that has writers.
  """

  def __init__(self, writers):
    self._writers = list(writers)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    for writer in self._writers:
      writer.write_scalars(step, scalars)

  def write_hparams(self, hparams: Mapping[str, Any]):
    for writer in self._writers:
      writer.write_hparams(hparams)

  def flush(self):
    for writer in self._writers:
      writer.flush()

  def close(self):
    for writer in self._writers:
      writer.close()


def create_writer(workdir: str, is_main_process: bool) -> Writers:
  if not is_main_process:
    return Writers([])
  writers = [_LogWriter(), JsonlWriter(workdir)]
  try:
    from clu import metric_writers

    # Asynchronous, as CLU's default writer: event-file writes (to gs://
    # too) stay off the training loop's thread.
    writers.append(
        metric_writers.AsyncWriter(
            metric_writers.SummaryWriter(str(paths.workdir_path(workdir)))
        )
    )
  except ImportError:
    logging.info(
        'No TensorFlow/TensorBoard: logging to the console and '
        'metrics.jsonl only'
    )
  return Writers(writers)


class Progress:
  """Steps/s and ETA at most every `every_seconds` (the first after 10 s, so
  a short run shows one too), on a synchronised clock.

  `start` and `update` must be called where the dispatched steps have
  finished (after a fetch of their results), so the rate is what a
  stopwatch says, evaluation and saving included; `start` comes after the
  compiling step, so compilation does not skew the ETA.
  """

  def __init__(self, num_steps: int, writer, every_seconds: float = 60.0):
    self._num_steps = num_steps
    self._writer = writer
    self._every = every_seconds
    self._start = self._last = None
    self._start_step = 0
    self._reported = False

  def start(self, step: int) -> None:
    self._start = self._last = time.perf_counter()
    self._start_step = step

  def update(self, step: int) -> None:
    now = time.perf_counter()
    if self._start is None or step == self._start_step:
      return
    every = self._every if self._reported else min(self._every, 10.0)
    if now - self._last < every and step != self._num_steps:
      return
    self._last, self._reported = now, True
    rate = (step - self._start_step) / (now - self._start)
    eta = (self._num_steps - step) / rate if rate > 0 else float('inf')
    self._writer.write_scalars(step, {'steps_per_sec': rate})
    logging.info(
        'step %d/%d (%.1f%%), %.2f steps/s, ETA %.1f min',
        step,
        self._num_steps,
        100.0 * step / self._num_steps,
        rate,
        eta / 60,
    )
