"""TFDS + tf.data input pipeline: per process, exactly-once eval, resumable.

    info = pipeline.dataset_info(config.data)   # num_train_examples, ...
    train = pipeline.create_train_iterator(
        config.data, global_batch_size=1024, seed=0, start_step=step,
        process_index=jax.process_index(), process_count=jax.process_count())
    batch = next(train)  # {'image': uint8 [B, H, W, 3], 'label': int32 [B]}
    evals = pipeline.create_eval_iterator(
        config.data, global_batch_size=1000,
        process_index=jax.process_index(), process_count=jax.process_count())
    for batch in evals: ...  # + 'mask': bool [B]; evals.num_examples real

B = global_batch_size // process_count. Images stay uint8 (normalise on the
device with `se_flax.data.normalize_images`).

Sharding: process p reads only `tfds.split_for_jax_process(split, p, P)`,
TFDS's even split (sizes differ by at most one), so the processes together
read every example once.

Training stream (what makes resumption exact): process p's examples are
numbered by position i = 0, 1, ... over consecutive epochs of n_p examples.
Epoch e reads the shard's record files in an order seeded by (seed, p, e),
interleaved, through a shuffle buffer seeded likewise; example i is
augmented with the stateless seed (seed, p, i), and the batch of step s holds
positions [s B, (s + 1) B). So the batch of step s is a function of (seed, s,
P) alone; a checkpoint stores only the step. Resuming at step S starts at
epoch S B // n_p and skips S B % n_p records before anything is decoded
(a mid-epoch resume re-reads, but does not decode, that many records).
Changing P changes the stream.

Evaluation (the paper's single-crop protocol): the shorter side is resized to
eval_image_size / crop_pct (256 for 224 at 0.875) and the centre
eval_image_size square is kept; this is done as the equivalent centre crop of
crop_pct of the shorter side, decoded and resized in one step. Each process
pads its part with masked examples to the same number of full batches, so
the jitted step never recompiles, processes never wait on each other, and
sum(mask) over all processes is the split size.

Bad data: an image that fails to decode (or a record that fails to parse) is
caught per example, counted and logged. In eval its mask is False. In
training its slot takes a copy of another example of the same batch, which
keeps batch shapes and the step -> batch mapping intact; a batch with no
decodable image at all is an error.
"""

import dataclasses
import functools
import math
from typing import Any, Callable, Dict, Iterator

from absl import logging
import numpy as np

from se_flax.data import ops
from se_flax.data import prepare
from se_flax.data import tf_setup

_AUTOTUNE = -1
_MAX_EPOCHS = 1 << 40
_LOG_FIRST_SKIPS = 10  # then every 100th


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Split sizes and label count of the configured dataset."""

  num_train_examples: int
  num_eval_examples: int
  num_classes: int


class DataNotFoundError(FileNotFoundError):
  """The TFDS dataset is not prepared where the config points."""


def dataset_info(data_config) -> DatasetInfo:
  """Reads split sizes and the number of classes from TFDS metadata."""
  builder = _builder(data_config)
  splits = builder.info.splits
  return DatasetInfo(
      num_train_examples=splits[data_config.train_split].num_examples,
      num_eval_examples=splits[data_config.eval_split].num_examples,
      num_classes=builder.info.features[data_config.label_key].num_classes,
  )


def _builder(data_config):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  tf_setup.hide_accelerators_from_tf()
  builder = tfds.builder(data_config.name, data_dir=data_config.data_dir)
  if not builder.is_prepared():
    raise DataNotFoundError(
        prepare.missing_data_message(
            data_config.name, data_config.data_dir, data_config.manual_dir
        )
    )
  if builder.info.file_format.value != 'tfrecord':
    raise ValueError(
        f'{data_config.name} is stored as {builder.info.file_format.value}; '
        'this pipeline reads TFRecord files.'
    )
  return builder


def _local_batch(global_batch_size: int, process_count: int) -> int:
  if global_batch_size % process_count:
    raise ValueError(
        f'global_batch_size={global_batch_size} is not divisible by '
        f'process_count={process_count}.'
    )
  return global_batch_size // process_count


@dataclasses.dataclass(frozen=True)
class _Shard:
  """The record-file slices that make up one process's part of a split."""

  filenames: tuple
  skips: tuple
  takes: tuple

  @property
  def num_examples(self) -> int:
    return sum(self.takes)


def _process_shard(builder, split: str, index: int, count: int) -> _Shard:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  subsplit = tfds.split_for_jax_process(
      split, process_index=index, process_count=count
  )
  instructions = [
      f for f in builder.info.splits[subsplit].file_instructions if f.take
  ]
  return _Shard(
      tuple(f.filename for f in instructions),
      tuple(f.skip for f in instructions),
      tuple(f.take for f in instructions),
  )


def _records(shard: _Shard, *, order_seed=None, cycle_length: int = 16):
  """Serialized records of the shard; files in seeded order if given."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  files = tf.data.Dataset.from_tensor_slices(
      (list(shard.filenames), list(shard.skips), list(shard.takes))
  )
  if order_seed is not None:
    files = files.shuffle(len(shard.filenames), seed=order_seed)
  return files.interleave(
      lambda f, skip, take: tf.data.TFRecordDataset(f).skip(skip).take(take),
      cycle_length=max(1, min(cycle_length, len(shard.filenames))),
      block_length=1,
      num_parallel_calls=_AUTOTUNE,
      deterministic=True,
  )


def _parse_fn(builder, data_config) -> Callable[[Any], Dict[str, Any]]:
  """serialized tf.Example -> {'image': encoded bytes, 'label': int32}."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  features = builder.info.features
  decoders = {data_config.image_key: tfds.decode.SkipDecoding()}

  def parse(record):
    example = features.deserialize_example(record, decoders=decoders)
    return {
        'image': example[data_config.image_key],
        'label': tf.cast(example[data_config.label_key], tf.int32),
    }

  return parse


def map_catching_errors(ds, fn, fallback, *, num_parallel_calls: int):
  """Like `ds.map(fn)`, but an element whose `fn` fails becomes `fallback`.

  Each output dict gets 'ok' (bool): False where `fn` raised. The order and
  the number of elements are unchanged, unlike `ignore_errors`, which drops
  elements and so shifts every later batch.

  Args:
    ds: tf.data.Dataset of tuples (or single tensors).
    fn: element -> dict of tensors; may fail (e.g. undecodable JPEG).
    fallback: element -> dict of the same structure; must not fail.
    num_parallel_calls: parallel elements, or -1 for AUTOTUNE.

  Returns:
    tf.data.Dataset of dicts with 'ok' added.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def call(f, ok):
    return lambda *x: {**f(*x), 'ok': tf.constant(ok)}

  def one(*x):
    # A one-element dataset per example is the only per-element try/except
    # tf.data has; `take(1)` keeps the fallback only when `fn` failed.
    good = tf.data.Dataset.from_tensors(x).map(call(fn, True)).ignore_errors()
    bad = tf.data.Dataset.from_tensors(x).map(call(fallback, False))
    return good.concatenate(bad).take(1)

  # Sub-datasets have one element, so deterministic interleave keeps order.
  cycle = 16 if num_parallel_calls == _AUTOTUNE else num_parallel_calls
  return ds.interleave(
      one,
      cycle_length=cycle,
      block_length=1,
      num_parallel_calls=num_parallel_calls,
      deterministic=True,
  )


def _fill_failed(batch: Dict[str, Any]) -> Dict[str, Any]:
  """Gives failed rows of a train batch copies of decoded rows; counts them."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  ok = batch.pop('ok')
  size = tf.shape(ok)[0]
  good = tf.cast(tf.where(ok)[:, 0], tf.int32)
  num_good = tf.size(good)
  check = tf.debugging.assert_positive(
      num_good, message='No image of a training batch could be decoded.'
  )
  with tf.control_dependencies([check]):
    rows = tf.range(size)
    source = tf.where(ok, rows, tf.gather(good, rows % tf.maximum(num_good, 1)))
  fixed = tf.cond(
      tf.reduce_all(ok),
      lambda: batch,  # the common case: no copy
      lambda: {k: tf.gather(v, source) for k, v in batch.items()},
  )
  return {**fixed, 'num_skipped': size - num_good}


def _options(data_config):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  options = tf.data.Options()
  options.deterministic = True
  options.threading.max_intra_op_parallelism = 1
  if data_config.threads:
    options.threading.private_threadpool_size = data_config.threads
  return options


def _blank(size: int, ok_label=None):
  """Fallback example: a black image (any label); never reaches metrics."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  del ok_label
  return {
      'image': tf.zeros([size, size, 3], tf.uint8),
      'label': tf.constant(0, tf.int32),
  }


def train_dataset(
    data_config,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int,
    process_index: int,
    process_count: int,
):
  """The process's infinite training tf.data.Dataset (see module docstring).

  Elements: {'image': uint8 [B, S, S, 3], 'label': int32 [B],
  'num_skipped': int32 []} with S = data_config.image_size.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  local = _local_batch(global_batch_size, process_count)
  builder = _builder(data_config)
  shard = _process_shard(
      builder, data_config.train_split, process_index, process_count
  )
  n = shard.num_examples
  first_epoch, offset = divmod(start_step * local, n)
  root = tf.constant([seed, process_index], tf.int64)
  fold = tf.random.experimental.stateless_fold_in
  aug_root, order_root = fold(root, 0), fold(root, 1)
  cycle = data_config.file_cycle_length
  cached = _records(shard, cycle_length=cycle).cache() if (
      data_config.cache) else None  # pyformat: disable
  buffer = max(1, min(data_config.shuffle_buffer, n))

  def epoch(e):
    file_seed, buffer_seed = tf.unstack(
        tf.random.stateless_uniform(
            [2], fold(order_root, e), minval=None, maxval=None, dtype=tf.int64
        )
    )
    records = cached if data_config.cache else _records(
        shard, order_seed=file_seed, cycle_length=cycle)  # pyformat: disable
    records = records.shuffle(buffer, seed=buffer_seed)
    positions = tf.data.Dataset.range(e * n, (e + 1) * n)
    return tf.data.Dataset.zip((positions, records))

  # Skip before parsing and decoding: resuming costs only record reads.
  ds = tf.data.Dataset.range(first_epoch, _MAX_EPOCHS).flat_map(epoch)
  ds = ds.skip(offset)
  parse = _parse_fn(builder, data_config)
  preprocess = functools.partial(
      ops.train_preprocess,
      image_size=data_config.image_size,
      min_area=data_config.min_area,
      aspect_ratio=tuple(data_config.aspect_ratio),
      max_attempts=data_config.max_attempts,
      interpolation=data_config.interpolation,
      antialias=data_config.antialias,
      random_rotation=data_config.random_rotation,
      pixel_jitter=data_config.pixel_jitter,
  )

  def decode(position, record):
    example = parse(record)
    image = preprocess(example['image'], fold(aug_root, position))
    return {'image': image, 'label': example['label']}

  ds = map_catching_errors(
      ds,
      decode,
      lambda *_: _blank(data_config.image_size),
      num_parallel_calls=data_config.num_parallel_calls,
  )
  ds = ds.batch(local, drop_remainder=True)
  ds = ds.map(_fill_failed, num_parallel_calls=_AUTOTUNE, deterministic=True)
  ds = ds.prefetch(data_config.prefetch)
  return ds.with_options(_options(data_config))


class TrainIterator:
  """Numpy training batches of one process, forever; see `train_dataset`.

  Attributes:
    info: `DatasetInfo` of the dataset.
    step: global step of the next batch.
    num_skipped: undecodable images met so far by this process.
  """

  def __init__(self, ds, info: DatasetInfo, start_step: int):
    self._it = ds.as_numpy_iterator()
    self.info = info
    self.step = start_step
    self.num_skipped = 0

  @property
  def num_train_examples(self) -> int:
    return self.info.num_train_examples

  @property
  def num_classes(self) -> int:
    return self.info.num_classes

  def __iter__(self):
    return self

  def __next__(self) -> Dict[str, np.ndarray]:
    batch = next(self._it)
    skipped = int(batch.pop('num_skipped'))
    if skipped:
      self.num_skipped += skipped
      _log_skips('train', self.step, skipped, self.num_skipped)
    self.step += 1
    return batch


def _log_skips(kind: str, step: int, new: int, total: int) -> None:
  if total - new < _LOG_FIRST_SKIPS or total // 100 > (total - new) // 100:
    logging.warning(
        '%s input: %d undecodable image(s) in batch %d; %d skipped so far.',
        kind, new, step, total,
    )  # pyformat: disable


def create_train_iterator(
    data_config,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> TrainIterator:
  """This process's training batches from global step `start_step` on.

  Args:
    data_config: `config.data` (see `default_data_config`).
    global_batch_size: examples per step over all processes.
    seed: data seed; with the step it determines every batch.
    start_step: global step of the first batch (the restored step).
    process_index: this process, `jax.process_index()`.
    process_count: `jax.process_count()`; must divide global_batch_size.

  Returns:
    A `TrainIterator` of {'image': uint8 [B, S, S, 3] NHWC, 'label': int32
    [B]} with B = global_batch_size // process_count, S = image_size; it
    also exposes `num_train_examples`, `num_classes` and `num_skipped`.
  """
  ds = train_dataset(
      data_config,
      global_batch_size=global_batch_size,
      seed=seed,
      start_step=start_step,
      process_index=process_index,
      process_count=process_count,
  )
  return TrainIterator(ds, dataset_info(data_config), start_step)


class EvalIterable:
  """One process's eval batches; iterate once per evaluation.

  Every pass yields `num_batches` batches {'image': uint8 [B, S, S, 3],
  'label': int32 [B], 'mask': bool [B]}; the same number on every process.

  Attributes:
    num_examples: real examples in the whole split (all processes).
    num_local_examples: real examples of this process.
    num_batches: batches per pass, equal on all processes.
    num_skipped: undecodable images in the last pass (this process).
  """

  def __init__(self, ds, num_examples, num_local_examples, num_batches):
    self._ds = ds
    self.num_examples = num_examples
    self.num_local_examples = num_local_examples
    self.num_batches = num_batches
    self.num_skipped = 0

  def __len__(self) -> int:
    return self.num_batches

  def __iter__(self) -> Iterator[Dict[str, np.ndarray]]:
    self.num_skipped = 0
    for step, batch in enumerate(self._ds.as_numpy_iterator()):
      skipped = int(batch.pop('num_skipped'))
      if skipped:
        self.num_skipped += skipped
        _log_skips('eval', step, skipped, self.num_skipped)
      yield batch


def eval_dataset(
    data_config,
    *,
    global_batch_size: int,
    process_index: int,
    process_count: int,
):
  """Returns (tf.data.Dataset, num_examples, num_local, num_batches)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  local = _local_batch(global_batch_size, process_count)
  builder = _builder(data_config)
  split = data_config.eval_split
  total = builder.info.splits[split].num_examples
  # Even splits differ by at most one; the largest sets the batch count.
  num_batches = math.ceil(math.ceil(total / process_count) / local)
  shard = _process_shard(builder, split, process_index, process_count)
  size = data_config.eval_image_size or data_config.image_size
  ds = _records(shard, cycle_length=data_config.file_cycle_length)
  if data_config.cache:
    ds = ds.cache()
  parse = _parse_fn(builder, data_config)
  preprocess = functools.partial(
      ops.eval_preprocess,
      image_size=size,
      crop_pct=data_config.crop_pct,
      interpolation=data_config.interpolation,
      antialias=data_config.antialias,
  )

  def decode(record):
    example = parse(record)
    return {'image': preprocess(example['image']), 'label': example['label']}

  ds = map_catching_errors(
      ds,
      decode,
      lambda _: _blank(size),
      num_parallel_calls=data_config.num_parallel_calls,
  )
  ds = ds.map(lambda x: {**x, 'real': True})
  padding = tf.data.Dataset.from_tensors(
      {**_blank(size), 'ok': False, 'real': False}
  ).repeat(num_batches * local - shard.num_examples)
  ds = ds.concatenate(padding).batch(local, drop_remainder=True)

  def to_mask(batch):
    ok, real = batch.pop('ok'), batch.pop('real')
    skipped = tf.reduce_sum(tf.cast(real & ~ok, tf.int32))
    return {**batch, 'mask': ok & real, 'num_skipped': skipped}

  ds = ds.map(to_mask).prefetch(data_config.prefetch)
  return (
      ds.with_options(_options(data_config)),
      total,
      shard.num_examples,
      num_batches,
  )


def create_eval_iterator(
    data_config,
    *,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> EvalIterable:
  """This process's padded, masked eval batches covering the split once.

  Args:
    data_config: `config.data` (see `default_data_config`).
    global_batch_size: eval examples per step over all processes.
    process_index: this process, `jax.process_index()`.
    process_count: `jax.process_count()`; must divide global_batch_size.

  Returns:
    An `EvalIterable` (see there); `num_examples` is the split size, and the
    masks over all processes and batches sum to it (less undecodable ones).
  """
  ds, total, local_total, num_batches = eval_dataset(
      data_config,
      global_batch_size=global_batch_size,
      process_index=process_index,
      process_count=process_count,
  )
  return EvalIterable(ds, total, local_total, num_batches)
