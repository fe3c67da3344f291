"""What a workdir records of its run besides the checkpoints.

- An earlier attempt's traces (`config.json`, `label_names.json`,
  `metrics.jsonl`, `best/`) in a workdir without checkpoints: a restart
  there is compared with that run (`check_earlier_attempt`), so another
  run is never started silently over it.
- `final.json`: written once the last step's duties (evaluation, best
  save, every save on disk) are done. A restart that finds the last step
  restored but no record for it redoes them.
"""

import json
import zlib
from typing import Optional

import jax
import numpy as np
from absl import logging

from se_flax.train import checkpoint, multihost, paths, resume

FINAL = 'final.json'


def check_processes_agree(run: dict) -> None:
  """Raises on every process unless all computed the same fingerprint.

  Each process scans the data and resolves paths itself; one that sees
  other data (another mount, another copy) would otherwise be refused
  alone on resume while the others wait for it.
  """
  if jax.process_count() == 1:
    return
  digest = zlib.crc32(json.dumps(run, sort_keys=True).encode()) & 0x7FFFFFFF
  first = multihost.broadcast_ints([digest])[0]
  same = multihost.gather_flags(digest == first)
  if not same.all():
    raise resume.ResumeMismatchError(
        f'Processes {np.flatnonzero(~same).tolist()} see another run than '
        'process 0 (its data: folder root, class names or example count; '
        'or its config): every process must read the same data and config'
    )


def _traces(ckpt: checkpoint.Checkpoints) -> list[str]:
  """The files of an earlier attempt that trained, in `ckpt.workdir`.

  An attempt that recorded no metric and kept no best (it died compiling,
  say of memory) left nothing that a changed config would mix with.
  """
  workdir = ckpt.workdir
  metrics = workdir / 'metrics.jsonl'
  best = ckpt.best.latest_step()
  # Its size, not its text: a long run's metrics are many MB (on gs://).
  if best is None and not (metrics.exists() and metrics.stat().length):
    return []
  found = [
      name
      for name in ('config.json', checkpoint.LABEL_NAMES, 'metrics.jsonl')
      if (workdir / name).exists()
  ]
  if best is not None:
    found.append(f'best/{best}')
  return found


def _earlier_fingerprint(ckpt: checkpoint.Checkpoints) -> Optional[dict]:
  """The earlier attempt's run: its best checkpoint's record, else its
  config.json and class names; None if neither is there."""
  best = ckpt.best.latest_step()
  if best is not None:
    try:
      return resume.stored_fingerprint(ckpt.meta(best, best=True))
    except checkpoint.CheckpointError as e:
      logging.warning('%s', e)
  config_path = ckpt.workdir / 'config.json'
  if not config_path.exists():
    return None
  run = resume.stored_fingerprint({'config': paths.read_json(config_path)})
  names_path = ckpt.workdir / checkpoint.LABEL_NAMES
  if names_path.exists():
    run['data.class_names'] = paths.read_json(names_path)
  return run


def check_earlier_attempt(config, ckpt: checkpoint.Checkpoints, run) -> None:
  """For a workdir without checkpoints: refuses to start another run over
  an earlier attempt's files; the same run starts over with a warning.

  Process 0 decides and every process follows (none waits in a collective
  for one that raised). Raises `resume.ResumeMismatchError` naming the
  changed fields, or `resume.NoIntactCheckpointError` when there is
  nothing to compare with (unless
  `config.start_fresh_if_no_intact_checkpoint`).
  """
  if multihost.broadcast_ints([len(ckpt.steps())])[0]:
    return  # Checkpoints: restore_or_create compares with them.
  error = None
  if jax.process_index() == 0:
    try:
      _compare_earlier_attempt(config, ckpt, run)
    # ValueError: a changed run, or an unreadable config.json.
    except (ValueError, checkpoint.CheckpointError) as e:
      error = e
  ok = multihost.broadcast_ints([error is None])[0]
  if error is not None:
    raise error
  if not ok:
    raise resume.ResumeMismatchError(
        f'Process 0 refused to start in {ckpt.workdir} over an earlier '
        'attempt (its log says why)'
    )


def _compare_earlier_attempt(config, ckpt: checkpoint.Checkpoints, run):
  traces = _traces(ckpt)
  if not traces:
    return
  where = f'{ckpt.workdir} (no checkpoints/; found {", ".join(traces)})'
  stored = _earlier_fingerprint(ckpt)
  if stored is None:
    if config.start_fresh_if_no_intact_checkpoint:
      return
    raise resume.NoIntactCheckpointError(
        f'{where}: an earlier run left files but no checkpoint or '
        'config.json to compare this config with. Refusing to mix two runs '
        'there: use a new workdir, or set '
        '--config.start_fresh_if_no_intact_checkpoint=True'
    )
  # The earlier attempt's length is not a promise: any length may restart.
  stored = {k: v for k, v in stored.items() if k not in resume.EXTENDABLE}
  for note in resume.check_compatible(
      stored, run, resume.allowed_changes(config), where
  ):
    logging.info('%s', note)
  logging.warning(
      '%s: an earlier attempt of this run saved no checkpoint; starting '
      'over from step 0 (metrics.jsonl continues, so its first steps '
      'repeat)',
      where,
  )


def read_final(workdir: str) -> Optional[dict]:
  """`final.json` of `workdir` as process 0 reads it, or None.

  Every process gets the same answer (its step), so that all of them
  agree whether the final duties are to be redone.
  """
  record = None
  if jax.process_index() == 0:
    path = paths.workdir_path(workdir) / FINAL
    if path.exists():
      try:
        record = paths.read_json(path)
      except ValueError as e:
        logging.warning('%s; redoing the final evaluation', e)
  step = record.get('step') if isinstance(record, dict) else None
  if not isinstance(step, int) or isinstance(step, bool):
    if record is not None:
      logging.warning('%s holds no step; redoing the final evaluation', FINAL)
    step = -1
  step = multihost.broadcast_ints([step])[0]
  if step < 0:
    return None
  return record if record is not None else {'step': step}


def clear_final(workdir: str) -> None:
  """Removes `final.json` before steps are trained: a record of another
  end (an earlier attempt's, or before an extension) must not stand for
  this run's (process 0)."""
  if jax.process_index() == 0:
    path = paths.workdir_path(workdir) / FINAL
    if path.exists():
      path.unlink()


def write_final(workdir: str, step: int, eval_summary: dict) -> None:
  """Records that `step`, the last, is evaluated and saved (process 0)."""
  if jax.process_index() == 0:
    paths.write_atomic(
        paths.workdir_path(workdir) / FINAL,
        json.dumps({'step': int(step), 'eval': eval_summary}, indent=1),
    )
