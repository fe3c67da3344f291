"""timm's eval transform in PIL and numpy (no torch, no TensorFlow).

The same steps as `timm.data.create_transform(**resolve_data_config(...))`
at eval: convert to RGB (`to_rgb`: the pixels the training pipeline's
TensorFlow decode gives); resize the shorter side to floor(size / crop_pct)
with PIL's filter (the longer side keeps the aspect ratio, truncated);
centre crop `size` (offsets rounded as torchvision does, zero padding if
the image is smaller); scale to [0, 1]; normalise by mean/std. Outputs are
float32 NHWC.
"""

import math
from typing import Iterable, Union

import numpy as np

from se_flax.pretrained.config import PretrainedConfig

_FILTERS = ('nearest', 'bilinear', 'bicubic', 'lanczos', 'box', 'hamming')


def _pil():
  try:
    import PIL.Image
  except ImportError as e:
    raise ImportError(
        'Image preprocessing needs Pillow (pip install pillow)'
    ) from e
  return PIL.Image


def open_image(path):
  """A PIL image from a path (its bytes read now; the file is closed).

  Raises ValueError naming `path` for a file that is not a readable image,
  and for one over Pillow's decompression-bomb limit (2 x
  `PIL.Image.MAX_IMAGE_PIXELS` pixels, 179 million by default), which is
  refused from its header alone, before any pixel is decoded.
  """
  image_lib = _pil()
  try:
    with image_lib.open(path) as image:
      image.load()
      return image
  except image_lib.DecompressionBombError as e:
    raise ValueError(
        f'{path}: too large to decode ({e} The limit is 2 x '
        'PIL.Image.MAX_IMAGE_PIXELS; resize the image first.)'
    ) from None
  except (OSError, image_lib.UnidentifiedImageError) as e:
    raise ValueError(f'{path}: not a readable image ({e})') from None


def _from_array(pixels: np.ndarray):
  return _pil().fromarray(np.ascontiguousarray(pixels, np.uint8))


def to_rgb(image):
  """`image` as mode 'RGB', with the pixels training's decode gives.

  The training pipeline decodes with TensorFlow (`se_flax.data.ops`,
  `decode_image(channels=3)` / `decode_and_crop_jpeg(channels=3)`), and
  PIL's `convert('RGB')` disagrees with it on three kinds of files:
  16-bit grayscale PNGs (PIL clips the 16-bit values, so nearly all
  pixels turn white; libpng keeps the high byte), CMYK JPEGs (TensorFlow
  multiplies Adobe's inverted channels and truncates; PIL rounds) and
  transparent GIF pixels (TensorFlow makes them black). Elsewhere both
  agree: alpha is dropped (not blended), palettes and 1-, 2- and 4-bit
  grayscale are expanded, and 16-bit colour keeps the high byte.

  Like TensorFlow, this ignores a JPEG's EXIF orientation: pixels stay in
  stored order, as the network saw them in training.

  JPEG pixels match TensorFlow's `dct_method='INTEGER_ACCURATE'`; the
  training pipeline's default ('INTEGER_FAST') differs from both by about
  one level on average (a few at most).
  """
  mode = image.mode
  if mode == 'RGB':
    return image
  if mode == 'CMYK':
    cmyk = np.asarray(image).astype(np.uint16)
    # Pillow un-inverts Adobe's CMYK; TensorFlow's jpeg_mem.cc computes
    # (255 - c)(255 - k) / 255 on the stored bytes, truncating.
    return _from_array((255 - cmyk[..., :3]) * (255 - cmyk[..., 3:]) // 255)
  if mode.startswith('I'):  # 16-bit grayscale ('I;16'; 'I' before Pillow 10)
    values = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
    return _from_array(values >> 8).convert('RGB')
  if 'transparency' in image.info:
    rgb = np.asarray(image.convert('RGBA'))[..., :3]
    if image.format == 'GIF' and mode in ('P', 'L'):
      rgb = rgb.copy()
      rgb[np.asarray(image) == image.info['transparency']] = 0
    # Through RGBA: PIL warns on P -> RGB with per-entry transparency.
    return _from_array(rgb)
  return image.convert('RGB')


def _resize_shorter(image, side: int, interpolation: str):
  image_lib = _pil()
  if interpolation not in _FILTERS:
    raise ValueError(
        f'interpolation must be one of {_FILTERS}, got {interpolation!r}'
    )
  width, height = image.size
  if width <= height:
    size = (side, int(side * height / width))
  else:
    size = (int(side * width / height), side)
  resample = getattr(image_lib.Resampling, interpolation.upper())
  return image.resize(size, resample=resample)


def _centre_crop(pixels: np.ndarray, side: int) -> np.ndarray:
  height, width = pixels.shape[:2]
  if height < side or width < side:
    pad_h, pad_w = max(side - height, 0), max(side - width, 0)
    pixels = np.pad(
        pixels,
        (
            (pad_h // 2, (pad_h + 1) // 2),
            (pad_w // 2, (pad_w + 1) // 2),
            (0, 0),
        ),
    )
    height, width = pixels.shape[:2]
  top = int(round((height - side) / 2.0))
  left = int(round((width - side) / 2.0))
  return pixels[top : top + side, left : left + side]


def eval_image(
    image, config: PretrainedConfig, use_test_size: bool = True
) -> np.ndarray:
  """One PIL image (or path) -> (size, size, 3) float32, normalised."""
  if not hasattr(image, 'convert'):
    image = open_image(image)
  if config.crop_mode != 'center':
    raise NotImplementedError(
        f"crop_mode {config.crop_mode!r}: only timm's 'center' is supported"
    )
  side = config.eval_size(use_test_size)
  scale = math.floor(side / config.eval_crop_pct(use_test_size))
  image = _resize_shorter(to_rgb(image), scale, config.interpolation)
  pixels = _centre_crop(np.asarray(image), side)
  x = pixels.astype(np.float32) / np.float32(255)
  mean = np.asarray(config.mean, np.float32)
  std = np.asarray(config.std, np.float32)
  return (x - mean) / std


def eval_batch(
    images: Iterable[Union[str, object]],
    config: PretrainedConfig,
    use_test_size: bool = True,
) -> np.ndarray:
  """Images or paths -> (N, size, size, 3) float32 NHWC model inputs."""
  return np.stack([eval_image(i, config, use_test_size) for i in images])
