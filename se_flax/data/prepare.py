"""Prepares ImageNet (ILSVRC 2012) for TFDS, with preflight checks.

    python -m se_flax.data.prepare --manual_dir=/data/imagenet_tars \\
        --data_dir=/data/tensorflow_datasets

wraps TFDS's own `imagenet2012` builder. Before the hours-long build it checks
that both archives are present and look like ImageNet's (first entries), and
that the disk holding data_dir has room; when something is off it prints the
exact layout it expects, and exits non-zero. `--dry_run` only checks.

Other TFDS datasets (`--name=cifar10`, ...) are passed to TFDS unchecked.
"""

import argparse
import dataclasses
import os
import shutil
import sys
import tarfile
from typing import List, Optional, Sequence

from absl import logging
import tensorflow as tf
import tensorflow_datasets as tfds

from se_flax.data import tf_setup

IMAGENET = 'imagenet2012'
TRAIN_TAR = 'ILSVRC2012_img_train.tar'
VAL_TAR = 'ILSVRC2012_img_val.tar'
EXPECTED_FILES = (TRAIN_TAR, VAL_TAR)
# Sizes of the official archives, bytes.
OFFICIAL_SIZES = {TRAIN_TAR: 147_897_477_120, VAL_TAR: 6_744_924_160}
# TFDS's shuffler spills the split to disk before writing the final records,
# so the build peaks near twice the archives; the result is about their size.
_PEAK_DISK_FACTOR = 2.1

GIB = 1 << 30


def expected_layout(manual_dir: str) -> str:
  """The manual directory TFDS's imagenet2012 builder expects, as text."""
  return (
      f'{manual_dir}/\n'
      f'  {TRAIN_TAR}  (~138 GiB; 1000 inner tars n01440764.tar ..., each\n'
      f'  {" " * len(TRAIN_TAR)}   holding that synset\'s JPEGs, e.g.'
      ' n01440764_10026.JPEG)\n'
      f'  {VAL_TAR}    (~6.3 GiB; 50,000 JPEGs ILSVRC2012_val_00000001.JPEG'
      ' ...)\n'
      'Register at https://image-net.org/download-images to download them.'
  )


def data_root(data_dir: Optional[str]) -> str:
  """The TFDS data directory: `data_dir`, else TFDS's default."""
  return data_dir or os.fspath(tfds.core.constants.DATA_DIR)


def default_manual_dir(data_dir: Optional[str]) -> str:
  """TFDS's default manual directory: <data_dir>/downloads/manual."""
  return os.path.join(data_root(data_dir), 'downloads', 'manual')


def missing_data_message(
    name: str, data_dir: Optional[str], manual_dir: Optional[str]
) -> str:
  """Explains where prepared data was looked for and how to make it.

  Args:
    name: TFDS name, e.g. 'imagenet2012'.
    data_dir: TFDS data directory searched (None: TFDS's default).
    manual_dir: ImageNet archive directory (None: TFDS's default).

  Returns:
    A message naming the directories, and for ImageNet the expected files,
    whether each was found, and the command that prepares them.
  """
  root = data_root(data_dir)
  msg = f'TFDS dataset {name!r} is not prepared under {root}.'
  if name.split(':')[0].split('/')[0] != IMAGENET:
    return msg + ' Prepare it with tfds.builder(name).download_and_prepare().'
  manual_dir = manual_dir or default_manual_dir(data_dir)
  exists = lambda f: tf.io.gfile.exists(os.path.join(manual_dir, f))
  found = ', '.join(
      f'{f}: {"found" if exists(f) else "MISSING"}' for f in EXPECTED_FILES
  )
  return (
      f'{msg}\nImageNet needs the manual archives {TRAIN_TAR} and {VAL_TAR}'
      f' in the manual directory; looked in {manual_dir} ({found}).\n'
      f'Expected layout:\n{expected_layout(manual_dir)}\n'
      f'Then run: python -m se_flax.data.prepare --manual_dir={manual_dir}'
      f' --data_dir={root}'
  )


def _first_member(path: str) -> Optional[str]:
  """Name of the first entry of a tar archive, None if unreadable."""
  try:
    with tf.io.gfile.GFile(path, 'rb') as f:
      with tarfile.open(fileobj=f, mode='r|') as tar:
        for member in tar:
          return member.name
  except (tarfile.TarError, OSError):
    return None
  return None


@dataclasses.dataclass
class Preflight:
  """Result of `preflight`: blocking problems, notes, and the disk estimate."""

  problems: List[str]
  notes: List[str]
  archive_bytes: int
  needed_bytes: int
  free_bytes: Optional[int]


def preflight(manual_dir: str, data_dir: str) -> Preflight:
  """Checks the ImageNet archives and the free disk space before a build.

  Args:
    manual_dir: directory that should hold the two archives.
    data_dir: TFDS data directory the build writes to (local or gs://).

  Returns:
    A `Preflight`; an empty `problems` list means the build may start.
  """
  problems, notes, total = [], [], 0
  for fname, prefix in ((TRAIN_TAR, 'n'), (VAL_TAR, 'ILSVRC2012_val_')):
    path = os.path.join(manual_dir, fname)
    if not tf.io.gfile.exists(path):
      problems.append(f'missing {path}')
      continue
    size = tf.io.gfile.stat(path).length
    total += size
    first = _first_member(path)
    if first is None or not os.path.basename(first).startswith(prefix):
      problems.append(
          f'{path} does not look like {fname}: first entry {first!r}, '
          f'expected {prefix}...'
      )
    if size != OFFICIAL_SIZES[fname]:
      notes.append(
          f'{fname} is {size / GIB:.2f} GiB, not the official '
          f'{OFFICIAL_SIZES[fname] / GIB:.2f} GiB (fine for a subset).'
      )
  needed = int(total * _PEAK_DISK_FACTOR)
  free = None
  if not data_dir.startswith('gs://'):
    probe = data_dir
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
      probe = os.path.dirname(probe)
    free = shutil.disk_usage(probe).free
    if free < needed:
      problems.append(
          f'{data_dir} has {free / GIB:.1f} GiB free; the build needs about '
          f'{needed / GIB:.1f} GiB ({_PEAK_DISK_FACTOR}x the archives, since '
          'TFDS shuffles on disk).'
      )
  return Preflight(problems, notes, total, needed, free)


def prepare(
    name: str = IMAGENET,
    *,
    data_dir: Optional[str] = None,
    manual_dir: Optional[str] = None,
    num_shards: Optional[int] = None,
    check: bool = True,
):
  """Builds a TFDS dataset (ImageNet from its manual archives).

  Args:
    name: TFDS name; 'imagenet2012' gets the preflight checks.
    data_dir: TFDS data directory; None means TFDS's default.
    manual_dir: archive directory; None means <data_dir>/downloads/manual.
    num_shards: record files per split; None lets TFDS choose.
    check: run `preflight` first and raise on its problems.

  Returns:
    The prepared `tfds.core.DatasetBuilder`.

  Raises:
    FileNotFoundError: the preflight found a problem; the message lists it
      and the expected layout.
  """
  tf_setup.hide_accelerators_from_tf()
  builder = tfds.builder(name, data_dir=data_dir)
  if builder.is_prepared():
    logging.info('%s already prepared in %s', name, builder.data_dir)
    return builder
  manual_dir = manual_dir or default_manual_dir(data_dir)
  if check and name == IMAGENET:
    report = preflight(manual_dir, data_root(data_dir))
    for note in report.notes:
      logging.info('preflight: %s', note)
    if report.problems:
      raise FileNotFoundError(
          'ImageNet preflight failed:\n  '
          + '\n  '.join(report.problems)
          + f'\nExpected layout:\n{expected_layout(manual_dir)}'
      )
  config = tfds.download.DownloadConfig(
      manual_dir=manual_dir, num_shards=num_shards
  )
  builder.download_and_prepare(download_config=config)
  return builder


def _print_report(report: Preflight, manual_dir: str) -> None:
  for line in report.notes:
    print(f'note: {line}')
  free = (
      'unknown (gs://)'
      if report.free_bytes is None
      else f'{report.free_bytes / GIB:.1f} GiB'
  )
  print(
      f'archives: {report.archive_bytes / GIB:.1f} GiB; the build needs '
      f'about {report.needed_bytes / GIB:.1f} GiB; free: {free}'
  )
  if report.problems:
    print('problems:\n  ' + '\n  '.join(report.problems))
    print(f'expected layout:\n{expected_layout(manual_dir)}')


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--name', default=IMAGENET, help='TFDS dataset name.')
  parser.add_argument('--data_dir', default=None, help='TFDS data dir.')
  parser.add_argument('--manual_dir', default=None, help='Archive dir.')
  parser.add_argument(
      '--dry_run', action='store_true', help='Only run the checks.'
  )
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.INFO)
  tf_setup.hide_accelerators_from_tf()
  builder = tfds.builder(args.name, data_dir=args.data_dir)
  if builder.is_prepared():
    print(f'{args.name} is already prepared in {builder.data_dir}')
    return 0
  if args.name == IMAGENET:
    manual_dir = args.manual_dir or default_manual_dir(args.data_dir)
    report = preflight(manual_dir, data_root(args.data_dir))
    _print_report(report, manual_dir)
    if report.problems:
      return 1
    print('preflight ok')
  if args.dry_run:
    return 0
  builder = prepare(
      args.name,
      data_dir=args.data_dir,
      manual_dir=args.manual_dir,
      check=False,  # done above
  )
  print(f'prepared {args.name} in {builder.data_dir}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
