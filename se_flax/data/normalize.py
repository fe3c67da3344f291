"""ImageNet normalisation, applied on the device inside the jitted step.

The input pipeline ships uint8 pixels (a quarter of float32's host->device
bytes); this maps them to the model's float inputs. TF-free.
"""

from typing import Any

import jax.numpy as jnp

from se_flax.data.config import MEAN_RGB, STDDEV_RGB


def normalize_images(images: Any, dtype: Any = jnp.float32) -> jnp.ndarray:
  """Maps RGB pixels in 0..255 to (x / 255 - mean) / std, per channel.

  Args:
    images: [..., 3] NHWC pixels, uint8 or float in 0..255 (RGB order).
    dtype: output dtype, e.g. jnp.bfloat16; the arithmetic runs in float32.

  Returns:
    Array of `images`' shape and `dtype`, roughly zero-mean unit-variance.
  """
  images = jnp.asarray(images)
  if images.shape[-1] != 3:
    raise ValueError(f'Expected RGB in the last axis, got {images.shape}.')
  # One fused multiply-add: x * (1 / (255 std)) - mean / std.
  scale = 1.0 / (255.0 * jnp.asarray(STDDEV_RGB, jnp.float32))
  shift = jnp.asarray(MEAN_RGB, jnp.float32) / jnp.asarray(
      STDDEV_RGB, jnp.float32
  )
  return (images.astype(jnp.float32) * scale - shift).astype(dtype)
