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

Repeated augmentation (config.data.repeated_augmentation = R > 1, timm's
RepeatAugSampler): an epoch takes the first ceil(n_p / R) records of its
shuffled stream and gives each R consecutive positions (each its own
augmentation seed), n_p positions in all, so resumption is unchanged. The
repeats stay within the process: a process streams only its own shard
through a shuffle buffer, with no random access to the others' records, so
timm's spreading of the copies over ranks (the folder source does it, see
`folder.py` and `repeats.py`) would need every process to read every
record. Like timm on one rank, then, the copies of an example share a
batch. With `cache` each epoch still reads its whole shard (filling the
cache); without, it stops after the records it uses.

Evaluation (the paper's single-crop protocol): the shorter side is resized to
eval_image_size / crop_pct (256 for 224 at 0.875) and the centre
eval_image_size square is kept; this is done as the equivalent centre crop of
crop_pct of the shorter side, decoded and resized in one step. Each process
pads its part with masked examples to the same number of full batches, so
the jitted step never recompiles, processes never wait on each other, and
sum(mask) over all processes is the split size.

Any prepared TFDS image-classification dataset works by name (an Image
feature, JPEG or PNG, grayscale made RGB, and a ClassLabel, whose names
`dataset_info` returns); a split or feature the config names but the
dataset lacks is a `DatasetMismatchError` listing what it has. The
source-independent half (augmentation seeds, fail-safe batching, padded
eval, the iterators) is `stream.py`, shared with the folder source.

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

import math

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from se_flax.data import epoch_order
from se_flax.data import prepare
from se_flax.data import records
from se_flax.data import repeats
from se_flax.data import stream
from se_flax.data import tf_setup

DatasetInfo = stream.DatasetInfo
TrainIterator = stream.TrainIterator
EvalIterable = stream.EvalIterable
CorruptRecordError = records.CorruptRecordError


class DataNotFoundError(FileNotFoundError):
  """The TFDS dataset is not prepared where the config points."""


class DatasetMismatchError(ValueError):
  """The prepared dataset lacks a split or feature that the config names."""


def dataset_info(data_config) -> DatasetInfo:
  """Split sizes, number of classes and label names from TFDS metadata."""
  builder = _builder(data_config)
  splits = builder.info.splits
  labels = builder.info.features[data_config.label_key]
  return DatasetInfo(
      num_train_examples=splits[data_config.train_split].num_examples,
      num_eval_examples=splits[data_config.eval_split].num_examples,
      num_classes=labels.num_classes,
      label_names=tuple(labels.names) if labels.names else None,
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
  _check_features_and_splits(builder, data_config)
  return builder


def _check_features_and_splits(builder, data_config) -> None:
  """Any image-classification dataset works; say what this one lacks."""
  name, features = data_config.name, builder.info.features
  for field, kind in (('train_split', 'train'), ('eval_split', 'eval')):
    split = data_config[field]
    try:
      builder.info.splits[split]  # parses slices such as 'train[:99%]'
    except (KeyError, ValueError) as e:
      raise DatasetMismatchError(
          f'{name} has no {kind} split {split!r} (its splits: '
          f'{sorted(builder.info.splits)}); set config.data.{field}, e.g. '
          f"config.data.{field} = '{_suggest_split(builder, kind)}'."
      ) from e
  wanted = (
      ('image_key', data_config.image_key, tfds.features.Image, 'an Image'),
      (
          'label_key',
          data_config.label_key,
          tfds.features.ClassLabel,
          'a ' 'ClassLabel',
      ),
  )
  for field, key, feature_type, what in wanted:
    if key not in features:
      raise DatasetMismatchError(
          f'{name} has no feature {key!r} (config.data.{field}); its '
          f'features: {sorted(features)}.'
      )
    if not isinstance(features[key], feature_type):
      raise DatasetMismatchError(
          f'{name}: feature {key!r} (config.data.{field}) is '
          f'{type(features[key]).__name__}, not {what} feature; this '
          'pipeline trains classifiers on encoded images.'
      )


def _suggest_split(builder, kind: str) -> str:
  names = sorted(builder.info.splits)
  preferred = ('train',) if kind == 'train' else ('validation', 'test', 'val')
  return next((p for p in preferred if p in names), names[0] if names else '')


def _is_jpeg(builder, data_config) -> bool:
  """Whether TFDS stores the images as JPEG (else PNG & co.)."""
  feature = builder.info.features[data_config.image_key]
  return getattr(feature, 'encoding_format', None) == 'jpeg'


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
  local = stream.local_batch(global_batch_size, process_count)
  builder = _builder(data_config)
  shard = records.process_shard(
      builder, data_config.train_split, process_index, process_count
  )
  n = shard.num_examples
  first_epoch, offset = divmod(start_step * local, n)
  augment_root, order_root = stream.seed_roots(seed, process_index)
  cycle = data_config.file_cycle_length
  stand_in = records.stand_in_record(
      data_config.image_key, data_config.label_key
  )
  if data_config.cache:  # one fixed file order, read once, then from memory
    cached = records.read(shard, cycle_length=cycle, stand_in=stand_in)
    cached = cached.cache()
  buffer = max(1, min(data_config.shuffle_buffer, n))
  num_repeats = data_config.repeated_augmentation

  def epoch(e):
    file_seed, buffer_seed = tf.unstack(
        tf.random.stateless_uniform(
            [2],
            tf.random.experimental.stateless_fold_in(order_root, e),
            minval=None,
            maxval=None,
            dtype=tf.int64,
        )
    )
    if data_config.cache:
      recs = cached
    else:
      recs = records.read(
          shard, order_seed=file_seed, cycle_length=cycle, stand_in=stand_in
      )
    positions = tf.data.Dataset.range(e * n, (e + 1) * n)
    recs = recs.shuffle(buffer, buffer_seed)
    if repeats.is_on(num_repeats):
      recs = epoch_order.repeat_within(
          recs, num_repeats, n, read_all=data_config.cache
      )
    return tf.data.Dataset.zip(positions, recs)

  # Skipped before parsing and decoding: resuming costs only record reads.
  # Lost records have stand-ins, so every epoch has n positions.
  ds = tf.data.Dataset.range(first_epoch, epoch_order.MAX_EPOCHS).flat_map(
      epoch
  )
  ds = ds.skip(offset)
  parse = records.parse_fn(
      builder, data_config.image_key, data_config.label_key
  )
  preprocess = stream.train_preprocess_fn(
      data_config, jpeg=_is_jpeg(builder, data_config)
  )

  def decode(position, image, label, lost_from):
    seed = stream.augmentation_seed(augment_root, position)
    return {
        'image': preprocess(image, seed),
        'label': label,
        'lost_from': lost_from,
    }

  def prepare_batch(positions, recs):
    recs, lost_from = recs
    return (positions, *parse(recs), lost_from)

  return stream.train_batches(
      ds,
      decode,
      lambda _, recs: {
          **stream.blank(data_config.image_size),
          'lost_from': recs[1],
      },
      data_config=data_config,
      batch_size=local,
      prepare_batch=prepare_batch,
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
      damage=_Damage('train', shard, data_config.skip_corrupt_records),
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
  local = stream.local_batch(global_batch_size, process_count)
  builder = _builder(data_config)
  split = data_config.eval_split
  total = builder.info.splits[split].num_examples
  # Even splits differ by at most one; the largest sets the batch count.
  num_batches = math.ceil(math.ceil(total / process_count) / local)
  shard = records.process_shard(builder, split, process_index, process_count)
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
  preprocess = stream.eval_preprocess_fn(
      data_config, jpeg=_is_jpeg(builder, data_config)
  )

  def decode(image, label, lost_from, real):
    del real  # padding is the stand-in record: it parses and decodes
    return {'image': preprocess(image), 'label': label, 'lost_from': lost_from}

  def fallback(record, lost_from, real):
    del record, real
    return {
        **stream.blank(stream.eval_image_size(data_config)),
        'lost_from': lost_from,
    }

  ds = stream.eval_batches(
      ds,
      (tf.constant(stand_in), tf.constant('')),
      decode,
      fallback,
      data_config=data_config,
      batch_size=local,
      num_pad=num_batches * local - shard.num_examples,
      prepare_batch=lambda recs, lost: (*parse(recs), lost),
  )
  return ds, total, shard.num_examples, num_batches


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
  return EvalIterable(
      ds,
      total,
      local_total,
      num_batches,
      damage=_Damage('eval', shard, skip=False),
  )
