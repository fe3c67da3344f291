"""Chooses the input source named by `config.data.source`.

'tfds' and 'tiny_imagenet' use the tf.data pipeline (imported only then);
'synthetic' needs no TensorFlow. All sources yield the same per-process
batches: `image` uint8 NHWC, `label` int32, plus `mask` for eval.
"""

import dataclasses
from typing import Callable, Iterable, Iterator

import jax
import ml_collections
import numpy as np


@dataclasses.dataclass
class Inputs:
  """What the loop needs from a data source.

  `train(start_step)` gives the batches from global step `start_step` on;
  `eval()` one padded pass over the eval split.
  """
  num_train_examples: int
  num_eval_examples: int
  num_classes: int
  image_size: int
  train: Callable[[int], Iterator[dict]]
  eval: Callable[[], Iterable[dict]]


def create_inputs(config: ml_collections.ConfigDict) -> Inputs:
  data = config.data
  eval_batch = config.eval_batch_size or config.batch_size
  process = dict(process_index=jax.process_index(),
                 process_count=jax.process_count())
  if data.source == 'synthetic':
    return _synthetic_inputs(config, eval_batch, **process)
  if data.source not in ('tfds', 'tiny_imagenet'):
    raise ValueError("config.data.source must be 'tfds', 'synthetic' or "
                     f"'tiny_imagenet', got {data.source!r}")
  from se_flax.data import pipeline  # TensorFlow from here on.
  if data.source == 'tiny_imagenet':
    data = _with_tiny_imagenet(data)
  info = pipeline.dataset_info(data)
  eval_iterable = pipeline.create_eval_iterator(
      data, global_batch_size=eval_batch, **process)
  return Inputs(
      num_train_examples=info.num_train_examples,
      num_eval_examples=info.num_eval_examples,
      num_classes=info.num_classes,
      image_size=data.image_size,
      train=lambda start_step: pipeline.create_train_iterator(
          data, global_batch_size=config.batch_size, seed=config.seed,
          start_step=start_step, **process),
      eval=lambda: eval_iterable)


def _with_tiny_imagenet(data: ml_collections.ConfigDict):
  """Makes (or reuses) the tiny ImageNet and points the config at it."""
  from se_flax.data.tiny_imagenet import make_tiny_imagenet
  tiny = data.tiny
  make = lambda: make_tiny_imagenet(
      tiny.root, num_classes=tiny.num_classes,
      train_per_class=tiny.train_per_class, val_per_class=tiny.val_per_class,
      image_size=tiny.image_size)
  if jax.process_index() == 0:
    data_dir, manual_dir = make()
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices('tiny_imagenet_ready')
    data_dir, manual_dir = make()  # Reuses the copy process 0 made.
  data = ml_collections.ConfigDict(data.to_dict())
  data.data_dir, data.manual_dir = data_dir, manual_dir
  return data


def _synthetic_global_batch(seed: int, step: int, batch: int, size: int,
                            num_classes: int) -> dict:
  rng = np.random.default_rng([seed, step])
  return {'image': rng.integers(0, 256, (batch, size, size, 3), np.uint8),
          'label': rng.integers(0, num_classes, (batch,), np.int32)}


def _synthetic_inputs(config, eval_batch, *, process_index, process_count):
  """Random pixels, a function of (seed, step) alone, sliced per process.

  The global batch does not depend on the process count, so runs on one
  or many processes see the same data.
  """
  data = config.data
  size, classes = data.image_size, data.synthetic_num_classes
  for batch in (config.batch_size, eval_batch):
    if batch % process_count:
      raise ValueError(f'Batch size {batch} is not divisible by the '
                       f'{process_count} processes')

  def local(global_batch: dict, batch: int) -> dict:
    n = batch // process_count
    return {k: v[process_index * n:(process_index + 1) * n]
            for k, v in global_batch.items()}

  # A small pool of distinct batches, cycled: making pixels must not cost
  # more than the step being measured.
  pool = [_synthetic_global_batch(config.seed, i, config.batch_size, size,
                                  classes) for i in range(4)]

  def train(start_step: int) -> Iterator[dict]:
    step = start_step
    while True:
      yield local(pool[step % len(pool)], config.batch_size)
      step += 1

  def evaluate() -> Iterator[dict]:
    total = data.synthetic_eval_examples
    for i, start in enumerate(range(0, total, eval_batch)):
      batch = _synthetic_global_batch(config.seed + 1, i, eval_batch, size,
                                      classes)
      batch['mask'] = np.arange(start, start + eval_batch) < total
      yield local(batch, eval_batch)

  return Inputs(num_train_examples=data.synthetic_train_examples,
                num_eval_examples=data.synthetic_eval_examples,
                num_classes=classes, image_size=size, train=train,
                eval=evaluate)
