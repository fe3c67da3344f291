"""Helpers and sizes the data tests share (conftest.py builds the data)."""

import os

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


COLOUR_CLASSES = ('cat', 'dog', 'emu')


def write_colour_folder(root, train_per_class=16, val_per_class=5):
  """ROOT/{train,val}/<class>/*.png, 40x40: a flat colour per class (red,
  green, blue for COLOUR_CLASSES) plus noise; learnable in a few steps."""
  import tensorflow as tf  # Only the folder source and its tests need it.

  rng = np.random.default_rng(0)
  for split, count in (('train', train_per_class), ('val', val_per_class)):
    for k, name in enumerate(COLOUR_CLASSES):
      os.makedirs(os.path.join(root, split, name))
      for i in range(count):
        colour = np.zeros(3)
        colour[k] = 200
        image = colour + rng.normal(0, 20, (40, 40, 3))
        png = tf.io.encode_png(np.clip(image, 0, 255).astype(np.uint8))
        tf.io.write_file(os.path.join(root, split, name, f'{i}.png'), png)
  return root
