"""Helpers and sizes the data tests share (conftest.py builds the data)."""

import numpy as np

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


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])
