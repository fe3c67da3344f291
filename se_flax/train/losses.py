"""Binary cross-entropy as timm's `timm.loss.BinaryCrossEntropy`.

RSB trains with a sigmoid per class instead of a softmax: timm's
`train.py --bce-loss [--bce-target-thresh T]`. With Mixup/CutMix active
timm builds `BinaryCrossEntropy(target_threshold=T)`, and Mixup's soft
(N, C) targets, which already carry the label smoothing, reach it dense, so
its own smoothing (class default 0.1) is never applied. Without Mixup it
builds `BinaryCrossEntropy(smoothing=S, target_threshold=T)` and gets class
indices (N,), which it one-hot encodes with that smoothing.
"""

from typing import Optional

import jax
import jax.numpy as jnp
import optax


def bce_targets(
    labels: jax.Array,
    num_classes: int,
    smoothing: float = 0.0,
    target_threshold: Optional[float] = None,
) -> jax.Array:
  """timm's BCE targets (N, C) float32.

  Args:
    labels: class indices (N,) int, or dense targets (N, C) float (e.g. from
      Mixup/CutMix). A dense target is used as it is: no smoothing (timm's
      `smooth_dense=False`).
    num_classes: C.
    smoothing: for class indices only: off = smoothing / C,
      on = 1 - smoothing + off (each row then sums to 1, as the softmax
      label smoothing does; not towards 0.5).
    target_threshold: if set, targets > threshold become 1 and the others 0
      (strictly greater, as torch's `gt`).
  """
  if labels.ndim == 1:
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    # One-hot scaled and shifted: exactly `off` and `on`, as timm's scatter.
    targets = jnp.where(
        jax.nn.one_hot(labels, num_classes, dtype=jnp.bool_), on, off
    ).astype(jnp.float32)
  else:
    if labels.shape[-1] != num_classes:
      raise ValueError(
          f'dense targets {labels.shape} do not match {num_classes} classes'
      )
    targets = labels.astype(jnp.float32)
  if target_threshold is not None:
    targets = (targets > target_threshold).astype(jnp.float32)
  return targets


def binary_cross_entropy_per_example(
    logits: jax.Array,
    labels: jax.Array,
    smoothing: float = 0.0,
    target_threshold: Optional[float] = None,
) -> jax.Array:
  """Per-example BCE (N,): the mean over the C classes of each row.

  Its mean over the batch is `binary_cross_entropy`; kept per example so a
  step can weight or mask examples. Logits are computed in float32.
  """
  targets = bce_targets(labels, logits.shape[-1], smoothing, target_threshold)
  loss = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets)
  return loss.mean(axis=-1)


def binary_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    smoothing: float = 0.0,
    target_threshold: Optional[float] = None,
) -> jax.Array:
  """timm's `BinaryCrossEntropy(smoothing, target_threshold)(logits, labels)`.

  Args:
    logits: (N, C) pre-sigmoid scores.
    labels: class indices (N,) int, or dense soft targets (N, C).
    smoothing: label smoothing for class indices (see `bce_targets`); timm's
      class default is 0.1, but RSB's Mixup runs pass dense targets, which
      it leaves alone.
    target_threshold: binarize targets at this value (RSB: 0.2).

  Returns:
    Scalar float32: the mean over the N x C binary terms (timm's
    reduction='mean', no weight, no pos_weight).
  """
  return binary_cross_entropy_per_example(
      logits, labels, smoothing, target_threshold
  ).mean()
