"""Orbax checkpoints: latest-N for resumption, best-by-top-1, exports.

Layout of a workdir:
  config.json             the resolved config of the run
  checkpoints/<step>/     latest `keep` train states (async saves)
  best/<step>/            the state with the best eval top-1
Each checkpoint holds the whole `TrainState` (params, BN statistics,
optimizer state, EMA, step, rng) plus JSON metadata; the data position is
a function of (seed, step), so the step is all the input pipeline needs.
Orbax writes into a temporary directory and renames it when complete, so
an interrupted save never leaves a half-written checkpoint behind.
"""

import os
import signal
import threading
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp


def _manager(directory: str, policy, async_save: bool):
  options = ocp.CheckpointManagerOptions(
      preservation_policy=policy, enable_async_checkpointing=async_save,
      create=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


class Checkpoints:
  """The latest-N and best-top-1 managers of one workdir."""

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
    self.latest = _manager(os.path.join(workdir, 'checkpoints'),
                           ocp.checkpoint_managers.LatestN(keep), async_save)
    self.best = _manager(
        os.path.join(workdir, 'best'),
        ocp.checkpoint_managers.BestN(get_metric_fn=lambda m: m['top1'], n=1,
                                      keep_checkpoints_without_metrics=False),
        async_save)

  def latest_step(self) -> Optional[int]:
    return self.latest.latest_step()

  def save(self, step: int, state, meta: dict) -> None:
    """Saves the latest state (async); a no-op if `step` exists."""
    if step in self.latest.all_steps():
      return
    self.latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

  def save_best(self, step: int, state, meta: dict, metrics: dict) -> None:
    """Offers the state to the best-top-1 manager, which keeps one."""
    if step in self.best.all_steps():
      return
    self.best.save(step, metrics={'top1': float(metrics['top1'])},
                   args=ocp.args.Composite(
                       state=ocp.args.StandardSave(state),
                       meta=ocp.args.JsonSave(meta)))

  def restore(self, abstract_state, step: Optional[int] = None):
    """Restores onto `abstract_state`'s shapes and shardings.

    The shardings come from the current mesh, so a checkpoint written on 8
    devices restores on 1 and the reverse.
    """
    step = self.latest.latest_step() if step is None else step
    restored = self.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        meta=ocp.args.JsonRestore()))
    return restored.state, restored.meta

  def wait(self) -> None:
    """Blocks until async saves are on disk; raises their errors."""
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def _step_dir(workdir: str, step: Optional[int], best: bool) -> str:
  directory = os.path.join(os.path.abspath(workdir),
                           'best' if best else 'checkpoints')
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'No checkpoints under {directory!r}')
  steps = sorted(int(d) for d in os.listdir(directory) if d.isdigit())
  if not steps:
    raise FileNotFoundError(f'No finished checkpoint in {directory!r}')
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise FileNotFoundError(f'No checkpoint for step {step} in {directory!r}; '
                            f'available: {steps}')
  return os.path.join(directory, str(step))


def load_variables(workdir: str, step: Optional[int] = None, *,
                   ema: bool = False, best: bool = False) -> dict[str, Any]:
  """Loads `{'params', 'batch_stats'}` from a training workdir as numpy.

  For notebooks: needs neither the config nor the optimizer. `step` None
  takes the latest; `best` reads the best-top-1 checkpoint; `ema` the EMA
  weights (if the run kept them).
  """
  path = os.path.join(_step_dir(workdir, step, best), 'state')
  wanted = ('ema_params', 'ema_batch_stats') if ema else (
      'params', 'batch_stats')
  with ocp.PyTreeCheckpointer() as checkpointer:
    tree = checkpointer.metadata(path).item_metadata.tree
    if ema and tree.get('ema_params') is None:
      raise ValueError(f'{path} has no EMA weights (train with ema_decay > 0)')
    item = {k: tree[k] for k in wanted}
    as_numpy = jax.tree_util.tree_map(
        lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    state = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
        item=item, restore_args=as_numpy, partial_restore=True))
  return {'params': state[wanted[0]], 'batch_stats': state[wanted[1]]}


class PreemptionWatcher:
  """Turns SIGTERM into a flag that the loop checks at step boundaries.

  A context manager, so the previous handler is always put back.
  """

  def __init__(self):
    self._event = threading.Event()
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM,
                                     lambda *_: self._event.set())
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  @property
  def requested(self) -> bool:
    return self._event.is_set()


def export_variables(workdir: str, path: str, step: Optional[int] = None, *,
                     ema: bool = False, best: bool = False) -> str:
  """Writes a checkpoint's `params`/`batch_stats` to a plain `.npz` file.

  Keys are '/'-joined paths ('params/stage1_block0/conv1/kernel'); numpy
  alone reads it, `load_exported` gives back the nested variables.
  """
  variables = load_variables(workdir, step, ema=ema, best=best)
  flat = {'/'.join(str(getattr(k, 'key', k)) for k in key_path): np.asarray(v)
          for key_path, v in jax.tree_util.tree_flatten_with_path(
              variables)[0]}
  if not path.endswith('.npz'):
    raise ValueError(f'Export path must end in .npz, got {path!r}')
  tmp = path[:-len('.npz')] + '.tmp.npz'
  np.savez(tmp, **flat)
  os.replace(tmp, path)  # Never a half-written export under `path`.
  return path


def load_exported(path: str) -> dict[str, Any]:
  """Reads an `export_variables` file back into nested variables."""
  variables: dict[str, Any] = {}
  with np.load(path) as data:
    for key in data.files:
      *parents, leaf = key.split('/')
      node = variables
      for part in parents:
        node = node.setdefault(part, {})
      node[leaf] = data[key]
  return variables


def main(argv=None):
  """`python -m se_flax.train.checkpoint --workdir DIR --output F.npz`."""
  import argparse
  parser = argparse.ArgumentParser(
      description='Export the weights of a training workdir to a .npz file.')
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--output', required=True, help='path ending in .npz')
  parser.add_argument('--step', type=int, default=None,
                      help='checkpoint step (default: the latest)')
  parser.add_argument('--ema', action='store_true', help='the EMA weights')
  parser.add_argument('--best', action='store_true',
                      help='the best-top-1 checkpoint instead of the latest')
  args = parser.parse_args(argv)
  path = export_variables(args.workdir, args.output, args.step, ema=args.ema,
                          best=args.best)
  print(f'wrote {path}')


if __name__ == '__main__':
  main()
