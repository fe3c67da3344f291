"""The order of a process's training epochs: which example each position
takes. Exact permutations of the file list (the folder source), and timm's
repeated augmentation (`repeats.py`): spread over the processes for folders
(`folder_order`), within a process's shuffled record stream for TFDS
(`repeat_within`). Positions number the stream (augmentation seeds and
resumption follow them; see `stream.py`)."""

import tensorflow as tf

from se_flax.data import repeats
from se_flax.data import stream

MAX_EPOCHS = 1 << 40  # "forever": the sources stream epochs without end


def permutation(n: int, seed: tf.Tensor) -> tf.Tensor:
  """int64 [n]: a permutation of range(n), an exact shuffle."""
  return tf.random.experimental.stateless_shuffle(
      tf.range(n, dtype=tf.int64), seed=seed, alg='philox'
  )


def shared_order_root(seed: int) -> tf.Tensor:
  """The repeats' permutation root: the same on every process.

  (seed, 0) folded with 2; `stream.seed_roots` folds it with 0 and 1.
  """
  root = tf.constant([seed, 0], tf.int64)
  return tf.random.experimental.stateless_fold_in(root, 2)


def folder_order(
    n: int,
    *,
    num_repeats: int,
    seed: int,
    first_position: int,
    process_index: int,
    process_count: int,
) -> tf.data.Dataset:
  """The process's (position, file index) stream, from `first_position`.

  Without repeats, epoch e is the process's part (files p, p + P, ...) in
  the order of a permutation seeded by (seed, p, e). With R =
  num_repeats > 1 it is timm's `RepeatAugSampler` epoch of rank p of P
  (`repeats.repeated_indices`) over a permutation of all n files seeded by
  (seed, e) alone, so the R copies of a file go to different processes as
  in timm's multi-GPU runs; `repeats.num_selected` positions per epoch.

  Args:
    n: training files, all processes together.
    num_repeats: config.data.repeated_augmentation (0, 1: off).
    seed: the data seed.
    first_position: the first position to give (start step x local batch).
    process_index: p.
    process_count: P.

  Returns:
    tf.data.Dataset of (position, index) int64 scalars; index is into the
    sorted split (`scan.train.paths`).
  """
  if repeats.is_on(num_repeats):
    m = repeats.num_selected(n, num_repeats, process_count)
    take = tf.constant(
        repeats.slots(n, num_repeats, process_index, process_count)
    )
    order_root = shared_order_root(seed)
  else:
    m = len(range(process_index, n, process_count))  # the part's size
    _, order_root = stream.seed_roots(seed, process_index)
  first_epoch, offset = divmod(first_position, m)

  def epoch(e):
    epoch_seed = tf.random.experimental.stateless_fold_in(order_root, e)
    if repeats.is_on(num_repeats):
      order = tf.gather(permutation(n, epoch_seed), take)
    else:  # a permutation of the part, as indices into the whole split
      order = process_index + process_count * permutation(m, epoch_seed)
    start = tf.where(e == first_epoch, tf.constant(offset, tf.int64), 0)
    positions = e * m + tf.range(start, m, dtype=tf.int64)
    return tf.data.Dataset.from_tensor_slices((positions, order[start:]))

  # An epoch holds only its permutation; paths are gathered per batch.
  return tf.data.Dataset.range(first_epoch, MAX_EPOCHS).flat_map(epoch)


def repeat_within(
    ds: tf.data.Dataset, num_repeats: int, n: int, *, read_all: bool
) -> tf.data.Dataset:
  """An epoch of n elements: the first ceil(n / R) of `ds`, each R times.

  Copies are consecutive (timm's order on one rank), and the epoch keeps
  n elements, the last chosen one repeated fewer times if R does not
  divide n.

  Args:
    ds: the epoch's n elements (tuples), in stream order.
    num_repeats: R > 1.
    n: elements of `ds` and of the result.
    read_all: read `ds` to its end though only the first ceil(n / R) are
      used, so an upstream `cache()` is filled (a partly read cache is
      discarded); else stop reading there.
  """
  chosen = -(-n // num_repeats)
  if read_all:
    ds = ds.enumerate().filter(lambda i, _: i < chosen).map(lambda _, x: x)
  else:
    ds = ds.take(chosen)

  def copies(*x):
    return tf.data.Dataset.from_tensors(x).repeat(num_repeats)

  return ds.flat_map(copies).take(n)
