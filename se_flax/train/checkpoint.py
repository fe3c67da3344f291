"""Orbax checkpoints that are verified before use: latest-N, best, exports.

Layout of a workdir:
  config.json             the resolved config of the run
  label_names.json        the class names of its data, if the source has them
  checkpoints/<step>/     latest `keep` train states (async saves)
  best/<step>/            the state with the best eval top-1 (one)
  corrupt/                checkpoints found unusable on a restart, moved
                          aside (never deleted), with a note of the reason
Each checkpoint holds the whole `TrainState` (params, BN statistics,
optimizer state, EMA, step, rng) plus JSON metadata: the step, the model,
the resolved config, the eval metrics (best/), and a manifest of SHA-256
checksums of every state leaf (`integrity.py`). A save is refused if any
value is non-finite; a restore recomputes the checksums from what it read
and refuses any difference. Orbax writes into a temporary directory and
renames it when complete, so an interrupted save never leaves a
half-written checkpoint under a step number.
"""

import io
import json
import os
import time
import zipfile
import zlib
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from se_flax.train import cli, integrity
from se_flax.train.paths import first_write_problem, is_url, read_json
from se_flax.train.paths import workdir_path
from se_flax.train.paths import write_atomic


class CheckpointError(RuntimeError):
  """A checkpoint cannot be used or written; the message names its path."""


class CorruptCheckpointError(CheckpointError):
  """A checkpoint's files cannot be read or do not match its manifest."""


class IncompatibleCheckpointError(CheckpointError):
  """An intact checkpoint of a state with other leaves or shapes."""


class NonFiniteStateError(CheckpointError, FloatingPointError):
  """A state with NaN or infinite values was offered for saving."""


# An export's entry holding the run's config and class names, not weights.
EXPORT_META_KEY = '__se_flax_meta__'
# Class names of the run's data, index = class id (a JSON list), in the
# workdir and in exports.
LABEL_NAMES = 'label_names.json'

# Metadata format; its presence also marks a checkpoint that must carry a
# checksum manifest (older ones, saved before manifests, have neither).
FORMAT = 2


def _one_line(error: BaseException, limit: int = 300) -> str:
  text = ' '.join(str(error).split()) or type(error).__name__
  # TensorStore appends a dump of its whole spec; the cause comes first.
  text = text.split(' See full TensorStore details')[0]
  return text if len(text) <= limit else text[:limit] + '...'


def _manager(directory: epath.Path, keep: int, async_save: bool):
  options = ocp.CheckpointManagerOptions(
      preservation_policy=ocp.checkpoint_managers.LatestN(keep),
      enable_async_checkpointing=async_save,
      create=True,
      # Leftovers of a save that was killed; safe under the workdir lock.
      cleanup_tmp_directories=True,
  )
  return ocp.CheckpointManager(directory, options=options)


def _local_checkpointer(handler=ocp.PyTreeCheckpointHandler):
  """A checkpointer of this process alone. Orbax's default ones meet the
  other processes at a barrier after every read, so a read that only one
  process makes would leave the processes' barriers out of step."""
  local = ocp.options.MultiprocessingOptions(
      primary_host=jax.process_index(), active_processes={jax.process_index()}
  )
  return ocp.Checkpointer(
      handler(multiprocessing_options=local), multiprocessing_options=local
  )


def read_meta(step_dir: epath.Path) -> dict:
  """The JSON metadata of one checkpoint directory."""
  try:
    with _local_checkpointer(ocp.JsonCheckpointHandler) as checkpointer:
      meta = checkpointer.restore(step_dir / 'meta')
  except Exception as e:  # Missing, truncated or garbled JSON.
    raise CorruptCheckpointError(
        f'{step_dir}: metadata unreadable ({_one_line(e)})'
    ) from None
  if not isinstance(meta, dict) or 'step' not in meta:
    raise CorruptCheckpointError(
        f'{step_dir}: metadata is not a se_flax ' 'checkpoint record'
    )
  return meta


def verify(tree, meta: dict, where: str, partial: bool = False) -> None:
  """Raises `CorruptCheckpointError` unless `tree` matches `meta`'s manifest.

  Checkpoints from before manifests existed are accepted with a warning
  (finiteness is still checked).
  """
  leaves = integrity.host_leaves(tree)
  manifest = meta.get('checksums')
  if manifest is None and ('format' in meta or 'run' in meta):
    raise CorruptCheckpointError(
        f'{where}: its checksum manifest is missing ' 'from its metadata'
    )
  if manifest is None:
    logging.warning(
        '%s has no checksum manifest (saved by an older '
        'se_flax): its contents are not verified',
        where,
    )
  else:
    wrong = integrity.mismatches(leaves, manifest, partial=partial)
    if wrong:
      raise CorruptCheckpointError(
          f'{where}: contents do not match the checksums saved with it: '
          f'{integrity.summarise(wrong)}'
      )
  bad = integrity.nonfinite(leaves)
  if bad:
    raise CorruptCheckpointError(
        f'{where}: non-finite values in ' f'{integrity.summarise(bad)}'
    )


class Checkpoints:
  """The latest-N and best-top-1 checkpoints of one workdir."""

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
    self.workdir = workdir_path(workdir)
    self.latest = _manager(self.workdir / 'checkpoints', keep, async_save)
    self.best = _manager(self.workdir / 'best', 1, async_save)
    self._best_top1: Optional[float] = None
    self._best_known = False
    self._last_seal = None  # (step, state, checksums) of the last save.

  def steps(self) -> list[int]:
    return sorted(self.latest.all_steps())

  def latest_step(self) -> Optional[int]:
    return self.latest.latest_step()

  def step_dir(self, step: int, best: bool = False) -> epath.Path:
    return self.workdir / ('best' if best else 'checkpoints') / str(step)

  def meta(self, step: int, best: bool = False) -> dict:
    return read_meta(self.step_dir(step, best))

  def _sealed(self, step: int, state, meta: dict, where: epath.Path) -> dict:
    """`meta` plus the state's checksums; refuses a non-finite state.

    The same state saved twice at one step (latest, then best) is copied to
    the host and hashed once.
    """
    last = self._last_seal
    if last is not None and last[0] == step and last[1] is state:
      checksums = last[2]
    else:
      leaves = integrity.host_leaves(state)
      bad = integrity.nonfinite(leaves)
      if bad:
        raise NonFiniteStateError(
            f'Refused to save step {step} to {where}: non-finite values in '
            f'{integrity.summarise(bad)}. Nothing was written; the '
            'checkpoints already on disk are unchanged.'
        )
      checksums = integrity.checksums(leaves)
      self._last_seal = (step, state, checksums)
    return {**meta, 'format': FORMAT, 'checksums': checksums}

  def save(self, step: int, state, meta: dict) -> None:
    """Saves the latest state (async); a no-op if `step` exists."""
    if step in self.latest.all_steps():
      return
    meta = self._sealed(step, state, meta, self.step_dir(step))
    self.latest.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
        ),
    )

  def best_top1(self) -> Optional[float]:
    """Top-1 of the kept best checkpoint (read from disk once), or None."""
    if not self._best_known:
      self._best_known = True
      step = self.best.latest_step()
      if step is not None:
        try:
          self._best_top1 = float(self.meta(step, best=True)['metrics']['top1'])
        except (CheckpointError, KeyError, TypeError, ValueError) as e:
          logging.warning(
              '%s: no readable top-1 (%s); the next evaluation ' 'replaces it',
              self.step_dir(step, True),
              _one_line(e),
          )
    return self._best_top1

  def save_best(self, step: int, state, meta: dict, top1: float) -> bool:
    """Keeps `state` as the best if its top-1 beats the kept one's."""
    best = self.best_top1()
    if (best is not None and top1 <= best) or step in self.best.all_steps():
      return False
    meta = self._sealed(
        step,
        state,
        {**meta, 'metrics': {'top1': top1}},
        self.step_dir(step, best=True),
    )
    self.best.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
        ),
    )
    self._best_top1 = top1
    return True

  def restore(
      self,
      abstract_state,
      step: Optional[int] = None,
      meta: Optional[dict] = None,
  ):
    """Restores and verifies one step onto `abstract_state`'s layout.

    The shardings come from the current mesh, so a checkpoint written on 8
    devices restores on 1 and the reverse. Raises `CorruptCheckpointError`
    (naming the directory, and the model that saved it) if the files cannot
    be read into that layout or do not match their checksums.
    """
    step = self.latest.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f'No checkpoint under {self.workdir}')
    where = self.step_dir(step)
    meta = self.meta(step) if meta is None else meta
    try:
      restored = self.latest.restore(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract_state)
          ),
      )
    except Exception as e:  # Damaged files, or another model's checkpoint.
      saved_by = (
          f'model {meta.get("model")!r} with '
          f'{meta.get("run", {}).get("num_classes", "?")} classes'
      )
      differ = shape_differences(where, abstract_state)
      if differ:
        raise IncompatibleCheckpointError(
            f'{where} is intact but holds another state ({saved_by}): '
            f'{integrity.summarise(differ)}. A change of parameter shapes '
            'cannot be resumed: use a new workdir (and load these weights '
            'there if you want them)'
        ) from None
      raise CorruptCheckpointError(
          f'{where}: cannot be restored ({_one_line(e)}); it was saved by '
          f'{saved_by}'
      ) from None
    verify(restored.state, meta, str(where))
    return restored.state, meta

  def check_best(self) -> Optional[str]:
    """Why the kept best checkpoint is unusable, or None (read in full)."""
    step = self.best.latest_step()
    if step is None:
      return None
    try:
      verify_step_dir(self.step_dir(step, best=True))
    except CheckpointError as e:
      return str(e)
    return None

  def quarantine(
      self, step: int, reason: str, best: bool = False
  ) -> epath.Path:
    """Moves a checkpoint to `corrupt/` (call on one process)."""
    stamp = time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())
    kind = 'best' if best else 'checkpoints'
    target = self.workdir / 'corrupt' / f'{kind}-{step}-{stamp}'
    target.parent.mkdir(parents=True, exist_ok=True)
    self.step_dir(step, best).rename(target)
    (target / 'REASON.txt').write_text(reason + '\n')
    return target

  def reload(self) -> None:
    """Re-reads the step lists (after `quarantine` on another process)."""
    self.latest.reload()
    self.best.reload()
    self._best_known, self._best_top1 = False, None

  def wait(self) -> None:
    """Blocks until async saves are on disk; raises their errors."""
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def _step_dirs(workdir: str, best: bool) -> tuple[epath.Path, list[int]]:
  directory = workdir_path(workdir) / ('best' if best else 'checkpoints')
  if not directory.is_dir():
    raise FileNotFoundError(f'No checkpoints under {directory}')
  steps = sorted(int(d.name) for d in directory.iterdir() if d.name.isdigit())
  if not steps:
    raise FileNotFoundError(f'No finished checkpoint in {directory}')
  return directory, steps


def _state_metadata(path: epath.Path):
  """The array metadata tree of a checkpoint's `state/`, read locally."""
  with _local_checkpointer() as checkpointer:
    try:
      metadata = checkpointer.metadata(path)
    except Exception as e:
      raise CorruptCheckpointError(
          f'{path}: array metadata unreadable ({_one_line(e)})'
      ) from None
  tree = getattr(getattr(metadata, 'item_metadata', None), 'tree', None)
  if tree is None:
    raise CorruptCheckpointError(
        f'{path}: array metadata (_METADATA) missing or unreadable'
    )
  return tree


def shape_differences(step_dir: epath.Path, abstract_state) -> list[str]:
  """Leaves whose presence or shape differ between a checkpoint and a
  state layout; [] when they agree or the metadata cannot be read."""
  try:
    tree = _state_metadata(step_dir / 'state')
  except CorruptCheckpointError:
    return []
  stored = {
      integrity.leaf_name(p): tuple(leaf.shape)
      for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
      if hasattr(leaf, 'shape')
  }
  wanted = {
      integrity.leaf_name(p): tuple(x.shape)
      for p, x in jax.tree_util.tree_flatten_with_path(abstract_state)[0]
  }
  lines = [
      f'{n}: stored {stored[n]}, wanted {wanted[n]}'
      for n in sorted(wanted)
      if n in stored and stored[n] != wanted[n]
  ]
  lines += [f'{n}: not stored' for n in sorted(wanted) if n not in stored]
  lines += [
      f'{n}: stored, not wanted' for n in sorted(stored) if n not in wanted
  ]
  return lines


def _read_numpy(path: epath.Path, keys=None) -> dict[str, Any]:
  """The state (or its `keys`) under `path` as numpy, read by this process
  alone."""
  tree = _state_metadata(path)
  with _local_checkpointer() as checkpointer:
    if keys is not None:
      missing = [k for k in keys if tree.get(k) is None]
      if missing:
        raise KeyError(missing)
      tree = {k: tree[k] for k in keys}
    as_numpy = jax.tree_util.tree_map(
        lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree
    )
    try:
      return checkpointer.restore(
          path,
          args=ocp.args.PyTreeRestore(
              item=tree, restore_args=as_numpy, partial_restore=keys is not None
          ),
      )
    except Exception as e:
      raise CorruptCheckpointError(
          f'{path}: cannot be read ({_one_line(e)})'
      ) from None


def verify_step_dir(step_dir: epath.Path, meta: Optional[dict] = None):
  """Reads a whole checkpoint on this process alone and verifies it."""
  meta = read_meta(step_dir) if meta is None else meta
  verify(_read_numpy(step_dir / 'state'), meta, str(step_dir))


def _load_step(step_dir: epath.Path, ema: bool) -> dict[str, Any]:
  # A library call (a notebook's): no CLI filters the log, so Orbax's
  # expected warnings (no _CHECKPOINT_METADATA) are hidden here, for the
  # duration of the read only.
  wanted = (
      ('ema_params', 'ema_batch_stats') if ema else ('params', 'batch_stats')
  )
  with cli.expected_warnings_hidden():
    meta = read_meta(step_dir)
    try:
      state = _read_numpy(step_dir / 'state', wanted)
    except KeyError:
      raise ValueError(
          f'{step_dir} has no EMA weights (train with ' 'ema_decay > 0)'
      ) from None
  verify(state, meta, str(step_dir), partial=True)
  return {'params': state[wanted[0]], 'batch_stats': state[wanted[1]]}


def load_variables(
    workdir: str,
    step: Optional[int] = None,
    *,
    ema: bool = False,
    best: bool = False,
) -> dict[str, Any]:
  """Loads `{'params', 'batch_stats'}` from a training workdir as numpy.

  For notebooks: needs neither the config nor the optimizer. `step` None
  takes the newest intact checkpoint (a damaged newer one is skipped with
  a warning); an explicit `step` that is damaged raises
  `CorruptCheckpointError`. `best` reads the best-top-1 checkpoint; `ema`
  the EMA weights (if the run kept them). Checksums are verified.
  """
  directory, steps = _step_dirs(workdir, best)
  if step is not None:
    if step not in steps:
      raise FileNotFoundError(
          f'No checkpoint for step {step} in '
          f'{directory}; available: {steps}'
      )
    return _load_step(directory / str(step), ema)
  problems = []
  for candidate in reversed(steps):
    try:
      return _load_step(directory / str(candidate), ema)
    except CorruptCheckpointError as e:
      logging.warning('Skipping checkpoint %d: %s', candidate, e)
      problems.append(str(e))
  raise CorruptCheckpointError(
      f'No intact checkpoint in {directory}: ' + ' | '.join(problems)
  )


def export_variables(
    workdir: str,
    path: str,
    step: Optional[int] = None,
    *,
    ema: bool = False,
    best: bool = False,
) -> str:
  """Writes a checkpoint's `params`/`batch_stats` to a plain `.npz` file.

  Keys are '/'-joined paths ('params/stage1_block0/conv1/kernel'); numpy
  alone reads it, `load_exported` gives back the nested variables. The
  run's config.json and class names (label_names.json) go along in
  `EXPORT_META_KEY` (a JSON string; `read_export_meta`), so
  `se_flax.load_pretrained(path)` rebuilds the same model. The checkpoint
  is verified first.
  """
  if not path.endswith('.npz'):
    raise ValueError(f'Export path must end in .npz, got {path!r}')
  _check_writable(path)  # Before the checkpoint is read and verified.
  meta = _run_meta(workdir)
  variables = load_variables(workdir, step, ema=ema, best=best)
  flat = {
      '/'.join(str(getattr(k, 'key', k)) for k in key_path): np.asarray(v)
      for key_path, v in jax.tree_util.tree_flatten_with_path(variables)[0]
  }
  flat[EXPORT_META_KEY] = np.array(json.dumps(meta))
  buffer = io.BytesIO()
  np.savez(buffer, **flat)
  write_atomic(workdir_path(path), buffer.getvalue())
  return path


def _check_writable(path: str) -> None:
  """Raises OSError naming a local `path` that cannot be written (before
  the long part of an export); object-store URLs are left to the write."""
  if is_url(path):
    return
  path = os.path.abspath(path)
  if os.path.isdir(path):
    raise IsADirectoryError(f'{path}: is a folder, not a file to write')
  # write_atomic makes missing folders: the first write is above them.
  parent, problem = first_write_problem(os.path.dirname(path))
  if problem is not None:
    raise PermissionError(
        f'{path}: cannot be written ({parent} is not a writable folder)'
    )


def _run_meta(workdir: str) -> dict[str, Any]:
  meta = {}
  for key, name in (('config', 'config.json'), ('label_names', LABEL_NAMES)):
    file = workdir_path(workdir) / name
    if file.exists():
      meta[key] = read_json(file)
  return meta


def read_export_meta(path: str) -> dict[str, Any]:
  """The run config and class names stored in an export ({} if none).

  Raises `CorruptCheckpointError` naming `path` if they cannot be read.
  """
  try:
    with epath.Path(path).open('rb') as f, np.load(f) as data:
      if EXPORT_META_KEY not in data.files:
        return {}
      meta = json.loads(str(data[EXPORT_META_KEY]))
  except FileNotFoundError:
    raise
  except _EXPORT_ERRORS as e:
    raise CorruptCheckpointError(
        f'{path}: its run config is unreadable ({_one_line(e)})'
    ) from None
  if not isinstance(meta, dict):
    raise CorruptCheckpointError(f'{path}: its run config is not a JSON object')
  return meta


# What a damaged .npz raises: a bad zip or CRC, a truncated or garbled
# member (zlib for compressed ones), a bad array header.
_EXPORT_ERRORS = (
    OSError,
    ValueError,
    EOFError,
    zipfile.BadZipFile,
    zlib.error,
)


def load_exported(path: str) -> dict[str, Any]:
  """Reads an `export_variables` file back into nested variables.

  The zip format checks each array's CRC-32, so damage is detected; it
  raises `CorruptCheckpointError` naming `path`.
  """
  variables: dict[str, Any] = {}
  try:
    with epath.Path(path).open('rb') as f, np.load(f) as data:
      for key in data.files:
        if key == EXPORT_META_KEY:
          continue
        *parents, leaf = key.split('/')
        node = variables
        for part in parents:
          node = node.setdefault(part, {})
        node[leaf] = data[key]
  except FileNotFoundError:
    raise
  except _EXPORT_ERRORS as e:
    raise CorruptCheckpointError(
        f'{path}: not a readable se_flax export ({_one_line(e)})'
    ) from None
  return variables


def main(argv=None, *, exit_quietly: bool = False):
  """`python -m se_flax.train.checkpoint --workdir DIR --output F.npz`.

  `exit_quietly` (the command line): a failure prints one message and ends
  the process at once; otherwise it raises SystemExit with the message.
  """
  import argparse

  parser = argparse.ArgumentParser(
      description='Export the weights of a training workdir to a .npz file.'
  )
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--output', required=True, help='path ending in .npz')
  parser.add_argument(
      '--step',
      type=int,
      default=None,
      help='checkpoint step (default: the newest intact)',
  )
  parser.add_argument('--ema', action='store_true', help='the EMA weights')
  parser.add_argument(
      '--best',
      action='store_true',
      help='the best-top-1 checkpoint instead of the latest',
  )
  args = parser.parse_args(argv)
  try:
    path = export_variables(
        args.workdir, args.output, args.step, ema=args.ema, best=args.best
    )
  # OSError: a missing workdir, an output that cannot be written.
  except (CheckpointError, OSError, ValueError) as e:
    if exit_quietly:
      cli.fail('export', e)
    raise SystemExit(f'error: {e}') from None
  print(f'wrote {path}')


if __name__ == '__main__':
  cli.install_quiet_shutdown()
  main(exit_quietly=True)
