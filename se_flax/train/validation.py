"""`validate_config`: every config value checked before anything compiles.

A value that cannot be meant (a negative learning rate, a zero interval,
an image the network cannot take) fails with one `ValueError` line:
`config.<field>: <value> <what is allowed>`.
"""

import math
from typing import Optional

import jax
import ml_collections

from se_flax import layers
from se_flax.data import rand_augment_config
from se_flax.models import image_sizes, registry
from se_flax.train import optim
from se_flax.train.config import build_model
from se_flax.train.inputs import SOURCES


def _fail(field: str, message: str):
  raise ValueError(f'config.{field}: {message}')


def _check(ok, field: str, message: str) -> None:
  if not ok:
    _fail(field, message)


def _is_number(value) -> bool:
  return (
      isinstance(value, (int, float))
      and not isinstance(value, bool)
      and math.isfinite(value)
  )


def _check_number(
    value,
    field: str,
    *,
    above: Optional[float] = None,
    at_least: Optional[float] = None,
    below: Optional[float] = None,
    integer: bool = False,
) -> None:
  """A finite number (an int if `integer`) within the given bounds."""
  kind = 'an int' if integer else 'a finite number'
  bounds = [
      f'{op} {bound}'
      for op, bound in (('>', above), ('>=', at_least), ('<', below))
      if bound is not None
  ]
  ok = (
      _is_number(value)
      and (not integer or isinstance(value, int))
      and (above is None or value > above)
      and (at_least is None or value >= at_least)
      and (below is None or value < below)
  )
  _check(ok, field, f'{value!r} must be {kind} {" and ".join(bounds)}')


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Fails fast, before any compilation, naming the offending field."""
  _check(
      config.get('layer_rules') in layers.LAYER_RULES,
      'layer_rules',
      f'must be one of {layers.LAYER_RULES}, got '
      f'{config.get("layer_rules")!r}',
  )
  _validate_batch_and_model(config)
  _validate_recipe(config)
  _validate_regularisers(config)
  _validate_intervals(config)
  _validate_finetune(config)
  _validate_data(config)
  _validate_image_sizes(config)


def _validate_batch_and_model(config: ml_collections.ConfigDict) -> None:
  devices = jax.device_count()
  _check_number(config.batch_size, 'batch_size', above=0, integer=True)
  _check(
      config.batch_size % devices == 0,
      'batch_size',
      f'{config.batch_size} must be a positive multiple of '
      f'the {devices} devices',
  )
  if config.eval_batch_size is not None:
    _check_number(
        config.eval_batch_size, 'eval_batch_size', above=0, integer=True
    )
  eval_batch = config.eval_batch_size or config.batch_size
  _check(
      eval_batch % devices == 0,
      'eval_batch_size',
      f'{eval_batch} must be a multiple of the {devices} devices',
  )
  _check(
      config.model.name in registry.list_models(),
      'model.name',
      f'unknown model {config.model.name!r}; see se_flax.list_models()',
  )
  groups = config.model.bn_groups
  _check_number(groups, 'model.bn_groups', at_least=0, integer=True)
  _check(
      groups <= 1 or config.batch_size % groups == 0,
      'model.bn_groups',
      f'{groups} groups do not divide batch_size {config.batch_size}',
  )
  _check(
      config.model.dtype in ('float32', 'bfloat16'),
      'model.dtype',
      f"{config.model.dtype!r}: use 'bfloat16' (same range as float32, "
      "no loss scaling needed) or 'float32'"
      + (
          '; float16 would need loss scaling, which this trainer does not do'
          if config.model.dtype == 'float16'
          else ''
      ),
  )
  for rate in ('drop_rate', 'drop_path_rate'):
    if config.model.get(rate) is not None:
      _check_number(config.model[rate], f'model.{rate}', at_least=0, below=1)
  if config.model.se_reduction is not None:
    _check_number(
        config.model.se_reduction, 'model.se_reduction', above=0, integer=True
    )
  _check_number(config.model.bn_momentum, 'model.bn_momentum', at_least=0)
  _check(
      config.model.bn_momentum < 1,
      'model.bn_momentum',
      f'{config.model.bn_momentum!r} must be < 1 (Flax convention: 0.9 '
      "is PyTorch's 0.1)",
  )


def _validate_recipe(config: ml_collections.ConfigDict) -> None:
  """The optimizer, schedule, loss and EMA numbers."""
  _check_number(config.learning_rate, 'learning_rate', above=0)
  _check_number(config.weight_decay, 'weight_decay', at_least=0)
  _check_number(config.momentum, 'momentum', at_least=0, below=1)
  _check(
      config.lr_schedule in ('step', 'cosine'),
      'lr_schedule',
      f"{config.lr_schedule!r} is not 'step' or 'cosine'",
  )
  _check(
      _is_number(config.lr_decay_factor) and 0 < config.lr_decay_factor <= 1,
      'lr_decay_factor',
      f'{config.lr_decay_factor!r} must be in (0, 1] (the rate is multiplied '
      'by it at each of lr_decay_epochs)',
  )
  epochs = tuple(config.lr_decay_epochs or ())
  _check(
      all(_is_number(e) and e > 0 for e in epochs)
      and list(epochs) == sorted(epochs),
      'lr_decay_epochs',
      f'{epochs!r} must be increasing epochs > 0',
  )
  _check_number(config.warmup_epochs, 'warmup_epochs', at_least=0)
  _check_number(config.label_smoothing, 'label_smoothing', at_least=0, below=1)
  _check_number(config.ema_decay, 'ema_decay', at_least=0, below=1)
  _check(
      config.nonfinite in ('skip', 'stop'),
      'nonfinite',
      f"{config.nonfinite!r} is not 'skip' or 'stop'",
  )
  steps = config.num_train_steps
  _check(
      steps == -1
      or (isinstance(steps, int) and not isinstance(steps, bool) and steps > 0),
      'num_train_steps',
      f'{config.num_train_steps!r} must be an int > 0, or -1 (num_epochs '
      'decides)',
  )
  if config.num_train_steps == -1:
    _check_number(config.num_epochs, 'num_epochs', above=0)


def _validate_regularisers(config: ml_collections.ConfigDict) -> None:
  """Optimizer choice, learning-rate scaling, loss and Mixup/CutMix."""
  for field, allowed in (
      ('optimizer', ('sgd', 'lamb')),
      ('lr_scaling', optim.LR_SCALINGS),
      ('loss', ('softmax', 'bce')),
  ):
    _check(
        config[field] in allowed,
        field,
        f'{config[field]!r} is not one of {allowed}',
    )
  _check_number(
      config.lr_base_batch_size, 'lr_base_batch_size', above=0, integer=True
  )
  if config.bce_target_threshold is not None:
    _check(
        config.loss == 'bce',
        'bce_target_threshold',
        f'{config.bce_target_threshold!r} is set but loss is '
        f"{config.loss!r}: it applies to loss='bce' only",
    )
    _check_number(
        config.bce_target_threshold,
        'bce_target_threshold',
        at_least=0,
        below=1,
    )
  m = config.mixup
  for field in ('mixup_alpha', 'cutmix_alpha'):
    _check_number(m[field], f'mixup.{field}', at_least=0)
  for field in ('prob', 'switch_prob'):
    _check(
        _is_number(m[field]) and 0 <= m[field] <= 1,
        f'mixup.{field}',
        f'{m[field]!r} must be a probability in [0, 1]',
    )


def _validate_intervals(config: ml_collections.ConfigDict) -> None:
  """How often the loop logs, evaluates and saves, and what it keeps."""
  for field in (
      'log_every_steps',
      'checkpoint_every_steps',
      'preemption_check_every_steps',
  ):
    _check_number(config[field], field, above=0, integer=True)
  _check_number(config.eval_every_epochs, 'eval_every_epochs', above=0)
  _check_number(
      config.keep_checkpoints, 'keep_checkpoints', at_least=1, integer=True
  )
  _check_number(
      config.prefetch_batches, 'prefetch_batches', at_least=0, integer=True
  )


def _validate_data(config: ml_collections.ConfigDict) -> None:
  """The data fields; the folder layout itself is checked by its scan."""
  data = config.data
  _check(
      data.source in SOURCES,
      'data.source',
      f'{data.source!r} is not one of {SOURCES}',
  )
  if data.source == 'folder':
    _check(
        isinstance(data.get('folder_root'), str) and data.folder_root.strip(),
        'data.folder_root',
        'must name ROOT (holding train/<class>/* and val/<class>/*) when '
        f"data.source is 'folder', got {data.get('folder_root')!r}",
    )
  for field in ('image_size', 'eval_image_size'):
    size = data.get(field)
    if size is not None or field == 'image_size':
      _check_number(size, f'data.{field}', above=0, integer=True)
  _check(
      _is_number(data.crop_pct) and 0.0 < data.crop_pct <= 1.0,
      'data.crop_pct',
      f'{data.crop_pct!r} must be in (0, 1]',
  )
  _check(
      _is_number(data.min_area) and 0.0 < data.min_area <= 1.0,
      'data.min_area',
      f'{data.min_area!r} must be in (0, 1]',
  )
  ratio = tuple(data.aspect_ratio)
  _check(
      len(ratio) == 2
      and all(_is_number(r) and r > 0 for r in ratio)
      and ratio[0] <= ratio[1],
      'data.aspect_ratio',
      f'{ratio!r} must be (min, max) with 0 < min <= max',
  )
  _check_number(data.max_attempts, 'data.max_attempts', above=0, integer=True)
  _check(
      data.interpolation in _INTERPOLATIONS,
      'data.interpolation',
      f'{data.interpolation!r} is not one of {_INTERPOLATIONS}',
  )
  for field in ('shuffle_buffer', 'file_cycle_length'):
    _check_number(data[field], f'data.{field}', above=0, integer=True)
  for field, least in (('prefetch', 0), ('num_parallel_calls', 1)):
    value = data[field]
    _check(
        value == -1 or (isinstance(value, int) and value >= least),
        f'data.{field}',
        f'{value!r} must be an int >= {least}, or -1 (AUTOTUNE)',
    )
  if data.source == 'synthetic':
    for field in ('synthetic_num_classes', 'synthetic_train_examples'):
      _check_number(data[field], f'data.{field}', above=0, integer=True)
    _check_number(
        data.synthetic_eval_examples,
        'data.synthetic_eval_examples',
        at_least=0,
        integer=True,
    )
  if data.source == 'tiny_imagenet':
    for field in ('num_classes', 'train_per_class', 'val_per_class'):
      _check_number(
          data.tiny[field], f'data.tiny.{field}', above=0, integer=True
      )
    _check_number(
        data.tiny.image_size, 'data.tiny.image_size', above=0, integer=True
    )
  for field in ('random_rotation', 'pixel_jitter'):
    _check_number(data[field], f'data.{field}', at_least=0)
  if data.rand_augment:  # Its error names the field (TF-free parser).
    rand_augment_config.parse(data.rand_augment)
  _check_number(
      data.repeated_augmentation,
      'data.repeated_augmentation',
      at_least=0,
      integer=True,
  )


def _validate_finetune(config: ml_collections.ConfigDict) -> None:
  init_from = config.get('init_from')
  _check(
      init_from is None or (isinstance(init_from, str) and init_from.strip()),
      'init_from',
      f'{init_from!r}: give a hub tag, a weights file or a workdir, or unset',
  )
  multiplier = config.get('backbone_lr_multiplier', 1.0)
  _check(
      _is_number(multiplier) and multiplier >= 0.0,
      'backbone_lr_multiplier',
      f'{multiplier!r} must be a finite number >= 0 (0: only the head '
      "trains; 1: the head's learning rate)",
  )
  stages = config.get('freeze_stages', 0)
  _check(
      isinstance(stages, int) and stages >= 0,
      'freeze_stages',
      f'{stages!r} must be an int >= 0 (0: nothing frozen)',
  )
  if stages:
    shapes = image_sizes.init_shapes(
        build_model(config, 2), config.data.image_size
    )
    try:
      optim.param_groups(shapes['params'], stages)
    except ValueError as e:
      _fail('freeze_stages', f'{e} ({config.model.name})')


# tf.image.resize's methods.
_INTERPOLATIONS = (
    'bilinear',
    'bicubic',
    'nearest',
    'area',
    'lanczos3',
    'lanczos5',
    'gaussian',
    'mitchellcubic',
)


def _validate_image_sizes(config: ml_collections.ConfigDict) -> None:
  """Building the model checks its fields; tracing it, the image sizes."""
  model = build_model(config, num_classes=2)
  data = config.data
  for field in ('image_size', 'eval_image_size'):
    size = data.get(field)
    if size is None:
      continue
    # Traced with the layers the run uses: the CPU rules have their own
    # limits (a pooling window larger than its input).
    with layers.layer_rules(config.layer_rules):
      problem = image_sizes.trace_problem(model, size)
      if problem is None:
        continue
      smallest = image_sizes.smallest_size(model)
    if smallest is None:  # No size works: the model's fields are at fault.
      first_line = (str(problem).splitlines() or [''])[0]
      _fail(
          'model',
          f'{config.model.name} cannot be built with these fields: '
          f'{type(problem).__name__}: {first_line}',
      )
    _fail(
        f'data.{field}',
        f'{config.model.name} cannot take {size}x{size} px images '
        f'(a size it takes: {smallest} px)',
    )
