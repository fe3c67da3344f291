"""Small ImageNets for the data tests, made once per session.

Both go through the production path: ImageNet-format archives, TFDS's own
imagenet2012 builder, then `se_flax.data.pipeline`. Nothing is downloaded.
"""

import pytest

from se_flax.data import config as config_lib

# 5 classes x 12 train; 5 x 5 = 25 val: not a multiple of 2, 4, 8 or 16.
TINY = dict(
    num_classes=5,
    train_per_class=12,
    val_per_class=5,
    image_size=48,
    num_shards=2,
)
NUM_TRAIN = 60
NUM_VAL = 25


def data_config(data_dir, **overrides):
  """`default_data_config()` pointed at `data_dir`, small and quick."""
  c = config_lib.default_data_config()
  c.data_dir = data_dir
  c.image_size = 32
  c.shuffle_buffer = 64
  c.prefetch = 1
  c.update(overrides)
  return c


@pytest.fixture(scope='session')
def tiny_dirs(tmp_path_factory):
  from se_flax.data import tiny_imagenet  # pylint: disable=g-import-not-at-top

  root = tmp_path_factory.mktemp('tiny_imagenet')
  return tiny_imagenet.make_tiny_imagenet(str(root), seed=1, **TINY)


@pytest.fixture(scope='session')
def corrupt_dirs(tmp_path_factory):
  """2 classes x 6 train, 2 x 2 val; one undecodable image in each split."""
  from se_flax.data import tiny_imagenet  # pylint: disable=g-import-not-at-top

  root = tmp_path_factory.mktemp('corrupt_imagenet')
  return tiny_imagenet.make_tiny_imagenet(
      str(root),
      num_classes=2,
      train_per_class=6,
      val_per_class=2,
      image_size=40,
      num_corrupt=1,
      num_shards=1,
  )
