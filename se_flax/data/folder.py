"""Your own images: ROOT/train/<class>/* and ROOT/val/<class>/*, streamed.

    scan = folder.scan_folder(config.data.folder_root)  # lists, reads none
    train = folder.create_train_iterator(
        config.data, scan=scan, global_batch_size=1024, seed=0,
        start_step=step, process_index=jax.process_index(),
        process_count=jax.process_count())
    evals = folder.create_eval_iterator(
        config.data, scan=scan, global_batch_size=1000, ...)

Batches are `pipeline`'s: {'image': uint8 [B, S, S, 3], 'label': int32
[B]}, plus 'mask': bool [B] for eval; B = global_batch_size //
process_count. Augmentation, eval crop, padding and bad-example handling
are the same code as the TFDS path's (`stream.py`).

Layout: each class is a folder in both train/ and val/; label i is the i-th
class folder name in sorted order (`scan.class_names`, the `DatasetInfo`'s
label_names). Images are the files directly in a class folder whose names
end in .jpg, .jpeg or .png (any case); names starting with '.' are
ignored, as are other files and subfolders. The format is judged from the
bytes, so a PNG named .jpg decodes too; JPEGs take the fused
decode-and-crop path. Grayscale and RGBA images become RGB. The only
preparation is `scan_folder`: one listing per class folder, nothing read.
Images over `large_images.LARGE_IMAGE_PIXELS` (judged from their header
as they are read) are used, with a warning naming the first.

Errors: `scan_folder` raises `FolderError` (a ValueError naming the path
and what was expected) for a missing ROOT, train/ or val/, a split with no
class folders, a class folder without images, and class sets that differ
between train/ and val/; `create_inputs` scans before anything compiles.

Sharding: process p of P takes files p, p + P, p + 2P, ... of the sorted
list. Parts differ in size by at most one (the first ones larger, as with
`tfds.split_for_jax_process`), together hold every file once, and each
process sees every class (a contiguous split of a class-sorted list would
give each process a few classes, and per-device BatchNorm biased batches).

Training stream (as `pipeline`'s): process p's examples are numbered by
position i = 0, 1, ... over epochs of its n_p files; epoch e visits them in
the order of a permutation seeded by (seed, p, e), an exact shuffle with no
buffer; example i is augmented with the stateless seed (seed, p, i). So
the batch of step s is a function of (seed, s, P) and the files. Resuming
at step S starts at epoch S B // n_p, offset S B % n_p: no file before it
is read.

Repeated augmentation (config.data.repeated_augmentation = R > 1) is
timm's RepeatAugSampler with the processes as its ranks: epoch e permutes
all N files with a seed from (seed, e) alone, the same on every process,
repeats each R times and deals them out as timm does (`repeats.py`), so
the R copies of a file go to R different processes, each copy at a
position of its own (its own augmentation). Each process's epoch then has
`repeats.num_selected(N, R, P)` positions (in place of n_p above, for the
resume arithmetic too), about N / P, and all processes together see about
N / R distinct files per epoch.

Bad files: a file that does not decode (or can not be read) is caught per
example. In training it is counted in `num_skipped` every epoch, warned
about with its path once, and its slot takes a copy of another example of
the batch. In eval its mask is False, it is counted in the iterable's
`num_skipped` and `undecodable_paths` and logged with its path, and the
training loop warns that the metric covers fewer than `num_examples`
images: an exact evaluation is never silently smaller.
"""

import concurrent.futures
import dataclasses
import math
import os
from typing import Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from se_flax.data import epoch_order
from se_flax.data import large_images
from se_flax.data import stream
from se_flax.data import tf_setup

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
SPLITS = ('train', 'val')
_LISTING_THREADS = 16  # listings are latency-bound on object stores
_SHOW = 5  # names quoted in an error before '...'


class FolderError(ValueError):
  """The image folder is not laid out as ROOT/{train,val}/<class>/images."""


@dataclasses.dataclass(frozen=True, eq=False)
class FolderSplit:
  """The image files of one split, sorted by class, then by file name.

  Attributes:
    paths: object [n] of str, full file paths.
    labels: int32 [n], class indices.
  """

  paths: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.paths)

  def part(self, index: int, count: int) -> Tuple[np.ndarray, np.ndarray]:
    """Process `index` of `count`'s files: every count-th from `index`."""
    return self.paths[index::count], self.labels[index::count]


@dataclasses.dataclass(frozen=True, eq=False)
class FolderScan:
  """What `scan_folder` found: class names and both splits' files."""

  root: str
  class_names: Tuple[str, ...]
  train: FolderSplit
  val: FolderSplit

  def info(self) -> stream.DatasetInfo:
    return stream.DatasetInfo(
        num_train_examples=len(self.train),
        num_eval_examples=len(self.val),
        num_classes=len(self.class_names),
        label_names=self.class_names,
    )


def _quote(names: Sequence[str]) -> str:
  shown = ', '.join(repr(n) for n in list(names)[:_SHOW])
  return shown + (f', ... ({len(names)} in all)' if len(names) > _SHOW else '')


def _is_image(name: str) -> bool:
  return not name.startswith('.') and name.lower().endswith(IMAGE_EXTENSIONS)


def _class_folders(split_dir: str) -> Tuple[str, ...]:
  """Sorted names of the (non-hidden) folders in `split_dir`."""
  if not tf.io.gfile.isdir(split_dir):
    raise FolderError(
        f'{split_dir} does not exist: expected a folder per class there, '
        f'{split_dir}/<class>/*.jpg|png (the folder source reads '
        'ROOT/train/<class>/* and ROOT/val/<class>/*).'
    )
  entries = [n.rstrip('/') for n in tf.io.gfile.listdir(split_dir)]
  # Images lying in split_dir itself are not stat-ed one by one.
  stray = [n for n in entries if _is_image(n)]
  names = sorted(
      n
      for n in entries
      if not n.startswith('.')
      and not _is_image(n)
      and tf.io.gfile.isdir(os.path.join(split_dir, n))
  )
  if not names:
    found = f'; it holds images ({_quote(sorted(stray))})' if stray else ''
    raise FolderError(
        f"{split_dir} has no class folders{found}: put each class's images "
        f'in a folder of its own, {split_dir}/<class>/, named the same in '
        'train/ and val/.'
    )
  return tuple(names)


def _list_images(class_dir: str) -> list:
  return sorted(n for n in tf.io.gfile.listdir(class_dir) if _is_image(n))


def _scan_split(split_dir: str, class_names: Sequence[str]) -> FolderSplit:
  dirs = [os.path.join(split_dir, c) for c in class_names]
  with concurrent.futures.ThreadPoolExecutor(_LISTING_THREADS) as pool:
    listings = list(pool.map(_list_images, dirs))
  empty = [d for d, files in zip(dirs, listings) if not files]
  if empty:
    raise FolderError(
        f'Class folder(s) without images: {_quote(empty)}. Expected files '
        f'ending in {", ".join(IMAGE_EXTENSIONS)} (any case) directly in '
        'each class folder (subfolders are not searched); every class '
        'needs at least one image in train/ and one in val/.'
    )
  paths = [
      os.path.join(d, f) for d, files in zip(dirs, listings) for f in files
  ]
  labels = np.repeat(
      np.arange(len(dirs), dtype=np.int32), [len(f) for f in listings]
  )
  return FolderSplit(np.array(paths, dtype=object), labels)


def scan_folder(root: Optional[str]) -> FolderScan:
  """Lists ROOT/{train,val}/<class>/ images; reads no image.

  Args:
    root: the folder (local or gs://), `config.data.folder_root`.

  Returns:
    A `FolderScan`; class i is `class_names[i]`, the sorted folder names.

  Raises:
    FolderError: the layout is not ROOT/{train,val}/<class>/images (see the
      module docstring); the message names the path and what was expected.
  """
  tf_setup.hide_accelerators_from_tf()
  if not root:
    raise FolderError(
        'config.data.folder_root is not set: the folder source needs '
        'ROOT with ROOT/train/<class>/* and ROOT/val/<class>/* images.'
    )
  if not tf.io.gfile.isdir(root):
    raise FolderError(
        f'config.data.folder_root={root!r} does not exist (or is not a '
        'folder): expected ROOT/train/<class>/* and ROOT/val/<class>/* '
        'images there.'
    )
  train_dir, val_dir = (os.path.join(root, s) for s in SPLITS)
  train_classes = _class_folders(train_dir)
  val_classes = _class_folders(val_dir)
  if train_classes != val_classes:
    only_train = sorted(set(train_classes) - set(val_classes))
    only_val = sorted(set(val_classes) - set(train_classes))
    raise FolderError(
        f'The class folders of {train_dir} and {val_dir} differ (only in '
        f'train/: {_quote(only_train) or "none"}; only in val/: '
        f'{_quote(only_val) or "none"}). Every class needs a folder of the '
        'same name in both: labels are the sorted folder names.'
    )
  return FolderScan(
      root=root,
      class_names=train_classes,
      train=_scan_split(train_dir, train_classes),
      val=_scan_split(val_dir, train_classes),
  )


def _scan(data_config, scan: Optional[FolderScan]) -> FolderScan:
  return scan if scan is not None else scan_folder(data_config.folder_root)


def _check_enough(split: FolderSplit, name: str, count: int) -> None:
  if len(split) < count:
    raise FolderError(
        f'{len(split)} {name} image(s) can not be split over {count} '
        'processes: each needs at least one.'
    )


def _process_part(split: FolderSplit, name: str, index: int, count: int):
  _check_enough(split, name, count)
  paths, labels = split.part(index, count)
  return tf.constant(paths, tf.string), tf.constant(labels, tf.int32)


def dataset_info(
    data_config, scan: Optional[FolderScan] = None
) -> stream.DatasetInfo:
  """Split sizes, number of classes and the class names (label order)."""
  return _scan(data_config, scan).info()


def train_dataset(
    data_config,
    *,
    scan: FolderScan,
    global_batch_size: int,
    seed: int,
    start_step: int,
    process_index: int,
    process_count: int,
) -> tf.data.Dataset:
  """The process's infinite training stream (see the module docstring).

  Returns:
    tf.data.Dataset of {'image': uint8 [B, S, S, 3], 'label': int32 [B],
    'num_skipped': int32 [], 'undecodable': tf.string [k]}, S =
    data_config.image_size; undecodable names the batch's k failed files.
  """
  local = stream.local_batch(global_batch_size, process_count)
  _check_enough(scan.train, 'training', process_count)
  paths = tf.constant(scan.train.paths, tf.string)
  labels = tf.constant(scan.train.labels, tf.int32)
  augment_root, _ = stream.seed_roots(seed, process_index)
  ds = epoch_order.folder_order(
      len(scan.train),
      num_repeats=data_config.repeated_augmentation,
      seed=seed,
      first_position=start_step * local,
      process_index=process_index,
      process_count=process_count,
  )
  preprocess = stream.train_preprocess_fn(data_config, jpeg=None)
  files = large_images.CheckedReader('training')

  def decode(position, path, label):
    seed = stream.augmentation_seed(augment_root, position)
    image = preprocess(files.read(path), seed)
    return {'image': image, 'label': label, 'path': path}

  def fallback(position, index):
    del position
    return {**stream.blank(data_config.image_size), 'path': paths[index]}

  return stream.train_batches(
      ds,
      decode,
      fallback,
      data_config=data_config,
      batch_size=local,
      prepare_batch=lambda positions, order: (
          positions,
          tf.gather(paths, order),
          tf.gather(labels, order),
      ),
  )


def create_train_iterator(
    data_config,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    scan: Optional[FolderScan] = None,
) -> stream.TrainIterator:
  """This process's training batches from global step `start_step` on.

  Args:
    data_config: `config.data`; folder_root names ROOT unless `scan` given.
    global_batch_size: examples per step over all processes.
    seed: data seed; with the step it determines every batch.
    start_step: global step of the first batch (the restored step).
    process_index: this process, `jax.process_index()`.
    process_count: `jax.process_count()`; must divide global_batch_size.
    scan: `scan_folder(root)`'s result, to scan only once.

  Returns:
    A `stream.TrainIterator` of {'image': uint8 [B, S, S, 3] NHWC,
    'label': int32 [B]}; also `num_train_examples`, `num_classes`,
    `num_skipped` and `undecodable_paths`.
  """
  scan = _scan(data_config, scan)
  ds = train_dataset(
      data_config,
      scan=scan,
      global_batch_size=global_batch_size,
      seed=seed,
      start_step=start_step,
      process_index=process_index,
      process_count=process_count,
  )
  return stream.TrainIterator(ds, scan.info(), start_step)


def create_eval_iterator(
    data_config,
    *,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    scan: Optional[FolderScan] = None,
) -> stream.EvalIterable:
  """This process's padded, masked batches covering val/ once per pass.

  Args:
    data_config: `config.data`; folder_root names ROOT unless `scan` given.
    global_batch_size: eval examples per step over all processes.
    process_index: this process, `jax.process_index()`.
    process_count: `jax.process_count()`; must divide global_batch_size.
    scan: `scan_folder(root)`'s result, to scan only once.

  Returns:
    A `stream.EvalIterable`; every process yields the same number of
    batches, and the masks over all of them sum to the number of val/
    images, less the undecodable ones (counted in `num_skipped`, named in
    `undecodable_paths`).
  """
  scan = _scan(data_config, scan)
  local = stream.local_batch(global_batch_size, process_count)
  total = len(scan.val)
  # Parts differ by at most one; the largest sets the batch count.
  num_batches = math.ceil(math.ceil(total / process_count) / local)
  paths, labels = _process_part(
      scan.val, 'validation', process_index, process_count
  )
  num_local = int(paths.shape[0])
  size = stream.eval_image_size(data_config)
  preprocess = stream.eval_preprocess_fn(data_config, jpeg=None)
  files = large_images.CheckedReader('eval')

  def decode(path, label, real):
    # Padding (real False) is neither read nor decoded.
    image = tf.cond(
        real,
        lambda: preprocess(files.read(path)),
        lambda: tf.zeros([size, size, 3], tf.uint8),
    )
    return {'image': image, 'label': label, 'path': path}

  def fallback(path, label, real):
    del label, real
    return {**stream.blank(size), 'path': path}

  ds = stream.eval_batches(
      tf.data.Dataset.from_tensor_slices((paths, labels)),
      (tf.constant(''), tf.constant(0, tf.int32)),
      decode,
      fallback,
      data_config=data_config,
      batch_size=local,
      num_pad=num_batches * local - num_local,
  )
  return stream.EvalIterable(ds, total, num_local, num_batches)
