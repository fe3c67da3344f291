"""Preprocessing ops, run eagerly and inside tf.data (as big_vision does)."""

import functools

import numpy as np
import pytest
import tensorflow as tf

from se_flax.data import ops
from se_flax.data import tiny_imagenet

TRAIN_KW = dict(
    image_size=24,
    min_area=0.08,
    aspect_ratio=(3 / 4, 4 / 3),
    max_attempts=10,
    interpolation='bilinear',
    antialias=False,
    random_rotation=0.0,
    pixel_jitter=0.0,
)


@pytest.fixture(scope='module')
def jpeg():
  rng = np.random.default_rng(0)
  image = tiny_imagenet.class_image(rng, 2, 5, 60, 80, noise=8)
  return tf.io.encode_jpeg(image, quality=95), image


def test_random_crop_window_respects_area_and_aspect():
  shape = tf.constant([300, 400, 3])
  areas, ratios = [], []
  for i in range(200):
    y, x, h, w = ops.random_crop_window(
        shape,
        tf.constant([i, 7]),
        min_area=0.08,
        aspect_ratio=(3 / 4, 4 / 3),
        max_attempts=10,
    ).numpy()
    assert 0 <= y and y + h <= 300 and 0 <= x and x + w <= 400
    areas.append(h * w / (300 * 400))
    ratios.append(w / h)
  # Rounding to whole pixels moves the bounds by a little.
  assert min(areas) >= 0.08 - 0.01 and max(areas) <= 1.0
  assert min(ratios) >= 0.75 - 0.03 and max(ratios) <= 4 / 3 + 0.03
  assert min(areas) < 0.2 and max(areas) > 0.7  # the range is used


def test_center_crop_window():
  window = ops.center_crop_window(tf.constant([256, 320, 3]), 0.875)
  np.testing.assert_array_equal(window, [16, 48, 224, 224])


def test_eval_preprocess_equals_resize_then_center_crop():
  yy, xx = np.mgrid[0:60, 0:80]
  smooth = np.stack([yy * 3, xx * 2, 120 + 0 * xx], -1).astype(np.uint8)
  data = tf.io.encode_jpeg(smooth, quality=95)
  out = ops.eval_preprocess(
      data,
      image_size=28,
      crop_pct=0.875,
      interpolation='bilinear',
      antialias=False,
  )
  assert out.dtype == tf.uint8 and out.shape == (28, 28, 3)
  # Reference: shorter side 60 -> 32 = 28 / 0.875, then the central 28x28.
  full = tf.image.decode_jpeg(data, channels=3)
  resized = tf.image.resize(full, [32, round(80 * 32 / 60)])
  ref = tf.image.resize_with_crop_or_pad(resized, 28, 28)
  diff = np.abs(out.numpy().astype(float) - ref.numpy())
  assert diff.mean() < 1.5, diff.mean()  # sub-pixel offsets only


def test_train_preprocess_is_a_function_of_the_seed(jpeg):
  data, _ = jpeg
  a = ops.train_preprocess(data, tf.constant([1, 2]), **TRAIN_KW)
  b = ops.train_preprocess(data, tf.constant([1, 2]), **TRAIN_KW)
  c = ops.train_preprocess(data, tf.constant([1, 3]), **TRAIN_KW)
  assert a.dtype == tf.uint8 and a.shape == (24, 24, 3)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_train_preprocess_same_in_tf_data_as_eagerly(jpeg):
  data, _ = jpeg
  fn = functools.partial(ops.train_preprocess, **TRAIN_KW)
  seeds = tf.constant([[i, 5] for i in range(4)], tf.int64)
  ds = tf.data.Dataset.from_tensor_slices(seeds).map(
      lambda s: fn(data, s), num_parallel_calls=2
  )
  for seed, out in zip(seeds, ds):
    np.testing.assert_array_equal(out, fn(data, seed))


def test_optional_augmentations(jpeg):
  data, _ = jpeg
  kw = dict(TRAIN_KW, random_rotation=10.0, pixel_jitter=20.0)
  out = ops.train_preprocess(data, tf.constant([4, 4]), **kw)
  assert out.shape == (24, 24, 3) and out.dtype == tf.uint8
  plain = ops.train_preprocess(data, tf.constant([4, 4]), **TRAIN_KW)
  assert not np.array_equal(out, plain)


def test_rotate_by_zero_is_identity_and_by_pi_flips_both_axes():
  image = tf.random.uniform([9, 7, 3], 0, 255)
  np.testing.assert_allclose(
      ops.rotate(image, tf.constant(0.0)), image, atol=1e-3
  )
  np.testing.assert_allclose(
      ops.rotate(image, tf.constant(np.pi)), image[::-1, ::-1], atol=1e-2
  )


def test_png_path(jpeg):
  _, pixels = jpeg
  png = tf.io.encode_png(pixels)
  out = ops.eval_preprocess(
      png,
      image_size=16,
      crop_pct=1.0,
      interpolation='bilinear',
      antialias=False,
      jpeg=False,
  )
  assert out.shape == (16, 16, 3)
  with pytest.raises(tf.errors.InvalidArgumentError):
    ops.eval_preprocess(
        png,
        image_size=16,
        crop_pct=1.0,
        interpolation='bilinear',
        antialias=False,
    )


def test_to_uint8_rounds_half_up_and_saturates():
  x = tf.constant([-3.0, 0.4, 0.5, 254.6, 300.0])
  np.testing.assert_array_equal(ops.to_uint8(x), [0, 0, 1, 255, 255])


def test_truncated_jpeg_fails_to_decode(jpeg):
  data, _ = jpeg
  bad = tiny_imagenet.corrupt_bytes(data.numpy())
  with pytest.raises(tf.errors.InvalidArgumentError):
    ops.train_preprocess(tf.constant(bad), tf.constant([0, 0]), **TRAIN_KW)
