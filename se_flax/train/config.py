"""Every field a training run can vary, and its default.

Configs in `configs/` start from `base_config()` and change what their
recipe needs; `train.py` locks the result, so a misspelt override fails.
`build_model` turns its `model` fields into the registry's Module;
`validation.validate_config` checks a config before anything compiles.
Durations are in epochs (converted to steps in code, from the dataset size
and the global batch), so `--config.batch_size=...` keeps them right.
"""

import os
from typing import Optional

import jax.numpy as jnp
import ml_collections
from ml_collections.config_dict import placeholder

from se_flax.data.config import default_data_config
from se_flax.models import registry
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
  # Stochastic depth (timm's drop_path_rate): the rate of the last block,
  # linear in the block index from 0; ResNet-family networks.
  c.model.drop_path_rate = placeholder(float)
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

  c.optimizer = 'sgd'  # 'sgd' | 'lamb' (timm's Lamb, train/lamb.py)
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
  # `learning_rate` is the rate at `lr_base_batch_size` images, scaled to
  # `batch_size` by 'linear' (SGD) or 'sqrt' (timm's rule for LAMB).
  c.lr_base_batch_size = 256
  c.lr_scaling = 'linear'
  # 'softmax' cross entropy | 'bce': timm's BinaryCrossEntropy (ResNet
  # strikes back), targets > `bce_target_threshold` become 1 when it is set.
  c.loss = 'softmax'
  c.bce_target_threshold = placeholder(float)
  # timm's batch Mixup/CutMix on the device (train/mixup.py); off while both
  # alphas are 0. `label_smoothing` is folded into its soft targets.
  c.mixup = ml_collections.ConfigDict(
      dict(mixup_alpha=0.0, cutmix_alpha=0.0, prob=1.0, switch_prob=0.5)
  )
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
    'drop_path_rate',
    'zero_init_last_bn',
)


def from_stored(stored: dict) -> ml_collections.ConfigDict:
  """A run's stored config.json (a dict) over today's `base_config()`.

  For reading a finished run (its model and data), not for resuming it:
  fields an older run lacks keep today's defaults, fields today's config
  no longer has are dropped, nested sections merge field by field, and
  JSON lists become tuples unless the default is a list. A value of the
  wrong type raises ValueError naming its field.
  """
  config = base_config()

  def merge(target: ml_collections.ConfigDict, values: dict, at: str):
    for key, value in values.items():
      if key not in target:
        continue
      default = target[key]
      if isinstance(default, ml_collections.ConfigDict):
        if isinstance(value, dict):
          merge(default, value, f'{at}{key}.')
      elif isinstance(value, list) and not isinstance(default, list):
        target[key] = tuple(value)
      else:
        try:
          target[key] = value
        except TypeError as e:  # ConfigDict keeps each field's type.
          raise ValueError(f'field {at}{key}: {e}') from None

  if not isinstance(stored, dict):
    raise ValueError(
        f'a stored config must be a JSON object, not {type(stored).__name__}'
    )
  merge(config, stored, '')
  return config


def load_stored(workdir: str) -> ml_collections.ConfigDict:
  """`from_stored` of a training workdir's config.json (a path or a URL)."""
  path = paths.workdir_path(workdir) / 'config.json'
  if not path.is_file():
    raise FileNotFoundError(f'{workdir} has no config.json (not a run?)')
  stored = paths.read_json(path)
  try:
    return from_stored(stored)
  except ValueError as e:
    raise ValueError(f'{path}: unusable run config ({e})') from None


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


def _absolute(path: Optional[str], resolve: bool = False) -> Optional[str]:
  if not path or paths.is_url(path):
    return path
  path = os.path.abspath(os.path.expanduser(path))
  return os.path.realpath(path) if resolve else path


def with_absolute_paths(
    config: ml_collections.ConfigDict,
) -> ml_collections.ConfigDict:
  """A copy whose local paths are absolute, so that config.json names what
  a run read wherever a restart is launched from. The image folder's root
  is resolved (symlinks too): it is part of the run's identity
  (resume.fingerprint). `init_from` only where it names an existing path
  (else it is a hub tag)."""
  config = config.copy_and_resolve_references()
  data = config.data
  data.folder_root = _absolute(data.folder_root, resolve=True)
  data.data_dir = _absolute(data.data_dir)
  data.manual_dir = _absolute(data.manual_dir)
  if 'tiny' in data:
    data.tiny.root = _absolute(data.tiny.root)
  config.compilation_cache_dir = _absolute(config.compilation_cache_dir)
  if config.init_from and os.path.exists(os.path.expanduser(config.init_from)):
    config.init_from = _absolute(config.init_from)
  return config
