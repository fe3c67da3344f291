"""Images too large to decode cheaply, found from their headers as read.

`CheckedReader(kind).read(path)` is `tf.io.read_file(path)` that warns
(with absl logging) of images over `LARGE_IMAGE_PIXELS`: the first by
name and with the limit, then the count each time it doubles.
"""

import threading

from absl import logging
import tensorflow as tf

# Pillow's default MAX_IMAGE_PIXELS, where it warns of a decompression
# bomb: 89.5 million pixels, 268 MB as decoded RGB (predict refuses twice
# that, where Pillow does).
LARGE_IMAGE_PIXELS = 89_478_485
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def pixel_count(image_bytes: tf.Tensor) -> tf.Tensor:
  """int64 []: width x height from a JPEG's or PNG's header, else 0.

  Parses a few header bytes of an image already read (microseconds), so
  every image can be checked as it is read, without a scan of its own.
  """

  def jpeg():
    shape = tf.image.extract_jpeg_shape(image_bytes, output_type=tf.int64)
    return shape[0] * shape[1]

  def png_or_other():
    head = tf.strings.substr(image_bytes, 0, 24)
    is_png = (tf.strings.substr(head, 0, 8) == _PNG_SIGNATURE) & (
        tf.strings.length(head) == 24
    )
    # IHDR's width and height: big-endian 32-bit at bytes 16..23.
    padded = tf.strings.join([head, '\0' * 24])
    size = tf.io.decode_raw(
        tf.strings.substr(padded, 16, 8), tf.int32, little_endian=False
    )
    pixels = tf.cast(size[0], tf.int64) * tf.cast(size[1], tf.int64)
    return tf.where(is_png, pixels, tf.constant(0, tf.int64))

  return tf.cond(tf.io.is_jpeg(image_bytes), jpeg, png_or_other)


class CheckedReader:
  """Reads image files, warning of those over `LARGE_IMAGE_PIXELS`.

  They are used (they are valid data, and finding them all beforehand
  would mean a header read per file at every start, hours on an object
  store for ImageNet); but each costs its full decode every epoch. The
  first is named with the limit, then the count is logged each time it
  doubles. A file counts once, though it is read every epoch.
  """

  def __init__(self, kind: str):
    self._kind = kind
    self._limit = LARGE_IMAGE_PIXELS
    self._seen = set()
    self._lock = threading.Lock()

  def _report(self, path: tf.Tensor, pixels: tf.Tensor) -> bool:
    path, pixels = path.numpy().decode(), int(pixels.numpy())
    with self._lock:  # tf.data calls from several threads
      if path in self._seen:
        return True
      self._seen.add(path)
      count = len(self._seen)
    if count == 1:
      logging.warning(
          "%s input: %s has %s pixels, over %s (Pillow's decompression-"
          'bomb size): it is decoded every epoch (%.1f GB as RGB). '
          'Downscale such images beforehand; further ones are counted, '
          'not named.',
          self._kind.capitalize(),
          path,
          f'{pixels:,}',
          f'{self._limit:,}',
          3 * pixels / 1e9,
      )
    elif count & (count - 1) == 0:  # 2, 4, 8, ...
      logging.warning(
          '%s input: %d images over %s pixels so far (latest: %s).',
          self._kind.capitalize(),
          count,
          f'{self._limit:,}',
          path,
      )
    return True

  def read(self, path: tf.Tensor) -> tf.Tensor:
    """The bytes of `path`; reports it first if its header is too large."""
    data = tf.io.read_file(path)
    pixels = pixel_count(data)

    def reported():
      done = tf.py_function(self._report, [path, pixels], tf.bool)
      with tf.control_dependencies([done]):
        return tf.identity(data)

    return tf.cond(pixels > self._limit, reported, lambda: data)
