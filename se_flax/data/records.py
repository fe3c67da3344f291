"""Reading TFDS record files directly, and batching that survives bad data.

Lower half of `pipeline.py`: which record slices a process owns, reading them
in a seeded file order (with stand-ins for records a damaged file loses, and
finding that damage afterwards), parsing a batch at once, and mapping with a
per-example fallback for data that fail to decode.
"""

import dataclasses
import re
from typing import Any, Callable, Optional, Tuple

import tensorflow as tf
import tensorflow_datasets as tfds

_AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class Shard:
  """The record-file slices that make up one process's part of a split."""

  filenames: Tuple[str, ...]
  skips: Tuple[int, ...]
  takes: Tuple[int, ...]

  @property
  def num_examples(self) -> int:
    return sum(self.takes)

  def min_records(self, filename: str) -> int:
    """Records `filename` must hold for its slice: skip + take (0 if none)."""
    return sum(
        s + t
        for f, s, t in zip(self.filenames, self.skips, self.takes)
        if f == filename
    )


def process_shard(builder, split: str, index: int, count: int) -> Shard:
  """Process `index`'s even part of `split` (TFDS's `split_for_jax_process`).

  Parts differ in size by at most one example and together hold every
  example of the split exactly once.
  """
  subsplit = tfds.split_for_jax_process(
      split, process_index=index, process_count=count
  )
  instructions = [
      f for f in builder.info.splits[subsplit].file_instructions if f.take
  ]
  return Shard(
      tuple(f.filename for f in instructions),
      tuple(f.skip for f in instructions),
      tuple(f.take for f in instructions),
  )


def read(
    shard: Shard,
    *,
    order_seed: Optional[tf.Tensor] = None,
    cycle_length=16,
    stand_in: Optional[bytes] = None,
) -> tf.data.Dataset:
  """Serialized records of `shard`, files interleaved in a fixed order.

  With `stand_in`, a slice that can not be read to its end (a corrupt or
  truncated record, an unreadable file) yields the records before the damage
  and then one (stand_in, its file's path) per record lost, so the number
  and order of elements never depend on damage. (TF's DataLossError names no
  file; this does, and `find_damage` then locates the damage.)

  Args:
    shard: the record slices to read.
    order_seed: int64 scalar; if given, the file order is shuffled with it.
    cycle_length: files read concurrently.
    stand_in: record for a lost one (see `stand_in_record`); if given,
      elements are (record, lost_from) with lost_from b'' for a record read
      and the file path for a stand-in; else read errors propagate.

  Returns:
    tf.data.Dataset of scalar tf.string records (pairs of them with
    `stand_in`), deterministic given the arguments and the files.
  """
  files = tf.data.Dataset.from_tensor_slices(
      (
          tf.constant(shard.filenames, tf.string),
          tf.constant(shard.skips, tf.int64),
          tf.constant(shard.takes, tf.int64),
      )
  )
  if order_seed is not None:
    files = files.shuffle(len(shard.filenames), seed=order_seed)

  def read_slice(f, skip, take):
    recs = tf.data.TFRecordDataset(f).skip(skip).take(take)
    if stand_in is None:
      return recs
    # TFRecordDataset ends a file at its first error; ignore_errors makes
    # that an early end, which the stand-ins then make up.
    recs = recs.ignore_errors().map(lambda r: (r, tf.constant('')))
    lost = tf.data.Dataset.from_tensors((tf.constant(stand_in), f))
    return recs.concatenate(lost.repeat(take)).take(take)

  return files.interleave(
      read_slice,
      cycle_length=max(1, min(cycle_length, len(shard.filenames))),
      block_length=1,
      num_parallel_calls=_AUTOTUNE,
      deterministic=True,
  )


def stand_in_record(image_key: str, label_key: str) -> bytes:
  """A serialized tf.train.Example that parses and decodes quickly.

  Holds an 8x8 black JPEG and label 0. It takes the place of each lost
  record (see `read`), and the pipeline treats those as failed examples; as
  they do not actually fail, they cost neither the per-example fallback nor
  TF error logs.
  """
  image = tf.io.encode_jpeg(tf.zeros([8, 8, 3], tf.uint8)).numpy()
  feature = {
      image_key: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
      label_key: tf.train.Feature(int64_list=tf.train.Int64List(value=[0])),
  }
  example = tf.train.Example(features=tf.train.Features(feature=feature))
  return example.SerializeToString()


class CorruptRecordError(RuntimeError):
  """A record file of the dataset can not be read to its end.

  Attributes:
    path: the record file.
    offset: byte offset of the damage (TF's, where TF reports one); None if
      a re-read found the file intact.
  """

  def __init__(self, message: str, path: str = '', offset=None):
    super().__init__(message)
    self.path = path
    self.offset = offset


# TF's RecordReader: "corrupted record at N" (a length or data CRC mismatch;
# N is where the length, or the data, starts) and "truncated record at N"
# (the file ends inside the record starting at N).
_TF_DAMAGE = re.compile(r'(corrupted|truncated) record at (\d+)')
_FRAMING = 16  # bytes around each record: uint64 length, 2 x uint32 CRC


def _op_message(e: tf.errors.OpError) -> str:
  """TF's error text without its op and function decorations."""
  text = re.sub(r'\{\{[^}]*\}\}|\[Op:.*', '', e.message, flags=re.S)
  return ' '.join(text.split())


def find_damage(path: str, min_records: int) -> Tuple[Optional[int], str]:
  """Reads record file `path` whole and locates its first damage.

  Args:
    path: a TFRecord file.
    min_records: records the file must hold (see `Shard.min_records`).

  Returns:
    (offset, what): the byte offset of the damage (None if the file reads
    intact with at least min_records records) and one line saying what is
    wrong, for error messages.
  """
  count = end = 0
  try:
    lengths = tf.data.TFRecordDataset(path).map(tf.strings.length)
    for length in lengths.as_numpy_iterator():
      count += 1
      end += int(length) + _FRAMING
  except tf.errors.OpError as e:
    found = _TF_DAMAGE.search(e.message)
    if not found:  # e.g. a missing or unreadable file
      return end, (
          f"{type(e).__name__} at byte {end} (the file's record #{count}, "
          f'from 0): {_op_message(e)}'
      )
    return int(found.group(2)), (
        f"{found.group(1)} record at byte {found.group(2)} (the file's "
        f'record #{count}, from 0)'
    )
  size = tf.io.gfile.stat(path).length
  if end < size:  # TF takes a partial header for the end of the file
    return end, (
        f"truncated record at byte {end} (the file's record #{count}, from "
        f'0; the file ends {size - end} byte(s) into its 12-byte header)'
    )
  if count < min_records:
    return end, (
        f'truncated at byte {end}, a record boundary (the file ends after '
        f"{count} whole record(s), but the dataset's metadata needs "
        f'{min_records})'
    )
  return None, (
      f'reading it failed, but a re-read finds all {count} record(s) intact '
      '(a transient read error?)'
  )


def parse_fn(
    builder, image_key: str, label_key: str
) -> Callable[[tf.Tensor], Tuple[tf.Tensor, tf.Tensor]]:
  """Returns records [B] -> (encoded images tf.string [B], labels int32 [B]).

  Parses only the two features, a batch at a time (half the CPU of parsing
  one by one), and leaves the images encoded: decoding is fused with the
  crop later (what `tfds.decode.SkipDecoding` does for `as_dataset`).
  """
  spec = builder.info.features.tf_example_spec
  spec = {image_key: spec[image_key], label_key: spec[label_key]}

  def parse(records):
    example = tf.io.parse_example(records, spec)
    return example[image_key], tf.cast(example[label_key], tf.int32)

  return parse


def map_and_batch_catching_errors(
    ds: tf.data.Dataset,
    fn: Callable[..., Any],
    fallback: Callable[..., Any],
    *,
    batch_size: int,
    num_parallel_calls: int,
    prepare_batch: Callable[..., Any] = lambda *x: x,
) -> tf.data.Dataset:
  """`ds.batch(b).map(prepare_batch).unbatch().map(fn).batch(b)`, fail-safe.

  An element for which `prepare_batch` or `fn` fails becomes
  `fallback(element)`, and each output batch gets 'ok' (bool [b]): False
  there. Order and count are kept, unlike `ignore_errors`, which drops
  elements and so shifts every later batch. tf.data's only try/except is
  `ignore_errors` on a sub-dataset; one per example costs ~0.5 ms of CPU, so
  it is paid per batch: a batch runs plainly, and only a batch that fails is
  redone example by example.

  Args:
    ds: tf.data.Dataset of tuples; a final remainder < b is dropped.
    fn: prepared element (tuple) -> dict of tensors of static shapes; may
      fail (e.g. an undecodable JPEG).
    fallback: raw element (tuple) -> dict like fn's; must not fail.
    batch_size: b, examples per batch.
    num_parallel_calls: batches processed at once (one per thread), or -1
      for AUTOTUNE (as many as cores).
    prepare_batch: batched raw tuple -> batched tuple of fn's arguments
      (vectorised work such as parsing); may fail.

  Returns:
    tf.data.Dataset of dicts of [b, ...] tensors with 'ok' added.
  """

  def with_ok(f, ok):
    return lambda *x: {**f(*x), 'ok': tf.constant(ok)}

  def one(*raw):
    good = (
        tf.data.Dataset.from_tensors(raw)
        .batch(1)
        .map(prepare_batch)
        .unbatch()
        .map(with_ok(fn, True))
        .ignore_errors()
    )
    bad = tf.data.Dataset.from_tensors(raw).map(with_ok(fallback, False))
    return good.concatenate(bad).take(1)  # the fallback only if fn failed

  def per_batch(*raw):
    fast = (
        tf.data.Dataset.from_tensors(raw)
        .map(prepare_batch)
        .unbatch()
        .map(with_ok(fn, True))
        .batch(batch_size)
        .ignore_errors()
    )
    # One-element sub-datasets keep their order under interleave.
    safe = (
        tf.data.Dataset.from_tensor_slices(raw)
        .interleave(one, cycle_length=1)
        .batch(batch_size)
    )
    return fast.concatenate(safe).take(1)

  # Whole batches run in parallel, one per thread, in deterministic order.
  return ds.batch(batch_size, drop_remainder=True).interleave(
      per_batch,
      cycle_length=num_parallel_calls,
      block_length=1,
      num_parallel_calls=num_parallel_calls,
      deterministic=True,
  )


def fill_failed(batch: dict) -> dict:
  """Gives failed rows of a training batch copies of good rows of it.

  Args:
    batch: dict of [b, ...] tensors with 'ok' bool [b].

  Returns:
    The batch without 'ok', with 'num_skipped' (int32 []) added; row i is
    row i if ok, else the (i mod #ok)-th good row. Fails if no row is ok.
  """
  batch = dict(batch)
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
