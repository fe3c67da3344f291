"""Resuming a run: what a run is, the check that a restart does not change
it, and restoring the newest intact checkpoint (`restore_or_create`).

A checkpoint stores the run-defining values of its config (`fingerprint`).
On restart the current config's values are compared with them before
anything compiles: a different model, class count, image size, global
batch, seed, dataset, split, augmentation, optimizer, schedule or process
count would silently change what the remaining steps mean (the learning
rate at a step, the batch at a step), so it is refused, listing each field,
unless `config.resume_allow_changes` names it.

Length is the exception: a run may be extended (larger `num_epochs` or
`num_train_steps`) without an override. Step schedules keep their
boundaries (they are in absolute epochs); a cosine schedule is a function
of `num_epochs`, so extending it re-stretches the curve over the new length
and the learning rate rises at the restart point. Shortening is a change
like any other.
"""

import json
import os
from typing import Any, Optional, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from se_flax.train import checkpoint, multihost, paths

# Fields of config.model that change speed only, never what is computed
# (in config.json of runs from before `layer_rules` left the model config).
_MODEL_IMPLEMENTATION_FIELDS = ('layer_impl',)
_DATA_FIELDS = (
    'source',
    'name',
    'folder_root',
    'train_split',
    'eval_split',
    'image_key',
    'label_key',
    'image_size',
    'eval_image_size',
    'crop_pct',
    'interpolation',
    'antialias',
    'min_area',
    'aspect_ratio',
    'max_attempts',
    'random_rotation',
    'pixel_jitter',
    'rand_augment',
    'repeated_augmentation',
    'shuffle_buffer',
    'file_cycle_length',
    'cache',
    'synthetic_num_classes',
    'synthetic_train_examples',
    'tiny',
)
_RECIPE_FIELDS = (
    'batch_size',
    'seed',
    'optimizer',
    'learning_rate',
    'momentum',
    'nesterov',
    'weight_decay',
    'weight_decay_se',
    'lr_schedule',
    'lr_decay_epochs',
    'lr_decay_factor',
    'warmup_epochs',
    'label_smoothing',
    'lr_base_batch_size',
    'lr_scaling',
    'loss',
    'bce_target_threshold',
    'mixup',
    'ema_decay',
    'backbone_lr_multiplier',
    'freeze_bn_stats',
    'freeze_stages',
)
# Larger is an extension (allowed); smaller is a change.
EXTENDABLE = ('num_epochs', 'num_train_steps')


class ResumeMismatchError(ValueError):
  """The current config would change the meaning of a stored run."""


def _plain(value: Any) -> Any:
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  return json.loads(json.dumps(value, default=str))  # Tuples -> lists.


def fingerprint(
    config: ml_collections.ConfigDict,
    *,
    num_classes: int,
    train_steps: int,
    process_count: int,
    num_train_examples: Optional[int] = None,
    label_names: Optional[Sequence[str]] = None,
) -> dict[str, Any]:
  """The run-defining values, '.'-named, as JSON-compatible values.

  Besides the config: what the data source found (its example count sets
  the epoch length; its class names, the meaning of each label), so that a
  renamed class folder or a thinned dataset is a change like any other.
  """
  run = {
      f'model.{k}': _plain(v)
      for k, v in config.model.items()
      if k not in _MODEL_IMPLEMENTATION_FIELDS
  }
  data = config.data
  run.update({f'data.{k}': _plain(data[k]) for k in _DATA_FIELDS if k in data})
  run.update({k: _plain(config[k]) for k in _RECIPE_FIELDS})
  run['num_classes'] = num_classes
  run['num_epochs'] = float(config.num_epochs)
  run['num_train_steps'] = train_steps
  run['process_count'] = process_count
  if num_train_examples is not None:
    run['data.num_train_examples'] = int(num_train_examples)
  if label_names is not None:
    run['data.class_names'] = [str(name) for name in label_names]
  return run


def allowed_changes(config: ml_collections.ConfigDict) -> set[str]:
  spec = config.get('resume_allow_changes') or ''
  return {name.strip() for name in spec.split(',') if name.strip()}


def differences(
    stored: dict[str, Any], current: dict[str, Any]
) -> list[tuple[str, Any, Any]]:
  """(field, stored, current) for each run-defining field that changed.

  Fields the stored run did not record (older checkpoints) are not
  compared; extensions of EXTENDABLE fields are not differences.
  """
  changed = []
  for name in sorted(current):
    if name not in stored or stored[name] == current[name]:
      continue
    if name in EXTENDABLE and current[name] > stored[name]:
      continue
    changed.append((name, stored[name], current[name]))
  return changed


def check_compatible(
    stored: dict[str, Any],
    current: dict[str, Any],
    allowed: set[str],
    where: str,
) -> list[str]:
  """Raises `ResumeMismatchError` for changes `allowed` does not accept.

  Returns log lines describing accepted changes and extensions.
  """
  notes = []
  for name in EXTENDABLE:
    if name in stored and current[name] > stored[name]:
      notes.append(
          f'extending the run: {name} {stored[name]} -> ' f'{current[name]}'
      )
  changed = differences(stored, current)
  refused = [c for c in changed if c[0] not in allowed and 'all' not in allowed]
  notes += [
      f'accepted change (resume_allow_changes): {n}: {s!r} -> {c!r}'
      for n, s, c in changed
      if (n, s, c) not in refused
  ]
  if refused:
    lines = [
        f'  {name}: {_describe_change(old, new)}' for name, old, new in refused
    ]
    names = ','.join(name for name, _, _ in refused)
    raise ResumeMismatchError(
        'The config or its data differ from the run it would resume, in '
        'fields that define what the run computes:\n' + '\n'.join(lines) + '\n'
        f'Refusing to resume {where} with a changed {names}: use a new '
        'workdir, or accept the change deliberately with '
        f'--config.resume_allow_changes={names}'
    )
  return notes


def _describe_change(old: Any, new: Any) -> str:
  """`stored X, current Y`; for long lists (class names) only what differs."""
  if not (isinstance(old, list) and isinstance(new, list)) or (
      len(old) + len(new) <= 12
  ):
    return f'stored {old!r}, current {new!r}'
  at = [
      i
      for i in range(max(len(old), len(new)))
      if old[i : i + 1] != new[i : i + 1]
  ]
  shown = ', '.join(
      f'[{i}] {old[i] if i < len(old) else None!r} -> '
      f'{new[i] if i < len(new) else None!r}'
      for i in at[:5]
  )
  more = f' and {len(at) - 5} more' if len(at) > 5 else ''
  return f'{len(old)} stored, {len(new)} current; {shown}{more}'


def stored_fingerprint(meta: dict) -> dict[str, Any]:
  """The fingerprint a checkpoint recorded (rebuilt for older ones)."""
  if 'run' in meta:
    return meta['run']
  config = meta.get('config') or {}
  run = {
      f'model.{k}': v
      for k, v in (config.get('model') or {}).items()
      if k not in _MODEL_IMPLEMENTATION_FIELDS
  }
  run.update(
      {
          f'data.{k}': v
          for k, v in (config.get('data') or {}).items()
          if k in _DATA_FIELDS
      }
  )
  run.update({k: config[k] for k in _RECIPE_FIELDS if k in config})
  root = run.get('data.folder_root')
  if isinstance(root, str) and not (os.path.isabs(root) or paths.is_url(root)):
    # Stored relative (before roots were resolved): relative to what?
    del run['data.folder_root']
  return run


class NoIntactCheckpointError(checkpoint.CheckpointError):
  """A workdir has checkpoints but none can be restored."""


def _try_step(config, ckpt, step, abstract, run):
  """(state or None, meta, notes, reason): this process's view of `step`.

  Single-process: restores and verifies it. Multi-process: reads and checks
  its metadata, and process 0 also reads and verifies the whole state on
  its own, so that no process enters Orbax's collective restore for a
  checkpoint that will be refused. A config that changes the run raises
  `ResumeMismatchError` on every process.
  """
  try:
    meta = ckpt.meta(step)
    notes = check_compatible(
        stored_fingerprint(meta),
        run,
        allowed_changes(config),
        str(ckpt.step_dir(step)),
    )
    if jax.process_count() == 1:
      state, meta = ckpt.restore(abstract, step, meta)
      return state, meta, notes, None
    if jax.process_index() == 0:
      checkpoint.verify_step_dir(ckpt.step_dir(step), meta)
    return None, meta, notes, None
  except checkpoint.CorruptCheckpointError as e:
    return None, None, [], str(e)


def _restore_agreed(ckpt, step, abstract, meta):
  """The collective restore of a step process 0 has verified."""
  state, reason = None, None
  try:
    state, meta = ckpt.restore(abstract, step, meta)
  except checkpoint.CorruptCheckpointError as e:
    reason = str(e)
  ok = multihost.gather_flags(reason is None)
  if not ok.all():
    raise checkpoint.CheckpointError(
        f'Processes {np.flatnonzero(~ok).tolist()} read {ckpt.step_dir(step)} '
        'differently from process 0, which verified it'
        + (f' (here: {reason})' if reason else '')
        + '; every process must see the same workdir (a shared filesystem)'
    )
  return state


def _set_aside_unusable_best(
    ckpt: checkpoint.Checkpoints, starting_over: bool
) -> None:
  """Moves a damaged best checkpoint, or a previous run's, to corrupt/.

  Otherwise a damaged best would be kept (its stored top-1 still beats
  new evaluations), and after a start-over the old run's best would block
  the new run's.
  """
  step = ckpt.best.latest_step()
  if step is None:
    return
  problem = (
      'set aside: the run started over without an intact checkpoint'
      if starting_over
      else ckpt.check_best()
  )
  if problem:
    moved = ckpt.quarantine(step, problem, best=True)
    logging.warning(
        'Moved best checkpoint step %d to %s: %s', step, moved, problem
    )


def restore_or_create(
    config, ckpt: checkpoint.Checkpoints, abstract, create, run: dict
):
  """The newest intact, compatible checkpoint's state, or a new state.

  Process 0 decides which steps exist and which are intact; every process
  follows its decision, and one that cannot see what process 0 sees fails
  with a message saying so. Damaged checkpoints newer than the one
  restored are moved to `corrupt/`, so that later saves and rotation never
  meet them, and so is a damaged best checkpoint. An intact checkpoint of
  another state layout raises `checkpoint.IncompatibleCheckpointError`
  (never moved). A config that changes the run raises
  `ResumeMismatchError` before any state is read.
  """
  steps = multihost.broadcast_ints(ckpt.steps())
  unseen = sorted(set(steps) - set(ckpt.steps()))
  seen = multihost.gather_flags(not unseen)
  if not seen.all():
    raise checkpoint.CheckpointError(
        f'Processes {np.flatnonzero(~seen).tolist()} do not see checkpoint '
        f'steps that process 0 sees under {ckpt.workdir}/checkpoints'
        + (f' (here: {unseen} missing)' if unseen else '')
        + '; every process must see the same workdir (a shared filesystem)'
    )
  if not steps:
    return create()
  rejected, state, notes = [], None, []
  for step in reversed(steps):
    state, meta, notes, reason = _try_step(config, ckpt, step, abstract, run)
    ok = multihost.gather_flags(reason is None)
    if ok[0] and not ok.all():
      raise checkpoint.CheckpointError(
          f'Processes {np.flatnonzero(~ok).tolist()} cannot read '
          f'{ckpt.step_dir(step)}, which process 0 can'
          + (f' (here: {reason})' if reason else '')
          + '; every process must see the same workdir (a shared filesystem)'
      )
    if ok[0]:
      if state is None:
        state = _restore_agreed(ckpt, step, abstract, meta)
      break
    logging.warning(
        'Checkpoint step %d is not usable, trying an older ' 'one: %s',
        step,
        reason or 'see process 0',
    )
    rejected.append((step, reason))
  if state is None and not config.start_fresh_if_no_intact_checkpoint:
    listing = '\n'.join(f'  step {s}: {reason}' for s, reason in rejected)
    raise NoIntactCheckpointError(
        f'None of the {len(steps)} checkpoints can be restored:\n{listing}\n'
        f'Refusing to start over in {ckpt.workdir}: repair or move the '
        'checkpoints, or set --config.start_fresh_if_no_intact_checkpoint='
        'True'
    )
  multihost.sync('se_flax_restore_read')
  if jax.process_index() == 0:
    for step, reason in rejected:
      moved = ckpt.quarantine(step, reason)
      logging.warning('Moved unusable checkpoint step %d to %s', step, moved)
    _set_aside_unusable_best(ckpt, starting_over=state is None)
  multihost.sync('se_flax_restore_quarantined')
  ckpt.reload()
  if state is None:
    logging.warning(
        'No intact checkpoint: starting over, as '
        'config.start_fresh_if_no_intact_checkpoint asks'
    )
    return create()
  for note in notes:
    logging.info('%s', note)
  logging.info(
      'Resumed from %s (%d skipped steps before it)',
      ckpt.step_dir(int(state.step)),
      int(state.skipped_steps),
  )
  return state
