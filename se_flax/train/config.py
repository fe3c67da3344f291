"""Every field a training run can vary, its default, and its checks.

Configs in `configs/` start from `base_config()` and change what their
recipe needs; `train.py` locks the result, so a misspelt override fails.
`validate_config` checks a config before anything compiles;
`build_model` turns its `model` fields into the registry's Module.
Durations are in epochs (converted to steps in code, from the dataset size
and the global batch), so `--config.batch_size=...` keeps them right.
"""

import json
import math

import jax
import jax.numpy as jnp
import ml_collections
from ml_collections.config_dict import placeholder

from se_flax import layers
from se_flax.data.config import default_data_config
from se_flax.models import registry
from se_flax.train import optim
from se_flax.train import paths


def base_config() -> ml_collections.ConfigDict:
  """The paper's SE-ResNet-50 ImageNet recipe (§5.1), field by field."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  # Model: a registry name plus overrides; unset placeholders keep the
  # registered network's value.
  c.model = ml_collections.ConfigDict()
  c.model.name = 'se_resnet50'
  c.model.se = True  # False: the same network without SE (the baseline).
  c.model.se_reduction = placeholder(int)
  c.model.se_squeeze = placeholder(str)  # 'avg' | 'max' | 'none'
  c.model.se_gate = placeholder(str)  # 'sigmoid' | 'relu' | 'tanh'
  c.model.se_use_bias = placeholder(bool)
  c.model.se_position = placeholder(str)  # standard|pre|post|identity|3x3
  c.model.se_stages = placeholder(tuple)  # e.g. (4,): SE in stage 4 only.
  # Blocks without SE by the paper's names, e.g. ('SE_5_2', 'SE_5_3').
  c.model.se_blocks_off = placeholder(tuple)
  c.model.drop_rate = placeholder(float)
  c.model.zero_init_last_bn = placeholder(bool)
  c.model.bn_momentum = 0.9  # Flax convention: PyTorch's 0.1.
  # 0: BN statistics over the global batch; k > 1: over k equal groups
  # (k = device count reproduces pmap-era per-device BN).
  c.model.bn_groups = 0
  c.model.dtype = 'float32'  # Compute dtype; 'bfloat16' on GPU/TPU.

  c.data = default_data_config()
  # 'tfds' | 'synthetic' | 'tiny_imagenet' | 'folder' (your own images:
  # data.folder_root/{train,val}/<class>/*.jpg|png; see se_flax/data/folder.py)
  c.data.source = 'tfds'
  # 'synthetic': random pixels, no TensorFlow.
  c.data.synthetic_num_classes = 1000
  c.data.synthetic_train_examples = 1_281_167
  c.data.synthetic_eval_examples = 50_000
  # 'tiny_imagenet': ImageNet-format archives made on the spot (or reused)
  # under `root`, prepared by TFDS's own imagenet2012 builder.
  c.data.tiny = ml_collections.ConfigDict(
      dict(
          root='/tmp/se_flax_tiny_imagenet',
          num_classes=10,
          train_per_class=60,
          val_per_class=17,
          image_size=96,
      )
  )

  c.batch_size = 1024  # Global, over all devices and processes.
  c.eval_batch_size = placeholder(int)  # None: batch_size.
  c.num_epochs = 100.0
  c.num_train_steps = -1  # > 0 overrides num_epochs (smoke runs, tests).

  c.optimizer = 'sgd'
  c.learning_rate = 0.15  # Per 256 images: 0.6 at the paper's 1024.
  c.momentum = 0.9
  c.nesterov = False
  # Not stated in the paper; 1e-4 is the Caffe ResNet/SENet solver value.
  c.weight_decay = 1e-4
  c.weight_decay_se = True  # Decay the SE FC kernels too.
  c.lr_schedule = 'step'  # 'step' | 'cosine'
  c.lr_decay_epochs = (30, 60, 90)
  c.lr_decay_factor = 0.1
  c.warmup_epochs = 0.0
  c.label_smoothing = 0.0
  c.ema_decay = 0.0  # > 0 keeps (and evaluates) an EMA of the weights.
  # Fine-tuning (configs/finetune.py). `init_from`: anything
  # se_flax.load_pretrained takes (a hub tag, a weights file, a training
  # workdir); read only when the run starts fresh, never on resume.
  c.init_from = placeholder(str)
  # True: leaves outside the head that are missing or reshaped keep their
  # fresh initialisation, unexpected ones are ignored (logged); False: error.
  c.init_allow_mismatch = False
  # Learning rate of everything but the head (`fc`), relative to the head's.
  c.backbone_lr_multiplier = 1.0
  # BN normalises with its running statistics in training too and never
  # updates them (PyTorch's bn.eval()); scale and bias still train.
  c.freeze_bn_stats = False
  # N > 0: the stem and the network's stage<k>_ modules with k <= N get no
  # parameter updates (nor decay, momentum); numbering is the family's own
  # (ResNets: stage1_..stage4_). Their BN statistics still update unless
  # freeze_bn_stats.
  c.freeze_stages = 0
  # A step with a non-finite loss, gradient or new state (or one whose
  # squared norm overflows float32) is never applied: 'skip' it (counted
  # in train/skipped_steps) | 'stop' the run within nonfinite.MAX_LAG
  # steps, saving nothing after it.
  c.nonfinite = 'skip'

  c.log_every_steps = 100
  c.eval_every_epochs = 1.0
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.async_checkpoints = True
  c.prefetch_batches = 2
  # Multi-process runs agree on a SIGTERM every this many steps (a
  # cross-host round trip); a preempted pod saves at most this many steps
  # after the signal. One process checks every step.
  c.preemption_check_every_steps = 10
  # Restarting a workdir: run-defining fields (resume.py) that may differ
  # from the stored run, comma-separated ('batch_size,seed'), or 'all'.
  c.resume_allow_changes = ''
  # Checkpoints exist but none is intact: False refuses to start; True
  # moves them to corrupt/ and trains from scratch.
  c.start_fresh_if_no_intact_checkpoint = False

  # Multi-host (multihost.initialize_distributed). Unset `enabled`: on when
  # a coordinator is named, under SLURM / Open MPI with several tasks, or
  # on a TPU VM. Unset fields come from JAX_* variables or the cluster.
  c.distributed = ml_collections.ConfigDict()
  c.distributed.enabled = placeholder(bool)
  c.distributed.coordinator_address = placeholder(str)
  c.distributed.num_processes = -1
  c.distributed.process_id = -1
  # 'all': every local GPU in this process (one process per node); '0,1':
  # those; unset: JAX's choice (SLURM: one GPU per task, SLURM_LOCALID).
  c.distributed.local_device_ids = placeholder(str)
  # A process that dies makes the others fail after about this long.
  c.distributed.heartbeat_timeout_seconds = 100
  c.distributed.cpu_collectives = placeholder(str)  # 'gloo' for CPU tests.

  # Persistent XLA compilation cache (local path or gs://): a requeued or
  # resumed run reuses the compiled steps instead of compiling again.
  c.compilation_cache_dir = placeholder(str)
  # 'auto': the CPU derivative rules on the CPU backend (fast, the same
  # function); 'off': plain Flax layers (se_flax.layers.rules).
  c.layer_rules = 'auto'
  return c


_SE_FIELDS = {
    'se_reduction': 'reduction',
    'se_squeeze': 'squeeze',
    'se_gate': 'gate',
    'se_use_bias': 'use_bias',
}
_MODEL_FIELDS = (
    'se_position',
    'se_stages',
    'se_blocks_off',
    'drop_rate',
    'zero_init_last_bn',
)


def from_stored(stored: dict) -> ml_collections.ConfigDict:
  """A run's stored config.json (a dict) over today's `base_config()`.

  For reading a finished run (its model and data), not for resuming it:
  fields an older run lacks keep today's defaults, fields today's config
  no longer has are dropped, nested sections merge field by field, and
  JSON lists become tuples unless the default is a list.
  """
  config = base_config()

  def merge(target: ml_collections.ConfigDict, values: dict) -> None:
    for key, value in values.items():
      if key not in target:
        continue
      default = target[key]
      if isinstance(default, ml_collections.ConfigDict):
        if isinstance(value, dict):
          merge(default, value)
      elif isinstance(value, list) and not isinstance(default, list):
        target[key] = tuple(value)
      else:
        target[key] = value

  merge(config, stored)
  return config


def load_stored(workdir: str) -> ml_collections.ConfigDict:
  """`from_stored` of a training workdir's config.json (a path or a URL)."""
  path = paths.workdir_path(workdir) / 'config.json'
  if not path.is_file():
    raise FileNotFoundError(f'{workdir} has no config.json (not a run?)')
  return from_stored(json.loads(path.read_text(encoding='utf-8')))


def build_model(config: ml_collections.ConfigDict, num_classes: int):
  """The registry model with the config's overrides (validated there)."""
  m = config.model
  overrides = {k: m[k] for k in _MODEL_FIELDS if m[k] is not None}
  se_fields = {v: m[k] for k, v in _SE_FIELDS.items() if m[k] is not None}
  if not m.se:
    if se_fields:
      raise ValueError(
          f'config.model.se is False but SE fields are set: '
          f'{sorted(se_fields)}'
      )
    overrides['se'] = None
  elif se_fields:
    overrides['se'] = se_fields
  return registry.create_model(
      m.name,
      num_classes=num_classes,
      bn_momentum=m.bn_momentum,
      dtype=jnp.dtype(m.dtype),
      **overrides,
  )


def _validate_data(config: ml_collections.ConfigDict, check) -> None:
  """The data fields; the folder layout itself is checked by its scan."""
  from se_flax.train.inputs import SOURCES  # pylint: disable=g-import-not-at-top

  data = config.data
  check(
      data.source in SOURCES,
      'data.source',
      f'{data.source!r} is not one of {SOURCES}',
  )
  if data.source == 'folder':
    check(
        isinstance(data.get('folder_root'), str) and data.folder_root.strip(),
        'data.folder_root',
        'must name ROOT (holding train/<class>/* and val/<class>/*) when '
        f"data.source is 'folder', got {data.get('folder_root')!r}",
    )
  for field in ('image_size', 'eval_image_size'):
    size = data.get(field)
    check(
        (size is None and field == 'eval_image_size')
        or (isinstance(size, int) and size > 0),
        f'data.{field}',
        f'{size!r} must be a positive number of pixels',
    )
  check(
      0.0 < data.crop_pct <= 1.0,
      'data.crop_pct',
      f'{data.crop_pct!r} must be in (0, 1]',
  )


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Fails fast, before any compilation, naming the offending field."""

  def check(ok, field, message):
    if not ok:
      raise ValueError(f'config.{field}: {message}')

  if config.get('layer_rules') not in layers.LAYER_RULES:
    check(
        False,
        'layer_rules',
        f'must be one of {layers.LAYER_RULES}, got '
        f'{config.get("layer_rules")!r}',
    )
  devices = jax.device_count()
  eval_batch = config.eval_batch_size or config.batch_size
  check(
      config.batch_size > 0 and config.batch_size % devices == 0,
      'batch_size',
      f'{config.batch_size} must be a positive multiple of '
      f'the {devices} devices',
  )
  check(
      eval_batch % devices == 0,
      'eval_batch_size',
      f'{eval_batch} must be a multiple of the {devices} devices',
  )
  check(
      config.model.name in registry.list_models(),
      'model.name',
      f'unknown model {config.model.name!r}; see se_flax.list_models()',
  )
  groups = config.model.bn_groups
  check(
      groups <= 1 or config.batch_size % groups == 0,
      'model.bn_groups',
      f'{groups} groups do not divide batch_size {config.batch_size}',
  )
  check(
      config.model.dtype in ('float32', 'bfloat16'),
      'model.dtype',
      f"{config.model.dtype!r}: use 'bfloat16' (same range as float32, "
      "no loss scaling needed) or 'float32'"
      + (
          '; float16 would need loss scaling, which this trainer does not ' 'do'
          if config.model.dtype == 'float16'
          else ''
      ),
  )
  check(
      config.lr_schedule in ('step', 'cosine'),
      'lr_schedule',
      f"{config.lr_schedule!r} is not 'step' or 'cosine'",
  )
  check(
      config.nonfinite in ('skip', 'stop'),
      'nonfinite',
      f"{config.nonfinite!r} is not 'skip' or 'stop'",
  )
  check(0.0 <= config.ema_decay < 1.0, 'ema_decay', 'must be in [0, 1)')
  _validate_finetune(config, check)
  check(
      config.preemption_check_every_steps > 0,
      'preemption_check_every_steps',
      'must be positive',
  )
  check(
      0.0 <= config.label_smoothing < 1.0,
      'label_smoothing',
      'must be in [0, 1)',
  )
  check(
      config.num_train_steps > 0 or config.num_epochs > 0,
      'num_epochs',
      'set num_epochs or num_train_steps',
  )
  _validate_data(config, check)
  # Building the module checks the model fields, still without compiling.
  build_model(config, num_classes=2)


def _validate_finetune(config: ml_collections.ConfigDict, check) -> None:
  init_from = config.get('init_from')
  check(
      init_from is None or (isinstance(init_from, str) and init_from.strip()),
      'init_from',
      f'{init_from!r}: give a hub tag, a weights file or a workdir, or unset',
  )
  multiplier = config.get('backbone_lr_multiplier', 1.0)
  check(
      isinstance(multiplier, (int, float)) and 0.0 <= multiplier < math.inf,
      'backbone_lr_multiplier',
      f'{multiplier!r} must be a finite number >= 0 (0: only the head '
      "trains; 1: the head's learning rate)",
  )
  stages = config.get('freeze_stages', 0)
  check(
      isinstance(stages, int) and stages >= 0,
      'freeze_stages',
      f'{stages!r} must be an int >= 0 (0: nothing frozen)',
  )
  if stages:
    model = build_model(config, num_classes=2)
    size = config.data.image_size
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    shapes = jax.eval_shape(
        lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x
    )
    try:
      optim.param_groups(shapes['params'], stages)
    except ValueError as e:
      check(False, 'freeze_stages', f'{e} ({config.model.name})')
