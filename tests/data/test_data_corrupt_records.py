"""Damaged (corrupt or truncated) TFRecord files: named errors, opt-in skip.

Each test damages a copy of the session's tiny ImageNet (2 train files of 30
records, 2 validation files), never the shared fixture.
"""

import hashlib
import os
import shutil
import struct

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from se_flax.data import pipeline
from se_flax.data import records
from tests.data.helpers import NUM_TRAIN
from tests.data.helpers import data_config
from tests.data.helpers import assert_same_batches, take


def _copy(tiny_dirs, tmp_path):
  """A private copy of the tiny ImageNet's data_dir."""
  data_dir = str(tmp_path / 'tfds')
  shutil.copytree(tiny_dirs[0], data_dir)
  return data_dir


def _files(data_dir, split):
  builder = tfds.builder('imagenet2012', data_dir=data_dir)
  return records.process_shard(builder, split, 0, 1).filenames


def _record_start(path, index):
  """Byte offset of record `index` of an intact TFRecord file."""
  with open(path, 'rb') as f:
    data = f.read()
  start = 0
  for _ in range(index):
    start += 16 + struct.unpack('<Q', data[start : start + 8])[0]
  return start


def _overwrite(path, index):
  """Zeroes 16 bytes of record `index`'s data; returns TF's offset."""
  start = _record_start(path, index)
  with open(path, 'r+b') as f:
    f.seek(start + 12 + 20)
    f.write(bytes(16))
  return start + 12  # the data CRC fails: TF names where the data starts


def _truncate(path, index):
  """Cuts the file inside record `index`'s data; returns TF's offset."""
  start = _record_start(path, index)
  os.truncate(path, start + 12 + 20)
  return start


def _cut(path, index):
  """Cuts the file just before record `index` (no TF error at all)."""
  start = _record_start(path, index)
  os.truncate(path, start)
  return start


def _train(cfg, **kw):
  return pipeline.create_train_iterator(cfg, **{'seed': 0, **kw})


def _damaged_train(tiny_dirs, tmp_path):
  """Train file 0 corrupt at record 20, file 1 truncated in record 25.

  Returns (data_dir, paths); 10 + 5 = 15 records a pass can not read.
  """
  data_dir = _copy(tiny_dirs, tmp_path)
  paths = _files(data_dir, 'train')
  _overwrite(paths[0], 20)
  _truncate(paths[1], 25)
  return data_dir, paths


@pytest.mark.parametrize(
    'damage, what',
    [
        (_overwrite, 'corrupted record at byte'),
        (_truncate, 'truncated record at byte'),
        (_cut, 'record boundary'),
    ],
)
def test_damaged_train_file_error_names_file_and_offset(
    tiny_dirs, tmp_path, damage, what
):
  data_dir = _copy(tiny_dirs, tmp_path)
  path = _files(data_dir, 'train')[1]
  offset = damage(path, 15)
  it = _train(data_config(data_dir), global_batch_size=12)
  with pytest.raises(pipeline.CorruptRecordError) as e:
    take(it, NUM_TRAIN // 12)  # one epoch
  msg = str(e.value)
  assert e.value.path == path and path in msg
  assert e.value.offset == offset and f'at byte {offset}' in msg
  assert what in msg and 'skip_corrupt_records = True' in msg
  # One error, not a cascade: the traceback's last line says it all.
  assert e.value.__cause__ is None and e.value.__context__ is None


def test_skipping_corrupt_records_is_counted_and_deterministic(
    tiny_dirs, tmp_path, caplog
):
  data_dir, paths = _damaged_train(tiny_dirs, tmp_path)
  cfg = data_config(data_dir, skip_corrupt_records=True)
  # Batch 12: 5 steps per epoch; two epochs.
  a, b = _train(cfg, global_batch_size=12), _train(cfg, global_batch_size=12)
  batches = take(a, 10)
  assert_same_batches(batches, take(b, 10))
  assert a.num_corrupt_records == 2 * 15 and a.num_skipped == 0
  for path in paths:
    assert path in caplog.text
  for e in range(2):
    epoch = batches[5 * e :][:5]
    images = np.concatenate([x['image'] for x in epoch])
    assert (images.reshape(len(images), -1).max(1) > 0).all()  # no blanks
    # The 45 readable examples once each; lost slots repeat some of them.
    digests = {hashlib.sha1(im.tobytes()).hexdigest() for im in images}
    assert len(digests) == NUM_TRAIN - 15
  # The cached path (one file order, read once) skips the same records.
  cfg.cache = True
  cached = _train(cfg, global_batch_size=12)
  take(cached, 10)
  assert cached.num_corrupt_records == 2 * 15


@pytest.mark.parametrize('start_step', [3, 7])
def test_skipping_corrupt_records_resume_equals_uninterrupted(
    tiny_dirs, tmp_path, start_step
):
  data_dir, _ = _damaged_train(tiny_dirs, tmp_path)
  cfg = data_config(data_dir, skip_corrupt_records=True)
  # Batch 16 over 60 positions: steps 3 and 7 start mid-epoch.
  full = take(_train(cfg, global_batch_size=16), start_step + 4)
  resumed = _train(cfg, global_batch_size=16, start_step=start_step)
  assert_same_batches(full[start_step:], take(resumed, 4))
  assert resumed.num_corrupt_records > 0


def test_damaged_eval_file_raises_even_when_skipping(tiny_dirs, tmp_path):
  data_dir = _copy(tiny_dirs, tmp_path)
  path = _files(data_dir, 'validation')[0]
  offset = _overwrite(path, 5)
  cfg = data_config(data_dir, skip_corrupt_records=True)
  evals = pipeline.create_eval_iterator(cfg, global_batch_size=8)
  with pytest.raises(pipeline.CorruptRecordError) as e:
    list(evals)
  msg = str(e.value)
  assert e.value.path == path and path in msg
  assert e.value.offset == offset and f'at byte {offset}' in msg
  assert 'Evaluation never skips' in msg
  # Training on the same files still reads (its files are intact).
  assert _train(cfg, global_batch_size=12).num_corrupt_records == 0


def test_find_damage_locates_every_kind(tmp_path):
  intact = str(tmp_path / 'intact.tfrecord')
  with tf.io.TFRecordWriter(intact) as writer:
    for i in range(6):
      writer.write(bytes([i]) * 100)
  with open(intact, 'rb') as f:
    data = f.read()
  r3 = 3 * 116  # record 3's offset: 100 bytes + 16 of framing each
  cases = {
      'data': (
          data[: r3 + 40] + bytes(8) + data[r3 + 48 :],
          r3 + 12,
          'corrupted record',
      ),
      'length': (data[:r3] + b'\xff' + data[r3 + 1 :], r3, 'corrupted record'),
      'in_data': (data[: r3 + 40], r3, 'truncated record'),
      'in_header': (data[: r3 + 5], r3, '12-byte header'),
      'boundary': (data[:r3], r3, 'ends after 3 whole record(s)'),
  }
  for name, (damaged, offset, what) in cases.items():
    path = str(tmp_path / f'{name}.tfrecord')
    with open(path, 'wb') as f:
      f.write(damaged)
    got, message = records.find_damage(path, min_records=6)
    assert got == offset and what in message, (name, message)
    assert name == 'boundary' or "the file's record #3" in message, name
  assert records.find_damage(intact, min_records=6)[0] is None
  got, message = records.find_damage(str(tmp_path / 'missing'), 6)
  assert got == 0 and 'NotFoundError' in message
