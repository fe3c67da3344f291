"""Pure, jit-able train and eval steps (no Python state, no host I/O).

Batches are dicts of global arrays sharded on the mesh's 'data' axis:
`image` uint8 (N, H, W, 3) NHWC, `label` int32 (N,), and for eval `mask`
bool (N,) marking real (not padding) examples. Images are normalised on
the device, so the host ships a quarter of the bytes of float32.
"""

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from se_flax import layers
from se_flax.data.normalize import normalize_images
from se_flax.train import losses
from se_flax.train import mixup as mixup_lib
from se_flax.train.state import TrainState


def cross_entropy(
    logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0
) -> jax.Array:
  """Per-example softmax cross entropy (N,) with optional label smoothing.

  `labels`: class indices (N,), or soft targets (N, C) (Mixup/CutMix's,
  smoothing already folded in: timm's SoftTargetCrossEntropy).
  """
  if labels.ndim == 2:
    targets = labels
  else:
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    if label_smoothing:
      targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def training_loss(
    logits: jax.Array,
    targets: jax.Array,
    *,
    loss: str = 'softmax',
    label_smoothing: float = 0.0,
    bce_target_threshold: Optional[float] = None,
) -> jax.Array:
  """The batch's mean loss. `targets`: class indices (N,) or soft (N, C).

  'softmax': cross entropy; 'bce': timm's BinaryCrossEntropy (mean over
  N x C), the loss of ResNet strikes back. Label smoothing applies to class
  indices only; soft targets carry their own (timm's mixup_target).
  """
  if loss == 'bce':
    return losses.binary_cross_entropy(
        logits, targets, label_smoothing, bce_target_threshold
    )
  return cross_entropy(logits, targets, label_smoothing).mean()


_BATCH_NORMS = (nn.BatchNorm, layers.BatchNorm)
_MIXUP_STREAM = 0x6D6978  # fold_in data for the Mixup key ('mix')


def mix_batch(
    config: mixup_lib.MixupConfig,
    key: jax.Array,
    images: jax.Array,
    labels: jax.Array,
    groups: int = 1,
):
  """Mixup/CutMix within each of `groups` equal slices of the batch.

  With one group per device (the data shards), every image is paired
  inside its own shard, with that shard's own lambda and box, as timm
  mixes each rank's batch: nothing crosses devices. Each slice is timm's
  batch Mixup (`mixup_lib.mixup`) with its own key from `key`.
  Returns (images, soft targets (N, classes) float32).
  """
  if groups <= 1:
    return mixup_lib.mixup(config, key, images, labels)
  shape = images.shape
  mixed, targets = jax.vmap(functools.partial(mixup_lib.mixup, config))(
      jax.random.split(key, groups),
      images.reshape((groups, -1) + shape[1:]),
      labels.reshape((groups, -1)),
  )
  return mixed.reshape(shape), targets.reshape((shape[0], -1))


def _bn_with_running_statistics(next_fun, args, kwargs, context):
  """Method interceptor: BatchNorm in training mode normalises with its
  running statistics and leaves them as they are (the eval-mode forward);
  every other module, dropout included, keeps its training behaviour."""
  module = context.module
  if (
      context.method_name != '__call__'
      or not isinstance(module, _BATCH_NORMS)
      or module.use_running_average
  ):
    return next_fun(*args, **kwargs)
  # The same module in eval mode, on this module's own variables: gradients
  # reach `scale` and `bias` through them.
  frozen = module.clone(parent=None, use_running_average=True)
  return frozen.apply(dict(module.variables), *args, **kwargs)


def _forward_train(
    model: nn.Module,
    variables,
    images,
    rng,
    bn_groups: int,
    freeze_bn_stats: bool = False,
):
  """Train-mode forward; returns (logits, new batch_stats).

  With `bn_groups` > 1 the batch is split into that many groups, each
  normalised with its own statistics (what per-device BN under pmap did);
  the running statistics are then averaged over the groups. With
  `freeze_bn_stats` BN uses the running statistics and they are returned
  unchanged (`bn_groups` then changes nothing).
  """

  def apply(x, key):
    return model.apply(
        variables, x, train=True, mutable=['batch_stats'], rngs={'dropout': key}
    )

  if freeze_bn_stats:
    with nn.intercept_methods(_bn_with_running_statistics):
      logits, _ = apply(images, rng)
    return logits, variables['batch_stats']
  if bn_groups <= 1:
    logits, updates = apply(images, rng)
    return logits, updates['batch_stats']
  grouped = images.reshape((bn_groups, -1) + images.shape[1:])
  keys = jax.random.split(rng, bn_groups)
  logits, updates = jax.vmap(apply)(grouped, keys)
  batch_stats = jax.tree_util.tree_map(
      lambda s: s.mean(0), updates['batch_stats']
  )
  return logits.reshape((-1,) + logits.shape[2:]), batch_stats


def squared_norm(tree) -> jax.Array:
  """Sum of squares of the floating-point leaves of `tree` (float32 scalar).

  Finite iff every leaf is finite and the sum of squares fits in float32
  (any |x| beyond ~1.8e19 overflows it): one pass per leaf, a whole-tree
  check that costs nothing extra where the norm is logged anyway.
  """
  leaves = [
      x
      for x in jax.tree_util.tree_leaves(tree)
      if jnp.issubdtype(x.dtype, jnp.inexact)
  ]
  if not leaves:
    return jnp.zeros((), jnp.float32)
  return sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves)


def train_step(
    state: TrainState,
    batch: dict,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: Callable,
    label_smoothing: float = 0.0,
    loss: str = 'softmax',
    bce_target_threshold: Optional[float] = None,
    mixup: Optional[mixup_lib.MixupConfig] = None,
    mixup_groups: int = 1,
    ema_decay: float = 0.0,
    bn_groups: int = 0,
    freeze_bn_stats: bool = False,
    dtype: Any = jnp.float32,
):
  """One optimizer step. Returns (new state, metrics of this step).

  `mixup`: timm's batch Mixup/CutMix (its `label_smoothing` folded into
  the soft targets) in each of `mixup_groups` slices of the batch (one per
  device: `mix_batch`), drawn from the step's key, so (seed, step, device
  count) fixes the batch; images are mixed in float32 after normalisation
  (the mix is affine, so before or after is the same), then cast to `dtype`.
  `loss`, `bce_target_threshold`: see `training_loss`.

  `freeze_bn_stats`: BN normalises with the running statistics and keeps
  them (and their EMA) bitwise unchanged; see `_forward_train`.

  A step whose loss, gradients or new state (parameters, BN statistics,
  optimizer state, EMA) are not all finite leaves the whole state
  unchanged and counts itself in `skipped_steps`; the data position
  (`step`) still advances. `metrics['finite']` says which happened.
  "Finite" is judged by each tree's squared norm, so a tree whose sum of
  squares overflows float32 (values beyond ~1e19: a diverged run) counts
  as non-finite too.
  """
  labels = batch['label']
  rng = jax.random.fold_in(state.rng, state.step)
  if mixup is None:
    images, targets = normalize_images(batch['image'], dtype), labels
  else:
    # A key of its own: dropout and drop path keep drawing from `rng`.
    mix_key = jax.random.fold_in(rng, _MIXUP_STREAM)
    images, targets = mix_batch(
        mixup,
        mix_key,
        normalize_images(batch['image'], jnp.float32),
        labels,
        mixup_groups,
    )
    images = images.astype(dtype)

  def loss_fn(params):
    variables = {'params': params, 'batch_stats': state.batch_stats}
    logits, batch_stats = _forward_train(
        model, variables, images, rng, bn_groups, freeze_bn_stats
    )
    value = training_loss(
        logits,
        targets,
        loss=loss,
        label_smoothing=label_smoothing,
        bce_target_threshold=bce_target_threshold,
    )
    return value, (logits, batch_stats)

  (value, (logits, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True
  )(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new = state.replace(
      params=params, batch_stats=batch_stats, opt_state=opt_state
  )
  if state.ema_params is not None:
    ema = lambda old, cur: ema_decay * old + (1.0 - ema_decay) * cur
    new = new.replace(
        ema_params=jax.tree_util.tree_map(ema, state.ema_params, params),
        ema_batch_stats=state.ema_batch_stats
        if freeze_bn_stats
        else jax.tree_util.tree_map(ema, state.ema_batch_stats, batch_stats),
    )
  # The new state too: a finite gradient can still meet a damaged
  # optimizer state or overflow in the update. Squared norms check each
  # tree in one pass, and two of them are metrics anyway.
  grads_sq, params_sq = squared_norm(grads), squared_norm(params)
  others_sq = squared_norm(
      (opt_state, batch_stats, new.ema_params, new.ema_batch_stats)
  )
  finite = (
      jnp.isfinite(value)
      & jnp.isfinite(grads_sq)
      & jnp.isfinite(params_sq)
      & jnp.isfinite(others_sq)
  )
  new = jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, state)
  new = new.replace(
      step=state.step + 1, skipped_steps=state.skipped_steps + (~finite)
  )
  metrics = {
      'loss': value,
      # Against each image's own label, also when Mixup mixed it.
      'top1': jnp.mean(jnp.argmax(logits, -1) == labels),
      'learning_rate': schedule(state.step),
      'l2_grads': jnp.sqrt(grads_sq),
      'l2_params': jnp.sqrt(params_sq),
      'finite': finite,
  }
  return new, metrics


def eval_step(
    variables, batch: dict, *, model: nn.Module, dtype: Any = jnp.float32
) -> dict:
  """Sums over the real examples of one padded batch (mask=False: padding)."""
  images = normalize_images(batch['image'], dtype)
  labels, mask = batch['label'], batch['mask']
  logits = model.apply(variables, images, train=False)
  loss = cross_entropy(logits, labels)
  # Fewer than 5 classes (a small fine-tuning task): top-5 is top-all.
  top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
  correct1 = top5[:, 0] == labels
  correct5 = jnp.any(top5 == labels[:, None], axis=-1)
  return {
      'loss_sum': jnp.sum(jnp.where(mask, loss, 0.0)),
      'top1_count': jnp.sum(correct1 & mask),
      'top5_count': jnp.sum(correct5 & mask),
      'count': jnp.sum(mask),
  }
