"""Optimizer, learning-rate schedules, the weight-decay mask and the
parameter groups of fine-tuning (head, backbone, frozen stages)."""

import math
import re

import jax
import ml_collections
import optax

from se_flax.train import lamb

LR_SCALINGS = ('linear', 'sqrt')


def learning_rate(config: ml_collections.ConfigDict) -> float:
  """Peak learning rate at the run's global batch.

  `config.learning_rate` is the rate at `lr_base_batch_size` images
  (default 256), scaled to `batch_size` by `lr_scaling`: 'linear' (SGD's
  rule, Goyal et al.) or 'sqrt' (timm's rule for LAMB and Adam-type
  optimizers: rate x sqrt(batch / base)).
  """
  ratio = config.batch_size / config.get('lr_base_batch_size', 256)
  if config.get('lr_scaling', 'linear') == 'sqrt':
    return config.learning_rate * math.sqrt(ratio)
  return config.learning_rate * ratio


def create_schedule(
    config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.Schedule:
  """The learning-rate schedule, in steps.

  'step': multiply by `lr_decay_factor` at each epoch of
  `lr_decay_epochs` (paper: x0.1 every 30 epochs); 'cosine': linear warmup
  then cosine to zero over `num_epochs`. Both honour `warmup_epochs`.
  """
  peak = learning_rate(config)
  warmup = int(round(config.warmup_epochs * steps_per_epoch))
  total = int(math.ceil(config.num_epochs * steps_per_epoch))
  if config.lr_schedule == 'step':
    boundaries = {
        int(round(e * steps_per_epoch)): config.lr_decay_factor
        for e in config.lr_decay_epochs
    }
    main = optax.piecewise_constant_schedule(peak, boundaries)
  elif config.lr_schedule == 'cosine':
    main = optax.cosine_decay_schedule(peak, max(1, total - warmup))
  else:
    raise ValueError(
        f"lr_schedule must be 'step' or 'cosine', got "
        f'{config.lr_schedule!r}'
    )
  if not warmup:
    return main
  if config.lr_schedule == 'step':
    # Step boundaries stay in absolute epochs; warmup only ramps into them.
    ramp = lambda step: jax.numpy.minimum(1.0, (step + 1) / warmup)
    return lambda step: main(step) * ramp(step)
  return optax.join_schedules(
      [optax.linear_schedule(peak / warmup, peak, warmup), main], [warmup]
  )


def weight_decay_mask(params, decay_se: bool = True):
  """True for the leaves weight decay applies to.

  Kernels of convolutions and dense layers decay; BN scales/biases and all
  biases do not (the common ImageNet practice). SE FC kernels follow
  `decay_se` (the paper does not say; timm decays them).
  """

  def decays(path, leaf):
    names = [getattr(k, 'key', str(k)) for k in path]
    if names[-1] != 'kernel':
      return False
    in_se = any(n == 'se' or n.startswith('se_') for n in names)
    return decay_se or not in_se

  return jax.tree_util.tree_map_with_path(decays, params)


HEAD = 'fc'  # The classifier every se_flax network ends with.
_STAGE = re.compile(r'stage(\d+)_')


def param_groups(params, freeze_stages: int = 0):
  """'head' | 'backbone' | 'frozen' for each leaf of `params`.

  The head is `fc`. `freeze_stages` N > 0 freezes the modules before the
  stages (the stem: every top-level module other than `fc` and
  `stage<k>_*`) and the stages numbered up to N in the network's own
  numbering (`stage1_*`..`stageN_*` in ResNets).

  Raises:
    ValueError: `freeze_stages` > 0 on a network without `stage<k>_`
      modules, or larger than its last stage.
  """
  stages = {int(m.group(1)) for m in map(_STAGE.match, params) if m is not None}
  if freeze_stages > 0:
    if not stages:
      raise ValueError(
          f'freeze_stages={freeze_stages} needs a network built of '
          f'stage<k>_ modules (ResNet, MobileNet, ShuffleNet families); '
          f'this one has {sorted(params)}'
      )
    if freeze_stages > max(stages):
      raise ValueError(
          f'freeze_stages={freeze_stages}: the network has stages '
          f'{min(stages)}..{max(stages)}'
      )

  def group(module: str) -> str:
    if module == HEAD:
      return 'head'
    if freeze_stages <= 0:
      return 'backbone'
    stage = _STAGE.match(module)
    if stage is None or int(stage.group(1)) <= freeze_stages:
      return 'frozen'
    return 'backbone'

  return {
      module: jax.tree_util.tree_map(lambda _, g=group(module): g, subtree)
      for module, subtree in params.items()
  }


def create_optimizer(
    config: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
  """SGD or LAMB with masked weight decay.

  'sgd': (Nesterov) momentum with decay added to the gradient before
  momentum, as PyTorch's SGD does. 'lamb': timm's `Lamb` (`lamb.lamb`),
  ResNet strikes back's optimizer, with decay and trust ratio on the
  leaves `weight_decay_mask` picks. With `backbone_lr_multiplier` != 1 or
  `freeze_stages` > 0 the parameters form groups (`param_groups`): the
  head follows `schedule`, the backbone `backbone_lr_multiplier` times it
  (its update scaled, which is the optimizer at that learning rate: the
  update is linear in it; LAMB then clips each group's gradients on their
  own, where timm clips all together), and frozen leaves get zero updates,
  no decay and no momentum. Without either option the optimizer state has
  the plain layout (checkpoints of earlier runs restore).
  """
  decays = lambda p: weight_decay_mask(p, config.weight_decay_se)
  if config.optimizer == 'sgd':
    base = lambda: optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask=decays),
        optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov),
    )
  elif config.optimizer == 'lamb':
    base = lambda: lamb.lamb(
        schedule, weight_decay=config.weight_decay, weight_decay_mask=decays
    )
  else:
    raise ValueError(
        f"optimizer must be 'sgd' or 'lamb', got {config.optimizer!r}"
    )

  multiplier = config.get('backbone_lr_multiplier', 1.0)
  freeze_stages = config.get('freeze_stages', 0)
  if multiplier == 1.0 and not freeze_stages:
    return base()
  return optax.multi_transform(
      {
          'head': base(),
          'backbone': optax.chain(base(), optax.scale(multiplier)),
          'frozen': optax.set_to_zero(),
      },
      lambda params: param_groups(params, freeze_stages),
  )
