"""The ImageNet-format archive generator and its TFDS preparation."""

import io
import os
import tarfile

import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from se_flax.data import tiny_imagenet
from tests.data.helpers import NUM_TRAIN
from tests.data.helpers import NUM_VAL
from tests.data.helpers import TINY


def test_archives_have_imagenets_layout(tiny_dirs):
  manual = tiny_dirs[1]
  first = tiny_imagenet.synsets()[:5]
  with tarfile.open(os.path.join(manual, 'ILSVRC2012_img_train.tar')) as t:
    assert t.getnames() == [f'{s}.tar' for s in first]
    inner = tarfile.open(
        fileobj=io.BytesIO(t.extractfile(f'{first[0]}.tar').read())
    )
    assert inner.getnames()[:2] == [f'{first[0]}_1.JPEG', f'{first[0]}_2.JPEG']
  with tarfile.open(os.path.join(manual, 'ILSVRC2012_img_val.tar')) as t:
    files = [m.name for m in t.getmembers() if m.isfile()]
    names = t.getnames()
  assert len(files) == NUM_VAL
  assert all(
      f.startswith('ILSVRC2012_val_') and f.endswith('.JPEG') for f in files
  )
  # Every number up to the last image is present (files or gap entries),
  # so TFDS's positional labelling lines up with the official list.
  assert names == [
      f'ILSVRC2012_val_{n:08d}.JPEG' for n in range(1, len(names) + 1)
  ]


def test_tfds_labels_match_the_official_validation_labels(tiny_dirs):
  builder = tfds.builder('imagenet2012', data_dir=tiny_dirs[0])
  assert builder.info.splits['train'].num_examples == NUM_TRAIN
  assert builder.info.splits['validation'].num_examples == NUM_VAL
  synsets = tiny_imagenet.synsets()
  official = tiny_imagenet.validation_labels()
  seen = set()
  for x in builder.as_dataset(split='validation'):
    name = x['file_name'].numpy().decode()
    number = int(name[len('ILSVRC2012_val_') : -len('.JPEG')])
    assert int(x['label']) == synsets.index(official[number - 1]) < 5
    seen.add(int(x['label']))
  assert seen == set(range(5))


def test_reuses_a_prepared_copy_and_refuses_other_arguments(tiny_dirs):
  root = os.path.dirname(tiny_dirs[0])
  assert tiny_imagenet.make_tiny_imagenet(root, seed=1, **TINY) == tiny_dirs
  with pytest.raises(ValueError, match='another directory'):
    tiny_imagenet.make_tiny_imagenet(root, seed=2, **TINY)


def test_realistic_jpeg_sizes(tmp_path):
  tiny_imagenet.write_archives(
      str(tmp_path),
      num_classes=1,
      train_per_class=3,
      val_per_class=1,
      image_size=433,
      seed=0,
      noise=20.0,
  )
  with tarfile.open(tmp_path / 'ILSVRC2012_img_train.tar') as t:
    inner = tarfile.open(
        fileobj=io.BytesIO(t.extractfile(t.getnames()[0]).read())
    )
    jpegs = [inner.extractfile(m).read() for m in inner.getmembers()]
  for data in jpegs:
    h, w, _ = tf.image.extract_jpeg_shape(data).numpy()
    assert 370 <= h * w / 433 <= 500 and 0.7 < w / h < 1.4
    assert 60e3 < len(data) < 160e3  # ImageNet's mean is ~110 kB
