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

Damaged record files: a corrupt or truncated TFRecord file (TF's bare
`DataLossError: corrupted record at N`) raises `CorruptRecordError`, naming
the file and the byte offset. With `skip_corrupt_records` set, training
instead skips the records it can not read (for a damaged file, all of it past
the damage), counts them in `num_corrupt_records` and warns once per file.
Each such record keeps its position in the stream and its slot takes a copy
of another example of the batch, as for undecodable images, so the batches
stay a function of (seed, step) for the same files and resumption stays
exact. Evaluation never skips: a damaged eval file is always an error.
"""

import dataclasses
import functools
import math
from typing import Dict, Iterator

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from se_flax.data import ops
from se_flax.data import prepare
from se_flax.data import records
from se_flax.data import tf_setup

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


CorruptRecordError = records.CorruptRecordError


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


def _is_jpeg(builder, data_config) -> bool:
  """Whether TFDS stores the images as JPEG (else PNG & co.)."""
  feature = builder.info.features[data_config.image_key]
  return getattr(feature, 'encoding_format', None) == 'jpeg'


def _blank(size: int) -> Dict[str, tf.Tensor]:
  """Stand-in for an undecodable example; never reaches the metrics."""
  return {
      'image': tf.zeros([size, size, 3], tf.uint8),
      'label': tf.constant(0, tf.int32),
  }


def _options(data_config) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  # Parallelism comes from tf.data's threads, one image per thread.
  options.threading.max_intra_op_parallelism = 1
  if data_config.threads:
    options.threading.private_threadpool_size = data_config.threads
  return options


def train_dataset(
    data_config,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int,
    process_index: int,
    process_count: int,
) -> tf.data.Dataset:
  """The process's infinite training stream (see the module docstring).

  Returns:
    tf.data.Dataset of {'image': uint8 [B, S, S, 3], 'label': int32 [B],
    'num_skipped': int32 [], 'lost_from': tf.string [k]}, S =
    data_config.image_size; lost_from holds the file of each of the batch's
    k records lost to a damaged file (their rows are copies; see `_Damage`).
  """
  local = _local_batch(global_batch_size, process_count)
  builder = _builder(data_config)
  shard = records.process_shard(
      builder, data_config.train_split, process_index, process_count
  )
  n = shard.num_examples
  first_epoch, offset = divmod(start_step * local, n)
  fold = tf.random.experimental.stateless_fold_in
  root = tf.constant([seed, process_index], tf.int64)
  aug_root, order_root = fold(root, 0), fold(root, 1)
  cycle = data_config.file_cycle_length
  stand_in = records.stand_in_record(
      data_config.image_key, data_config.label_key
  )
  if data_config.cache:  # one fixed file order, read once, then from memory
    cached = records.read(shard, cycle_length=cycle, stand_in=stand_in)
    cached = cached.cache()
  buffer = max(1, min(data_config.shuffle_buffer, n))

  def epoch(e):
    file_seed, buffer_seed = tf.unstack(
        tf.random.stateless_uniform(
            [2], fold(order_root, e), minval=None, maxval=None, dtype=tf.int64
        )
    )
    if data_config.cache:
      recs = cached
    else:
      recs = records.read(
          shard, order_seed=file_seed, cycle_length=cycle, stand_in=stand_in
      )
    positions = tf.data.Dataset.range(e * n, (e + 1) * n)
    return tf.data.Dataset.zip(positions, recs.shuffle(buffer, buffer_seed))

  # Skipped before parsing and decoding: resuming costs only record reads.
  # Lost records have stand-ins, so every epoch has n positions.
  ds = tf.data.Dataset.range(first_epoch, _MAX_EPOCHS).flat_map(epoch)
  ds = ds.skip(offset)
  parse = records.parse_fn(
      builder, data_config.image_key, data_config.label_key
  )
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
      jpeg=_is_jpeg(builder, data_config),
  )

  def decode(position, image, label, lost_from):
    image = preprocess(image, fold(aug_root, position))
    return {'image': image, 'label': label, 'lost_from': lost_from}

  def prepare_batch(positions, recs):
    recs, lost_from = recs
    return (positions, *parse(recs), lost_from)

  ds = records.map_and_batch_catching_errors(
      ds,
      decode,
      lambda _, recs: {**_blank(data_config.image_size), 'lost_from': recs[1]},
      batch_size=local,
      num_parallel_calls=data_config.num_parallel_calls,
      prepare_batch=prepare_batch,
  )

  def fill(batch):
    batch = dict(batch)
    lost_from = batch.pop('lost_from')
    lost = lost_from != ''
    batch['ok'] &= ~lost  # stand-ins decode, but are failed rows too
    batch = records.fill_failed(batch)
    num_lost = tf.reduce_sum(tf.cast(lost, tf.int32))
    return {
        **batch,
        'num_skipped': batch['num_skipped'] - num_lost,
        'lost_from': tf.boolean_mask(lost_from, lost),
    }

  ds = ds.map(fill).prefetch(data_config.prefetch)
  return ds.with_options(_options(data_config))


def _log_skips(kind: str, step: int, new: int, total: int) -> None:
  if total - new < _LOG_FIRST_SKIPS or total // 100 > (total - new) // 100:
    logging.warning(
        '%s input: %d undecodable image(s) in batch %d; %d skipped so far.',
        kind,
        new,
        step,
        total,
    )


class _Damage:
  """Judges the records a batch lost to damaged files (`records.read`)."""

  def __init__(self, kind: str, shard: records.Shard, skip: bool):
    self._kind = kind
    self._shard = shard
    self._skip = skip
    self._known = set()

  def __call__(self, lost_from: np.ndarray, step: int) -> int:
    """Raises `CorruptRecordError`, or returns the count if skipping.

    Args:
      lost_from: bytes [k], the file of each record lost in the batch.
      step: the batch's step (train) or index (eval), for the log.
    """
    for path in sorted({p.decode() for p in lost_from} - self._known):
      offset, what = records.find_damage(path, self._shard.min_records(path))
      if offset is None:  # skipping it would make the stream irreproducible
        hint = (
            'Nothing is skipped for a failure a re-read does not reproduce '
            '(the batches would stop being a function of the seed and '
            'step); resume from the last checkpoint.'
        )
      elif self._kind == 'eval':
        hint = (
            'Evaluation never skips records, whatever '
            'config.data.skip_corrupt_records says: restore the file (e.g. '
            'prepare the dataset again).'
        )
      elif not self._skip:
        hint = (
            'Restore the file (e.g. prepare the dataset again), or set '
            'config.data.skip_corrupt_records = True to train past the '
            'records it can not read (they are counted, and their batch '
            'slots take copies of other examples).'
        )
      else:
        logging.warning(
            '%s input: skipping the unreadable records of %s (%s), first '
            'met in batch %d; skip_corrupt_records is set, so they are counted '
            'in num_corrupt_records and their slots take copies of other '
            'examples of the batch.',
            self._kind.capitalize(),
            path,
            what,
            step,
        )
        self._known.add(path)
        continue
      raise CorruptRecordError(
          f'{self._kind.capitalize()} record file {path} is damaged: {what}. '
          + hint,
          path=path,
          offset=offset,
      )
    return len(lost_from)


class TrainIterator:
  """Numpy training batches of one process, forever; see `train_dataset`.

  Attributes:
    info: `DatasetInfo` of the dataset.
    step: global step of the next batch.
    num_skipped: undecodable images met so far by this process.
    num_corrupt_records: records lost to damaged record files met so far by
      this process (only with skip_corrupt_records; else they raise
      `CorruptRecordError`).
  """

  def __init__(
      self,
      ds: tf.data.Dataset,
      info: DatasetInfo,
      start_step: int,
      *,
      shard: records.Shard,
      skip_corrupt_records: bool = False,
  ):
    self._it = ds.as_numpy_iterator()
    self._damage = _Damage('train', shard, skip_corrupt_records)
    self.info = info
    self.step = start_step
    self.num_skipped = 0
    self.num_corrupt_records = 0

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
    lost_from = batch.pop('lost_from')
    if lost_from.size:
      self.num_corrupt_records += self._damage(lost_from, self.step)
    skipped = int(batch.pop('num_skipped'))
    if skipped:
      self.num_skipped += skipped
      _log_skips('train', self.step, skipped, self.num_skipped)
    self.step += 1
    return batch


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
    also exposes `num_train_examples`, `num_classes`, `num_skipped` and
    `num_corrupt_records`.

  Raises (when iterated):
    CorruptRecordError: a record file is corrupt or truncated, unless
      data_config.skip_corrupt_records.
  """
  ds = train_dataset(
      data_config,
      global_batch_size=global_batch_size,
      seed=seed,
      start_step=start_step,
      process_index=process_index,
      process_count=process_count,
  )
  shard = records.process_shard(
      _builder(data_config),
      data_config.train_split,
      process_index,
      process_count,
  )
  return TrainIterator(
      ds,
      dataset_info(data_config),
      start_step,
      shard=shard,
      skip_corrupt_records=data_config.skip_corrupt_records,
  )


def eval_dataset(
    data_config,
    *,
    global_batch_size: int,
    process_index: int,
    process_count: int,
):
  """Returns (tf.data.Dataset, num_examples, num_local, num_batches).

  The dataset yields {'image': uint8 [B, S, S, 3], 'label': int32 [B],
  'mask': bool [B], 'num_skipped': int32 [], 'lost_from': tf.string [k]},
  S = eval image size; lost_from holds the file of each of the batch's k
  records lost to a damaged file (masked out; `EvalIterable` raises).
  """
  local = _local_batch(global_batch_size, process_count)
  builder = _builder(data_config)
  split = data_config.eval_split
  total = builder.info.splits[split].num_examples
  # Even splits differ by at most one; the largest sets the batch count.
  num_batches = math.ceil(math.ceil(total / process_count) / local)
  shard = records.process_shard(builder, split, process_index, process_count)
  size = data_config.eval_image_size or data_config.image_size
  stand_in = records.stand_in_record(
      data_config.image_key, data_config.label_key
  )
  ds = records.read(
      shard, cycle_length=data_config.file_cycle_length, stand_in=stand_in
  )
  if data_config.cache:
    ds = ds.cache()
  parse = records.parse_fn(
      builder, data_config.image_key, data_config.label_key
  )
  preprocess = functools.partial(
      ops.eval_preprocess,
      image_size=size,
      crop_pct=data_config.crop_pct,
      interpolation=data_config.interpolation,
      antialias=data_config.antialias,
      jpeg=_is_jpeg(builder, data_config),
  )

  def decode(image, label, real, lost_from):
    return {
        'image': preprocess(image),
        'label': label,
        'real': real,
        'lost_from': lost_from,
    }

  # Padding is the stand-in record (it parses and decodes, so costs no
  # fallback and logs no parse error), marked not real: mask False.
  pad = num_batches * local - shard.num_examples
  ds = ds.map(lambda record, lost_from: (record, True, lost_from))
  ds = ds.concatenate(
      tf.data.Dataset.from_tensors(
          (tf.constant(stand_in), False, tf.constant(''))
      ).repeat(pad)
  )
  ds = records.map_and_batch_catching_errors(
      ds,
      decode,
      lambda record, real, lost_from: {
          **_blank(size),
          'real': real,
          'lost_from': lost_from,
      },
      batch_size=local,
      num_parallel_calls=data_config.num_parallel_calls,
      prepare_batch=lambda recs, real, lost: (*parse(recs), real, lost),
  )

  def to_mask(batch):
    ok, real = batch.pop('ok'), batch.pop('real')
    lost_from = batch.pop('lost_from')
    lost = lost_from != ''
    skipped = tf.reduce_sum(tf.cast(real & ~ok, tf.int32))
    return {
        **batch,
        'mask': ok & real & ~lost,
        'num_skipped': skipped,
        'lost_from': tf.boolean_mask(lost_from, lost),
    }

  ds = ds.map(to_mask).prefetch(data_config.prefetch)
  return (
      ds.with_options(_options(data_config)),
      total,
      shard.num_examples,
      (num_batches),
  )


class EvalIterable:
  """One process's eval batches; iterate once per evaluation.

  Every pass yields `num_batches` batches {'image': uint8 [B, S, S, 3],
  'label': int32 [B], 'mask': bool [B]}; the same number on every process.

  Attributes:
    num_examples: real examples in the whole split (all processes).
    num_local_examples: real examples of this process.
    num_batches: batches per pass, equal on all processes.
    num_skipped: undecodable images in the last pass (this process).

  A record lost to a damaged eval file raises `CorruptRecordError`, even
  with skip_corrupt_records: a metric never silently covers less.
  """

  def __init__(
      self,
      ds,
      num_examples,
      num_local_examples,
      num_batches,
      *,
      shard: records.Shard,
  ):
    self._ds = ds
    self._damage = _Damage('eval', shard, skip=False)
    self.num_examples = num_examples
    self.num_local_examples = num_local_examples
    self.num_batches = num_batches
    self.num_skipped = 0

  def __len__(self) -> int:
    return self.num_batches

  def __iter__(self) -> Iterator[Dict[str, np.ndarray]]:
    self.num_skipped = 0
    for step, batch in enumerate(self._ds.as_numpy_iterator()):
      lost_from = batch.pop('lost_from')
      if lost_from.size:
        self._damage(lost_from, step)  # raises
      skipped = int(batch.pop('num_skipped'))
      if skipped:
        self.num_skipped += skipped
        _log_skips('eval', step, skipped, self.num_skipped)
      yield batch


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
    An `EvalIterable`; its `num_examples` is the split size, and the masks
    over all processes and batches sum to it, less undecodable images.

  Raises (when iterated):
    CorruptRecordError: an eval record file is corrupt or truncated
      (whatever data_config.skip_corrupt_records says).
  """
  ds, total, local_total, num_batches = eval_dataset(
      data_config,
      global_batch_size=global_batch_size,
      process_index=process_index,
      process_count=process_count,
  )
  shard = records.process_shard(
      _builder(data_config),
      data_config.eval_split,
      process_index,
      process_count,
  )
  return EvalIterable(ds, total, local_total, num_batches, shard=shard)
