"""What the TFDS and folder sources share, from raw examples to numpy batches.

A source (`pipeline.py`: TFDS records; `folder.py`: image files) makes a
tf.data stream of raw examples, position-numbered for training; from there
on one implementation serves both:

  augmentation: the example at position i of process p is augmented with
    the stateless seed fold(fold((seed, p), 0), i) (`seed_roots`), so a
    batch is a function of (seed, step, process count) alone;
  `train_batches`: per-example decode and augment, an example that fails
    caught per example, counted, and its slot given a copy of another
    example of the batch (`records.fill_failed`);
  `eval_batches`: the process's examples, then padding to `num_batches`
    full batches; mask = real and decoded;
  `TrainIterator` / `EvalIterable`: the numpy side, counting and logging
    bad examples (by file path where the source has one).
"""

import dataclasses
import functools
from typing import Callable, Dict, Iterator, Optional, Tuple

from absl import logging
import numpy as np
import tensorflow as tf

from se_flax.data import ops
from se_flax.data import records

_LOG_FIRST_SKIPS = 10  # then every 100th
_fold = tf.random.experimental.stateless_fold_in


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Split sizes, label count and label names of the configured dataset.

  label_names[i] names label i where the source knows names (a TFDS
  ClassLabel, the folder source's class folders); else None.
  """

  num_train_examples: int
  num_eval_examples: int
  num_classes: int
  label_names: Optional[Tuple[str, ...]] = None


def local_batch(global_batch_size: int, process_count: int) -> int:
  """Examples per process and step; process_count must divide the batch."""
  if global_batch_size % process_count:
    raise ValueError(
        f'global_batch_size={global_batch_size} is not divisible by '
        f'process_count={process_count}.'
    )
  return global_batch_size // process_count


def seed_roots(seed: int, process_index: int) -> Tuple[tf.Tensor, tf.Tensor]:
  """(augmentation root, order root): int64 [2] stateless seeds.

  Position i's augmentation seed is fold_in(augmentation root, i); epoch
  e's order seed is derived from fold_in(order root, e).
  """
  root = tf.constant([seed, process_index], tf.int64)
  return _fold(root, 0), _fold(root, 1)


def augmentation_seed(augment_root: tf.Tensor, position) -> tf.Tensor:
  return _fold(augment_root, position)


def train_preprocess_fn(data_config, *, jpeg: Optional[bool]):
  """(image bytes, int [2] seed) -> uint8 [S, S, 3]; see ops.train_preprocess.

  jpeg: see `ops.decode_and_crop` (None: judged per image, by content).
  """
  return functools.partial(
      ops.train_preprocess,
      image_size=data_config.image_size,
      min_area=data_config.min_area,
      aspect_ratio=tuple(data_config.aspect_ratio),
      max_attempts=data_config.max_attempts,
      interpolation=data_config.interpolation,
      antialias=data_config.antialias,
      random_rotation=data_config.random_rotation,
      pixel_jitter=data_config.pixel_jitter,
      jpeg=jpeg,
      rand_augment=data_config.rand_augment,
  )


def eval_image_size(data_config) -> int:
  return data_config.eval_image_size or data_config.image_size


def eval_preprocess_fn(data_config, *, jpeg: Optional[bool]):
  """image bytes -> uint8 [S, S, 3] centre crop; see ops.eval_preprocess."""
  return functools.partial(
      ops.eval_preprocess,
      image_size=eval_image_size(data_config),
      crop_pct=data_config.crop_pct,
      interpolation=data_config.interpolation,
      antialias=data_config.antialias,
      jpeg=jpeg,
  )


def blank(size: int) -> Dict[str, tf.Tensor]:
  """Stand-in for an undecodable example; never reaches the metrics."""
  return {
      'image': tf.zeros([size, size, 3], tf.uint8),
      'label': tf.constant(0, tf.int32),
  }


def options(data_config) -> tf.data.Options:
  opts = tf.data.Options()
  opts.deterministic = True
  # Parallelism comes from tf.data's threads, one image per thread.
  opts.threading.max_intra_op_parallelism = 1
  if data_config.threads:
    opts.threading.private_threadpool_size = data_config.threads
  return opts


def _lost(batch: dict) -> tf.Tensor:
  """bool [b]: rows that stand in for records lost to a damaged file."""
  if 'lost_from' not in batch:
    return tf.zeros_like(batch['ok'])
  return batch['lost_from'] != ''


def _with_bad_paths(out: dict, batch: dict, bad: tf.Tensor) -> dict:
  """Moves the source's per-row 'path' (if any) to 'undecodable' [k]."""
  if 'path' in batch:
    out['undecodable'] = tf.boolean_mask(batch.pop('path'), bad)
  return out


def train_batches(
    ds: tf.data.Dataset,
    decode: Callable[..., dict],
    fallback: Callable[..., dict],
    *,
    data_config,
    batch_size: int,
    prepare_batch: Callable[..., tuple] = lambda *x: x,
) -> tf.data.Dataset:
  """Decoded training batches of `ds`; undecodable rows take copies.

  Args:
    ds: raw examples (tuples), in stream order.
    decode: prepared example -> {'image': uint8 [S, S, 3], 'label': int32,
      optional 'path': tf.string, the file; optional 'lost_from':
      tf.string, b'' or the damaged record file it stands in for}; may
      fail.
    fallback: raw example -> a dict like decode's (`blank` plus the rest).
    data_config: `config.data` (parallelism, prefetch, threads).
    batch_size: examples per batch (this process's).
    prepare_batch: see `records.map_and_batch_catching_errors`.

  Returns:
    tf.data.Dataset of {'image', 'label', 'num_skipped': int32 []} plus
    'undecodable' (tf.string [k], the files that failed) if decode gives
    'path', and 'lost_from' (tf.string [k]) if it gives 'lost_from'.
  """
  ds = records.map_and_batch_catching_errors(
      ds,
      decode,
      fallback,
      batch_size=batch_size,
      num_parallel_calls=data_config.num_parallel_calls,
      prepare_batch=prepare_batch,
  )

  def fill(batch):
    batch = dict(batch)
    lost = _lost(batch)
    out = _with_bad_paths({}, batch, ~batch['ok'] & ~lost)
    if 'lost_from' in batch:
      out['lost_from'] = tf.boolean_mask(batch.pop('lost_from'), lost)
    batch['ok'] &= ~lost  # stand-ins decode, but are failed rows too
    batch = records.fill_failed(batch)
    num_lost = tf.reduce_sum(tf.cast(lost, tf.int32))
    return {**batch, **out, 'num_skipped': batch['num_skipped'] - num_lost}

  ds = ds.map(fill).prefetch(data_config.prefetch)
  return ds.with_options(options(data_config))


def eval_batches(
    ds: tf.data.Dataset,
    pad: tuple,
    decode: Callable[..., dict],
    fallback: Callable[..., dict],
    *,
    data_config,
    batch_size: int,
    num_pad: int,
    prepare_batch: Callable[..., tuple] = lambda *x: x,
) -> tf.data.Dataset:
  """The process's examples once, padded with `num_pad` masked ones.

  Args:
    ds: raw examples (tuples) of this process.
    pad: a raw example (tuple of tensors) for the padding.
    decode: (*prepared example, real: bool) -> dict as for
      `train_batches`; padding has real False (decode may skip the work).
    fallback: (*raw example, real) -> a dict like decode's.
    data_config: `config.data`.
    batch_size: examples per batch (this process's).
    num_pad: padding examples; the total must be a multiple of the batch.
    prepare_batch: batched raw tuple -> batched prepared tuple.

  Returns:
    tf.data.Dataset of {'image', 'label', 'mask': bool [b],
    'num_skipped': int32 []} (+ 'undecodable', 'lost_from' as for
    `train_batches`); mask is False for padding, undecodable examples and
    lost records.
  """
  ds = ds.map(lambda *raw: (*raw, True))
  ds = ds.concatenate(
      tf.data.Dataset.from_tensors((*pad, tf.constant(False))).repeat(num_pad)
  )

  def with_real(f):
    return lambda *x: {**f(*x), 'real': x[-1]}

  ds = records.map_and_batch_catching_errors(
      ds,
      with_real(decode),
      with_real(fallback),
      batch_size=batch_size,
      num_parallel_calls=data_config.num_parallel_calls,
      prepare_batch=lambda *raw: (*prepare_batch(*raw[:-1]), raw[-1]),
  )

  def to_mask(batch):
    batch = dict(batch)
    lost = _lost(batch)
    ok, real = batch.pop('ok'), batch.pop('real')
    out = _with_bad_paths({}, batch, real & ~ok)
    if 'lost_from' in batch:
      out['lost_from'] = tf.boolean_mask(batch.pop('lost_from'), lost)
    return {
        **batch,
        **out,
        'mask': ok & real & ~lost,
        'num_skipped': tf.reduce_sum(tf.cast(real & ~ok, tf.int32)),
    }

  ds = ds.map(to_mask).prefetch(data_config.prefetch)
  return ds.with_options(options(data_config))


def _log_skips(kind: str, step: int, new: int, total: int, paths=()) -> None:
  if paths:  # each file once per iterator: it fails again every epoch
    logging.warning(
        '%s input: could not decode %s (skipped).',
        kind.capitalize(),
        ', '.join(paths),
    )
  if total - new < _LOG_FIRST_SKIPS or total // 100 > (total - new) // 100:
    logging.warning(
        '%s input: %d undecodable image(s) in batch %d; %d skipped so far.',
        kind.capitalize(),
        new,
        step,
        total,
    )


def _new_paths(batch: dict, seen: set) -> list:
  paths = sorted({p.decode() for p in batch.pop('undecodable', ())} - seen)
  seen.update(paths)
  return paths


DamageFn = Callable[[np.ndarray, int], int]


class TrainIterator:
  """Numpy training batches of one process, forever.

  Attributes:
    info: `DatasetInfo` of the dataset.
    step: global step of the next batch.
    num_skipped: undecodable images met so far by this process.
    num_corrupt_records: records lost to damaged record files met so far by
      this process (TFDS only; see `pipeline`).
    undecodable_paths: files that failed to decode so far (sources with
      files only; each is also counted in num_skipped every epoch).
  """

  def __init__(
      self,
      ds: tf.data.Dataset,
      info: DatasetInfo,
      start_step: int,
      *,
      damage: Optional[DamageFn] = None,
  ):
    self._it = ds.as_numpy_iterator()
    self._damage = damage
    self.info = info
    self.step = start_step
    self.num_skipped = 0
    self.num_corrupt_records = 0
    self.undecodable_paths = set()

  @property
  def num_train_examples(self) -> int:
    return self.info.num_train_examples

  @property
  def num_classes(self) -> int:
    return self.info.num_classes

  def __iter__(self) -> 'TrainIterator':
    return self

  def __next__(self) -> Dict[str, np.ndarray]:
    batch = next(self._it)
    lost_from = batch.pop('lost_from', None)
    if lost_from is not None and lost_from.size:
      self.num_corrupt_records += self._damage(lost_from, self.step)
    paths = _new_paths(batch, self.undecodable_paths)
    skipped = int(batch.pop('num_skipped'))
    if skipped:
      self.num_skipped += skipped
      _log_skips('train', self.step, skipped, self.num_skipped, paths)
    self.step += 1
    return batch


class EvalIterable:
  """One process's eval batches; iterate once per evaluation.

  Every pass yields `num_batches` batches {'image': uint8 [B, S, S, 3],
  'label': int32 [B], 'mask': bool [B]}; the same number on every process.

  Attributes:
    num_examples: real examples in the whole split (all processes).
    num_local_examples: real examples of this process.
    num_batches: batches per pass, equal on all processes.
    num_skipped: undecodable images in the last pass (this process); they
      are masked out, so a metric then covers num_examples - num_skipped
      (summed over processes) and the loop says so.
    undecodable_paths: their files in the last pass (sources with files).
  """

  def __init__(
      self,
      ds: tf.data.Dataset,
      num_examples: int,
      num_local_examples: int,
      num_batches: int,
      *,
      damage: Optional[DamageFn] = None,
  ):
    self._ds = ds
    self._damage = damage
    self.num_examples = num_examples
    self.num_local_examples = num_local_examples
    self.num_batches = num_batches
    self.num_skipped = 0
    self.undecodable_paths = set()

  def __len__(self) -> int:
    return self.num_batches

  def __iter__(self) -> Iterator[Dict[str, np.ndarray]]:
    self.num_skipped = 0
    self.undecodable_paths = set()
    for step, batch in enumerate(self._ds.as_numpy_iterator()):
      lost_from = batch.pop('lost_from', None)
      if lost_from is not None and lost_from.size:
        self._damage(lost_from, step)  # raises
      paths = _new_paths(batch, self.undecodable_paths)
      skipped = int(batch.pop('num_skipped'))
      if skipped:
        self.num_skipped += skipped
        _log_skips('eval', step, skipped, self.num_skipped, paths)
      yield batch
