"""What a run is, and the check that a restart does not change it.

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
from typing import Any

import ml_collections

# Fields of config.model that change speed only, never what is computed.
_MODEL_IMPLEMENTATION_FIELDS = ('layer_impl',)
_DATA_FIELDS = (
    'source', 'name', 'train_split', 'eval_split', 'image_key', 'label_key',
    'image_size', 'eval_image_size', 'crop_pct', 'interpolation',
    'antialias', 'min_area', 'aspect_ratio', 'max_attempts',
    'random_rotation', 'pixel_jitter', 'shuffle_buffer', 'file_cycle_length',
    'cache', 'synthetic_num_classes', 'synthetic_train_examples', 'tiny')
_RECIPE_FIELDS = (
    'batch_size', 'seed', 'optimizer', 'learning_rate', 'momentum',
    'nesterov', 'weight_decay', 'weight_decay_se', 'lr_schedule',
    'lr_decay_epochs', 'lr_decay_factor', 'warmup_epochs', 'label_smoothing',
    'ema_decay')
# Larger is an extension (allowed); smaller is a change.
EXTENDABLE = ('num_epochs', 'num_train_steps')


class ResumeMismatchError(ValueError):
  """The current config would change the meaning of a stored run."""


def _plain(value: Any) -> Any:
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  return json.loads(json.dumps(value, default=str))  # Tuples -> lists.


def fingerprint(config: ml_collections.ConfigDict, *, num_classes: int,
                train_steps: int, process_count: int) -> dict[str, Any]:
  """The run-defining values, '.'-named, as JSON-compatible values."""
  run = {f'model.{k}': _plain(v) for k, v in config.model.items()
         if k not in _MODEL_IMPLEMENTATION_FIELDS}
  data = config.data
  run.update({f'data.{k}': _plain(data[k]) for k in _DATA_FIELDS
              if k in data})
  run.update({k: _plain(config[k]) for k in _RECIPE_FIELDS})
  run['num_classes'] = num_classes
  run['num_epochs'] = float(config.num_epochs)
  run['num_train_steps'] = train_steps
  run['process_count'] = process_count
  return run


def allowed_changes(config: ml_collections.ConfigDict) -> set[str]:
  spec = config.get('resume_allow_changes') or ''
  return {name.strip() for name in spec.split(',') if name.strip()}


def differences(stored: dict[str, Any],
                current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
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


def check_compatible(stored: dict[str, Any], current: dict[str, Any],
                     allowed: set[str], where: str) -> list[str]:
  """Raises `ResumeMismatchError` for changes `allowed` does not accept.

  Returns log lines describing accepted changes and extensions.
  """
  notes = []
  for name in EXTENDABLE:
    if name in stored and current[name] > stored[name]:
      notes.append(f'extending the run: {name} {stored[name]} -> '
                   f'{current[name]}')
  changed = differences(stored, current)
  refused = [c for c in changed if c[0] not in allowed and 'all' not in allowed]
  notes += [f'accepted change (resume_allow_changes): {n}: {s!r} -> {c!r}'
            for n, s, c in changed if (n, s, c) not in refused]
  if refused:
    lines = [f'  {name}: stored {old!r}, current {new!r}'
             for name, old, new in refused]
    names = ','.join(name for name, _, _ in refused)
    raise ResumeMismatchError(
        'The config differs from the run it would resume, in fields that '
        'define what the run computes:\n' + '\n'.join(lines) + '\n'
        f'Refusing to resume {where} with a changed {names}: use a new '
        'workdir, or accept the change deliberately with '
        f'--config.resume_allow_changes={names}')
  return notes


def stored_fingerprint(meta: dict) -> dict[str, Any]:
  """The fingerprint a checkpoint recorded (rebuilt for older ones)."""
  if 'run' in meta:
    return meta['run']
  config = meta.get('config') or {}
  run = {f'model.{k}': v for k, v in (config.get('model') or {}).items()
         if k not in _MODEL_IMPLEMENTATION_FIELDS}
  run.update({f'data.{k}': v for k, v in (config.get('data') or {}).items()
              if k in _DATA_FIELDS})
  run.update({k: config[k] for k in _RECIPE_FIELDS if k in config})
  return run
