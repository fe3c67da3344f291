"""The folder source (ROOT/{train,val}/<class>/*) and TFDS datasets by name.

Every image is one flat colour, so it survives cropping, flipping and
resizing: red tells its class, blue which file it is (unique per split).
"""

import collections
import hashlib
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from se_flax.data import folder
from se_flax.data import pipeline
from se_flax.data import tiny_imagenet
from tests.data.helpers import assert_same_batches
from tests.data.helpers import data_config
from tests.data.helpers import take

# Sorted: 'Mango' < 'apple' < 'zebra' (upper case first), not creation order.
CLASSES = ('zebra', 'apple', 'Mango')
RED = {'Mango': 60, 'apple': 140, 'zebra': 220}
SORTED = tuple(sorted(CLASSES))
TRAIN_PER_CLASS = (8, 7, 6)  # 21 files
VAL_PER_CLASS = (3, 2, 4)  # 9 files: not a multiple of 2, 4 or 8


def _pixels(cls: str, file_id: int, size=(40, 52), channels=3) -> np.ndarray:
  image = np.empty(size + (3,), np.uint8)
  image[...] = (RED[cls], RED[cls], 10 + 7 * file_id)
  return image[..., :channels]


def _write(path, image: np.ndarray, fmt: str) -> None:
  encode = tf.io.encode_png if fmt == 'png' else tf.io.encode_jpeg
  tf.io.write_file(path, encode(image))


def _make_split(split_dir, per_class, specials=()):
  """Writes per_class[k] images of CLASSES[k]; returns {path: (cls, id)}."""
  truth, file_id = {}, 0
  for cls, count in zip(CLASSES, per_class):
    os.makedirs(os.path.join(split_dir, cls))
    for i in range(count):
      # Mixed formats and extension cases; one PNG named .jpg.
      name, fmt = [
          (f'{i}.jpg', 'jpeg'),
          (f'{i}.PNG', 'png'),
          (f'{i}.JPEG', 'jpeg'),
          (f'{i}_really_png.jpg', 'png'),
      ][i % 4]
      path = os.path.join(split_dir, cls, name)
      _write(path, _pixels(cls, file_id), fmt)
      truth[path] = (cls, file_id)
      file_id += 1
  for cls, name, image in specials:
    path = os.path.join(split_dir, cls, name)
    _write(path, image, 'png')
    truth[path] = (cls, None)
  return truth


def _make_folder(root, **specials):
  train = _make_split(
      os.path.join(root, 'train'), TRAIN_PER_CLASS, specials.get('train', ())
  )
  val = _make_split(
      os.path.join(root, 'val'), VAL_PER_CLASS, specials.get('val', ())
  )
  # Ignored: hidden files and folders, other files.
  for split in ('train', 'val'):
    os.makedirs(os.path.join(root, split, '.ipynb_checkpoints'))
    for rel in ('.DS_Store', 'apple/._0.jpg', 'apple/notes.txt'):
      with open(os.path.join(root, split, rel), 'wb') as f:
        f.write(b'not an image')
  return train, val


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('folder'))
  gray = _pixels('zebra', 0)[..., :1]  # R = G = B: still class zebra
  rgba = np.concatenate([_pixels('Mango', 30), np.full((40, 52, 1), 9)], -1)
  specials = {
      'train': [('zebra', 'gray.png', gray)],
      'val': [('Mango', 'rgba.png', rgba.astype(np.uint8))],
  }
  train, val = _make_folder(root, **specials)
  return root, train, val


def _cfg(root, **overrides):
  return data_config(None, folder_root=root, **overrides)


def _class_of(images: np.ndarray) -> list:
  """Class name of each flat-coloured image, from its mean red."""
  red = images[..., 0].reshape(len(images), -1).mean(1)
  return [min(RED, key=lambda c: abs(RED[c] - r)) for r in red]


def _file_ids(images: np.ndarray) -> list:
  blue = images[..., 2].reshape(len(images), -1).mean(1)
  return [int(round((b - 10) / 7)) for b in blue]


def test_scan_sorts_classes_and_files(image_folder):
  root, train, val = image_folder
  scan = folder.scan_folder(root)
  assert scan.class_names == SORTED
  assert scan.info() == pipeline.DatasetInfo(22, 10, 3, SORTED)
  for split, truth in ((scan.train, train), (scan.val, val)):
    assert sorted(split.paths) == sorted(truth)  # nothing hidden or .txt
    for path, label in zip(split.paths, split.labels):
      assert SORTED[label] == truth[path][0] == path.split(os.sep)[-2]
    # Sorted by label, then by file name.
    keys = list(zip(split.labels, split.paths))
    assert keys == sorted(keys)


def test_labels_follow_sorted_class_names(image_folder):
  root, train, _ = image_folder
  it = folder.create_train_iterator(_cfg(root), global_batch_size=11, seed=0)
  batches = take(it, 4)  # two epochs of 22
  images = np.concatenate([b['image'] for b in batches])
  labels = np.concatenate([b['label'] for b in batches])
  assert images.shape == (44, 32, 32, 3) and images.dtype == np.uint8
  assert [SORTED[l] for l in labels] == _class_of(images)
  assert it.num_skipped == 0 and it.info.label_names == SORTED
  # Each epoch is a permutation of the 22 files, reshuffled each epoch.
  epochs = [images[:22], images[22:]]
  ids = [
      sorted(zip(_class_of(e), _file_ids(e)), key=lambda x: x[1])
      for e in epochs
  ]
  expected = sorted(
      ((c, i) for c, i in train.values() if i is not None),
      key=lambda x: x[1],
  )
  for got in ids:  # the gray one reads as id (220 - 10) / 7 = 30
    assert [x for x in got if x != ('zebra', 30)] == expected
  assert _file_ids(epochs[0]) != _file_ids(epochs[1])


def _digest(image):
  return hashlib.sha1(image.tobytes()).hexdigest()


def _eval_examples(cfg, batch, index, count, scan=None):
  ev = folder.create_eval_iterator(
      cfg,
      global_batch_size=batch,
      process_index=index,
      process_count=count,
      scan=scan,
  )
  kept = []
  for b in ev:
    assert b['image'].shape == (batch // count, 32, 32, 3)
    kept += [
        (_digest(im), int(l))
        for im, l, m in zip(b['image'], b['label'], b['mask'])
        if m
    ]
    assert not b['image'][~b['mask']].any()  # padding is blank
  return kept, ev


@pytest.mark.parametrize('batch', [4, 8])
def test_two_processes_cover_val_exactly_once(image_folder, batch):
  root, _, val = image_folder
  cfg, scan = _cfg(root), folder.scan_folder(root)
  whole, ev = _eval_examples(cfg, batch, 0, 1, scan)
  assert len(whole) == ev.num_examples == len(val) == 10
  assert len(set(whole)) == 10  # ten different files
  assert collections.Counter(l for _, l in whole) == collections.Counter(
      scan.val.labels.tolist()
  )
  parts = [_eval_examples(cfg, batch, i, 2, scan) for i in range(2)]
  assert [p[1].num_local_examples for p in parts] == [5, 5]
  assert len(parts[0][1]) == len(parts[1][1]) == -(-5 // (batch // 2))
  assert collections.Counter(parts[0][0] + parts[1][0]) == (
      collections.Counter(whole)
  )
  assert _eval_examples(cfg, batch, 0, 1, scan)[0] == whole  # repeatable


def test_eval_labels_and_rgba(image_folder):
  root, _, _ = image_folder
  ev = folder.create_eval_iterator(_cfg(root), global_batch_size=4)
  for b in ev:
    m = b['mask']
    assert [SORTED[l] for l in b['label'][m]] == _class_of(b['image'][m])


@pytest.mark.parametrize('process_count', [1, 2])
@pytest.mark.parametrize('start_step', [3, 5])
def test_resume_equals_uninterrupted(image_folder, process_count, start_step):
  # Process parts of 22 (or 11 each); 8 (4) per step: steps 3 and 5 start
  # mid-epoch, and their batches cross epoch boundaries.
  root = image_folder[0]
  for index in range(process_count):
    kw = dict(
        global_batch_size=8,
        seed=3,
        process_index=index,
        process_count=process_count,
    )
    full = take(folder.create_train_iterator(_cfg(root), **kw), start_step + 4)
    resumed = folder.create_train_iterator(
        _cfg(root), start_step=start_step, **kw
    )
    assert_same_batches(full[start_step:], take(resumed, 4))
    assert resumed.step == start_step + 4


def test_same_augmentation_as_the_tfds_path(tmp_path, tiny_gray_dir):
  """The same pixels, seed and position give the same crop on both paths."""
  # A one-example train split, and a folder holding just that image.
  builder = tfds.builder('se_flax_tiny_gray', data_dir=tiny_gray_dir)
  (example,) = builder.as_dataset(split='train[:1]').as_numpy_iterator()
  cls = ('ash', 'birch')[example['kind']]
  root = tmp_path / 'one'
  for split in ('train', 'val'):
    os.makedirs(root / split / cls)
    _write(str(root / split / cls / 'a.png'), example['picture'], 'png')
  cfg = data_config(
      tiny_gray_dir,
      name='se_flax_tiny_gray',
      image_key='picture',
      label_key='kind',
      train_split='train[:1]',
      eval_split='test',
      folder_root=str(root),
      pixel_jitter=20.0,
  )
  kw = dict(global_batch_size=4, seed=5)
  from_tfds = take(pipeline.create_train_iterator(cfg, **kw), 2)
  from_folder = take(folder.create_train_iterator(cfg, **kw), 2)
  np.testing.assert_array_equal(from_folder[0]['label'], 0)  # one class
  for a, b in zip(from_tfds, from_folder):
    np.testing.assert_array_equal(a['image'], b['image'])
  assert len({_digest(im) for b in from_tfds for im in b['image']}) == 8


def test_undecodable_files_are_counted_and_named(tmp_path, caplog):
  root = str(tmp_path / 'bad')
  train, val = _make_folder(root)
  bad_train = next(p for p, (c, _) in train.items() if c == 'apple')
  bad_val = next(p for p, (c, _) in val.items() if c == 'zebra')
  with open(bad_train, 'rb') as f:
    jpeg = f.read()
  with open(bad_train, 'wb') as f:
    f.write(tiny_imagenet.corrupt_bytes(jpeg))
  with open(bad_val, 'wb') as f:
    f.write(b'not an image at all')
  cfg = _cfg(root)
  it = folder.create_train_iterator(cfg, global_batch_size=7, seed=0)
  batches = take(it, 6)  # two epochs of 21
  assert it.num_skipped == 2 and it.undecodable_paths == {bad_train}
  assert bad_train in caplog.text
  for b in batches:  # the slot took a copy of a decodable example
    assert (b['image'].reshape(7, -1).max(1) > 0).all()
    assert [SORTED[l] for l in b['label']] == _class_of(b['image'])
  caplog.clear()
  ev = folder.create_eval_iterator(cfg, global_batch_size=4)
  masks = np.concatenate([b['mask'] for b in ev])
  assert masks.size == 12 and masks.sum() == len(val) - 1 == 8
  assert ev.num_examples == 9 and ev.num_skipped == 1
  assert ev.undecodable_paths == {bad_val} and bad_val in caplog.text


def _layout_error(root, *parts):
  with pytest.raises(folder.FolderError) as e:
    folder.scan_folder(str(root))
  msg = str(e.value)
  for part in parts:
    assert str(part) in msg, (part, msg)
  return msg


def _two_class_folder(root, train=('a', 'b'), val=('a', 'b')):
  for split, classes in (('train', train), ('val', val)):
    for cls in classes:
      os.makedirs(root / split / cls)
      _write(str(root / split / cls / 'x.png'), _pixels('apple', 0), 'png')


def test_layout_errors_name_the_path_and_the_layout(tmp_path):
  _layout_error(tmp_path / 'nowhere', 'nowhere', 'ROOT/train/<class>/*')
  _layout_error(tmp_path, tmp_path / 'train', '<class>')  # no train/
  with pytest.raises(folder.FolderError, match='folder_root is not set'):
    folder.scan_folder(None)
  _two_class_folder(tmp_path / 'ok')
  assert folder.scan_folder(str(tmp_path / 'ok')).class_names == ('a', 'b')

  os.makedirs(tmp_path / 'noval' / 'train' / 'a')
  _layout_error(tmp_path / 'noval', tmp_path / 'noval' / 'val')

  _two_class_folder(tmp_path / 'empty')
  os.remove(tmp_path / 'empty' / 'val' / 'b' / 'x.png')
  with open(tmp_path / 'empty' / 'val' / 'b' / 'x.gif', 'wb') as f:
    f.write(b'GIF89a')  # not an accepted extension
  msg = _layout_error(tmp_path / 'empty', tmp_path / 'empty' / 'val' / 'b')
  assert 'without images' in msg and '.png' in msg

  _two_class_folder(tmp_path / 'differ', val=('a', 'c'))
  msg = _layout_error(tmp_path / 'differ', 'differ')
  assert "only in train/: 'b'" in msg and "only in val/: 'c'" in msg

  flat = tmp_path / 'flat'
  for split in ('train', 'val'):
    os.makedirs(flat / split)
    _write(str(flat / split / 'x.jpg'), _pixels('apple', 0), 'jpeg')
  msg = _layout_error(flat, flat / 'train', 'no class folders')
  assert "'x.jpg'" in msg  # the stray images are named


def test_too_few_images_for_the_processes(tmp_path):
  _two_class_folder(tmp_path)
  with pytest.raises(folder.FolderError, match='2 validation image'):
    folder.create_eval_iterator(
        _cfg(str(tmp_path)),
        global_batch_size=3,
        process_index=0,
        process_count=3,
    )


# A tiny non-ImageNet TFDS dataset: grayscale PNGs, its own feature names,
# 'train' and 'test' splits only (no 'validation').
class _TinyGray(tfds.core.GeneratorBasedBuilder):
  """Registered as 'se_flax_tiny_gray'."""

  name = 'se_flax_tiny_gray'
  VERSION = tfds.core.Version('1.0.0')
  IMAGES = {
      'train': [(_pixels('zebra', 2 * i)[..., :1], i % 2) for i in range(6)],
      'test': [(_pixels('zebra', 2 * i + 1)[..., :1], i % 2) for i in range(3)],
  }

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(
            {
                'picture': tfds.features.Image(shape=(None, None, 1)),
                'kind': tfds.features.ClassLabel(names=['ash', 'birch']),
            }
        )
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {s: self._generate_examples(s) for s in self.IMAGES}

  def _generate_examples(self, split):
    for i, (image, label) in enumerate(self.IMAGES[split]):
      yield i, {'picture': image, 'kind': label}


@pytest.fixture(scope='module')
def tiny_gray_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tiny_gray'))
  _TinyGray(data_dir=data_dir).download_and_prepare()
  return data_dir


def test_any_tfds_classification_dataset_by_name(tiny_gray_dir):
  cfg = data_config(
      tiny_gray_dir,
      name='se_flax_tiny_gray',
      image_key='picture',
      label_key='kind',
      eval_split='test',
  )
  info = pipeline.dataset_info(cfg)
  assert info == pipeline.DatasetInfo(6, 3, 2, ('ash', 'birch'))
  batch = next(pipeline.create_train_iterator(cfg, global_batch_size=6, seed=0))
  assert batch['image'].shape == (6, 32, 32, 3)  # gray made RGB
  assert sorted(batch['label'].tolist()) == [0, 0, 0, 1, 1, 1]
  px = batch['image'].reshape(6, -1, 3)
  np.testing.assert_array_equal(px[..., 0], px[..., 2])  # R = B: gray
  ev = pipeline.create_eval_iterator(cfg, global_batch_size=2)
  assert sum(int(b['mask'].sum()) for b in ev) == 3


def test_tfds_dataset_mismatch_errors_list_what_it_has(tiny_gray_dir):
  base = dict(name='se_flax_tiny_gray', image_key='picture', label_key='kind')
  cases = [
      (dict(), ["no eval split 'validation'", "['test', 'train']", "'test'"]),
      (dict(eval_split='test', image_key='image'), ["no feature 'image'"]),
      (
          dict(eval_split='test', label_key='picture'),
          ["'picture'", 'not a ClassLabel'],
      ),
  ]
  for overrides, parts in cases:
    cfg = data_config(tiny_gray_dir, **{**base, **overrides})
    with pytest.raises(pipeline.DatasetMismatchError) as e:
      pipeline.dataset_info(cfg)
    for part in parts:
      assert part in str(e.value), (part, str(e.value))


@pytest.mark.slow  # ~25 s on 2 cores, mostly compiling
def test_train_and_evaluate_on_a_folder(tmp_path):
  from se_flax.train import loop  # pylint: disable=g-import-not-at-top
  from tests.train.tiny_config import tiny_config  # pylint: disable=g-import-not-at-top

  # Five classes: the loop's eval step reports top-5.
  root, rng = tmp_path / 'images', np.random.default_rng(0)
  for split, count in (('train', 8), ('val', 3)):
    for label in range(5):
      os.makedirs(root / split / f'class_{label}')
      for i in range(count):
        image = tiny_imagenet.class_image(rng, label, 5, 36, 44, noise=8.0)
        path = str(root / split / f'class_{label}' / f'{i}.jpg')
        _write(path, image, 'jpeg')
  config = tiny_config(num_train_steps=3, eval_batch_size=8)
  config.data.source = 'folder'
  config.data.folder_root = str(root)
  config.data.prefetch = 1
  result = loop.train_and_evaluate(config, str(tmp_path / 'workdir'))
  assert result.eval_metrics['eval/num_examples'] == 15  # all of val/
  assert int(result.state.step) == 3
