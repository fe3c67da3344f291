"""Pure TF preprocessing functions: crop windows, decode, resize, augment.

Each function maps tensors to tensors with no state, so it runs the same
eagerly and inside `tf.data`. Randomness is stateless: a [2] int seed in, the
same crop out, which is what makes the training stream resumable. Images are
HWC (one example), pixels in 0..255.
"""

import functools
import math
from typing import Callable, Optional, Sequence

import tensorflow as tf

from se_flax.data import rand_augment as rand_augment_lib

WindowFn = Callable[[tf.Tensor], tf.Tensor]


def random_crop_window(
    shape: tf.Tensor,
    seed: tf.Tensor,
    *,
    min_area: float,
    aspect_ratio: Sequence[float],
    max_attempts: int,
) -> tf.Tensor:
  """Samples an Inception-style crop: area and aspect ratio in given ranges.

  Args:
    shape: int32 [3], the image's (height, width, channels).
    seed: int [2] stateless seed.
    min_area: smallest crop area as a fraction of the image area (0.08).
    aspect_ratio: (min, max) of crop width / height (3/4, 4/3).
    max_attempts: tries before falling back to the whole image.

  Returns:
    int32 [4]: (offset_y, offset_x, height, width) in pixels.
  """
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape,
      bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
      seed=seed,
      # 0, not Flax's 0.1: the area range alone must set the bounds (8%).
      min_object_covered=0.0,
      aspect_ratio_range=tuple(aspect_ratio),
      area_range=(min_area, 1.0),
      max_attempts=max_attempts,
      use_image_if_no_bounding_boxes=True,
  )
  return tf.stack([begin[0], begin[1], size[0], size[1]])


def center_crop_window(shape: tf.Tensor, crop_pct: float) -> tf.Tensor:
  """The square centre crop of side crop_pct * shorter side.

  Cropping first and resizing the crop to S equals resizing the shorter side
  to S / crop_pct and centre-cropping S, up to sub-pixel rounding, and only
  decodes the pixels that are kept.

  Args:
    shape: int32 [>=2], the image's (height, width, ...).
    crop_pct: fraction of the shorter side kept (0.875).

  Returns:
    int32 [4]: (offset_y, offset_x, height, width) in pixels.
  """
  height, width = shape[0], shape[1]
  shorter = tf.cast(tf.minimum(height, width), tf.float32)
  size = tf.maximum(tf.cast(tf.round(crop_pct * shorter), tf.int32), 1)
  return tf.stack(
      [(height - size + 1) // 2, (width - size + 1) // 2, size, size]
  )


def decode_and_crop(
    image_bytes: tf.Tensor,
    window_fn: WindowFn,
    *,
    jpeg: Optional[bool] = True,
) -> tf.Tensor:
  """Decodes the crop `window_fn(shape)` of an encoded image.

  Args:
    image_bytes: scalar tf.string, an encoded image.
    window_fn: int32 [3] shape -> int32 [4] (offset_y, offset_x, h, w).
    jpeg: the data are JPEGs: take the fused path, where
      `decode_and_crop_jpeg` decodes only the rows and blocks it needs.
      Otherwise (PNG/GIF/BMP, as TFDS's `encoding_format` says) decode the
      whole image, then slice. Per dataset, not per image: a runtime format
      test costs ~7% of the decode on ImageNet. None: judge each image by
      its content (`tf.io.is_jpeg`), for files whose names may not tell.

  Returns:
    uint8 [h, w, 3] RGB crop (grayscale is replicated, alpha dropped).
    Raises (inside tf.data: fails the element) on data that does not
    decode, e.g. a truncated JPEG.
  """
  if jpeg is None:
    return tf.cond(
        tf.io.is_jpeg(image_bytes),
        lambda: decode_and_crop(image_bytes, window_fn, jpeg=True),
        lambda: decode_and_crop(image_bytes, window_fn, jpeg=False),
    )
  if jpeg:
    window = window_fn(tf.image.extract_jpeg_shape(image_bytes))
    return tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)
  image = tf.io.decode_image(
      image_bytes, channels=3, dtype=tf.uint8, expand_animations=False
  )
  y, x, h, w = tf.unstack(window_fn(tf.shape(image)))
  return image[y : y + h, x : x + w]


def resize(
    image: tf.Tensor, size: int, *, method: str, antialias: bool
) -> tf.Tensor:
  """Resizes to [size, size, 3] float32 (values stay in 0..255)."""
  image = tf.image.resize(
      image, [size, size], method=method, antialias=antialias
  )
  return tf.cast(image, tf.float32)


def rotate(image: tf.Tensor, radians: tf.Tensor) -> tf.Tensor:
  """Rotates a float [h, w, c] image about its centre; borders reflect."""
  shape = tf.shape(image)
  h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
  cy, cx = (h - 1) / 2, (w - 1) / 2
  cos, sin = tf.cos(radians), tf.sin(radians)
  # Output pixel (x, y) samples the input at R (p - c) + c.
  transform = tf.stack(
      [
          cos,
          -sin,
          cx - cos * cx + sin * cy,
          sin,
          cos,
          cy - sin * cx - cos * cy,
          0.0,
          0.0,
      ]
  )[None]
  return tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None],
      transforms=transform,
      output_shape=shape[:2],
      fill_value=0.0,
      interpolation='BILINEAR',
      fill_mode='REFLECT',
  )[0]


# Methods whose output is a convex combination of input pixels, so in range.
_CONVEX = ('bilinear', 'nearest', 'area')


def to_uint8(image: tf.Tensor, *, clip: bool = True) -> tf.Tensor:
  """Rounds float pixels to uint8 (half up); `clip` saturates to 0..255.

  Without `clip` the input must lie in [-0.5, 255.5) (true after a bilinear
  resize of uint8 pixels); skipping it saves ~3% of the training CPU.
  """
  image = image + 0.5  # the cast truncates
  if clip:
    image = tf.clip_by_value(image, 0.0, 255.0)
  return tf.cast(image, tf.uint8)


def train_preprocess(
    image_bytes: tf.Tensor,
    seed: tf.Tensor,
    *,
    image_size: int,
    min_area: float,
    aspect_ratio: Sequence[float],
    max_attempts: int,
    interpolation: str,
    antialias: bool,
    random_rotation: float,
    pixel_jitter: float,
    jpeg: Optional[bool] = True,
    rand_augment: str = '',
) -> tf.Tensor:
  """Random-resized crop, flip and the optional augmentations.

  Args:
    image_bytes: scalar tf.string, an encoded image.
    seed: int [2] stateless seed; the output is a function of it.
    image_size: output side, pixels.
    min_area, aspect_ratio, max_attempts: see `random_crop_window`.
    interpolation, antialias: see `tf.image.resize`.
    random_rotation: max |angle| in degrees; 0 disables it.
    pixel_jitter: max per-channel shift in pixel units; 0 disables it.
    jpeg: see `decode_and_crop`.
    rand_augment: timm's RandAugment config string ('' = off), applied
      last, to the flipped uint8 crop, as timm's transforms_imagenet_train
      (crop, flip, then auto_augment on the PIL image).

  Returns:
    uint8 [image_size, image_size, 3].
  """
  crop_seed, flip_seed, rot_seed, jitter_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 4)
  )
  window_fn = functools.partial(
      random_crop_window,
      seed=crop_seed,
      min_area=min_area,
      aspect_ratio=aspect_ratio,
      max_attempts=max_attempts,
  )
  image = decode_and_crop(image_bytes, window_fn, jpeg=jpeg)
  image = resize(image, image_size, method=interpolation, antialias=antialias)
  if random_rotation:
    limit = math.radians(random_rotation)
    angle = tf.random.stateless_uniform([], rot_seed, -limit, limit)
    image = rotate(image, angle)
  if pixel_jitter:
    # One shift per channel: a colour cast, as the Caffe data layer's jitter.
    shift = tf.random.stateless_uniform(
        [3], jitter_seed, -pixel_jitter, pixel_jitter
    )
    image = image + shift
  clip = bool(pixel_jitter) or interpolation not in _CONVEX
  # Flipped on uint8: a quarter of the bytes of the float image.
  image = tf.image.stateless_random_flip_left_right(
      to_uint8(image, clip=clip), flip_seed
  )
  if rand_augment:
    # Folded in, not a fifth split: the four seeds above keep their values.
    ra_seed = tf.random.experimental.stateless_fold_in(seed, 4)
    policy = rand_augment_lib.parse(rand_augment)
    image = rand_augment_lib.augment(image, ra_seed, policy)
  return image


def eval_preprocess(
    image_bytes: tf.Tensor,
    *,
    image_size: int,
    crop_pct: float,
    interpolation: str,
    antialias: bool,
    jpeg: Optional[bool] = True,
) -> tf.Tensor:
  """Single centre crop (the paper's single-crop protocol).

  Args:
    image_bytes: scalar tf.string, an encoded image.
    image_size: output side, pixels.
    crop_pct: see `center_crop_window`.
    interpolation, antialias: see `tf.image.resize`.
    jpeg: see `decode_and_crop`.

  Returns:
    uint8 [image_size, image_size, 3].
  """
  window_fn = functools.partial(center_crop_window, crop_pct=crop_pct)
  image = decode_and_crop(image_bytes, window_fn, jpeg=jpeg)
  image = resize(image, image_size, method=interpolation, antialias=antialias)
  return to_uint8(image, clip=interpolation not in _CONVEX)
