"""Small ImageNets for the data tests, made once per session.

Both go through the production path: ImageNet-format archives, TFDS's own
imagenet2012 builder, then `se_flax.data.pipeline`. Nothing is downloaded.
"""

import pytest

from tests.data.helpers import TINY


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
