"""Every image reader agrees: predict's PIL decode (`preprocess.to_rgb`)
gives the pixels of the training pipeline's TensorFlow decode
(`ops.decode_and_crop`), file by file, over the formats both read."""

import io
import os
import struct
import warnings
import zlib

import numpy as np
import pytest

from se_flax.pretrained import preprocess

tf = pytest.importorskip('tensorflow')
PIL_Image = pytest.importorskip('PIL.Image')

_HEIGHT, _WIDTH = 24, 36


def png_bytes(pixels: np.ndarray, bit_depth: int = 16, size=None) -> bytes:
  """A PNG of HxWxC samples written by hand: PIL writes no 16-bit colour.

  `size` (width, height) overrides the size its header claims.
  """
  height, width, channels = pixels.shape
  colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
  sample = '>u2' if bit_depth == 16 else 'u1'
  rows = b''.join(
      b'\0' + pixels[y].astype(sample).tobytes() for y in range(height)
  )

  def chunk(kind, data):
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', crc)

  header = struct.pack(
      '>IIBBBBB', *(size or (width, height)), bit_depth, colour_type, 0, 0, 0
  )
  return (
      b'\x89PNG\r\n\x1a\n'
      + chunk(b'IHDR', header)
      + chunk(b'IDAT', zlib.compress(rows))
      + chunk(b'IEND', b'')
  )


def _noise(channels, seed, dtype=np.uint8):
  rng = np.random.default_rng(seed)
  high = np.iinfo(dtype).max + 1
  return rng.integers(0, high, (_HEIGHT, _WIDTH, channels), dtype=dtype)


def _photo(channels, seed):
  """Smooth pixels: JPEG keeps them close, so the files look like photos."""
  small = _noise(channels, seed)[:4, :4]
  image = PIL_Image.fromarray(small.squeeze(-1) if channels == 1 else small)
  return np.asarray(
      image.resize((_WIDTH, _HEIGHT), PIL_Image.Resampling.BICUBIC)
  )


def _encode(image, fmt, **options):
  out = io.BytesIO()
  image.save(out, fmt, **options)
  return out.getvalue()


def _palette(seed=0):
  return PIL_Image.fromarray(_noise(3, seed)).quantize(16)


def _exif_rotated():
  exif = PIL_Image.Exif()
  exif[0x0112] = 6  # Orientation: rotate 90 degrees to display.
  image = PIL_Image.fromarray(_photo(3, 7))
  return _encode(image, 'JPEG', quality=90, exif=exif.tobytes())


def lossless_files():
  """name -> encoded bytes; TF and PIL must give identical pixels."""
  gray = _noise(1, 1)[..., 0]
  return {
      'rgb.png': _encode(PIL_Image.fromarray(_noise(3, 0)), 'PNG'),
      'rgba.png': _encode(PIL_Image.fromarray(_noise(4, 1)), 'PNG'),
      'gray.png': _encode(PIL_Image.fromarray(gray), 'PNG'),
      'gray_alpha.png': _encode(PIL_Image.fromarray(_noise(2, 2), 'LA'), 'PNG'),
      'gray_1bit.png': _encode(PIL_Image.fromarray(gray > 127), 'PNG'),
      'gray_4bit.png': _encode(PIL_Image.fromarray(gray), 'PNG', bits=4),
      'gray_transparent.png': _encode(
          PIL_Image.fromarray(gray), 'PNG', transparency=int(gray[0, 0])
      ),
      'gray_16bit.png': png_bytes(_noise(1, 3, np.uint16)),
      'gray_alpha_16bit.png': png_bytes(_noise(2, 4, np.uint16)),
      'rgb_16bit.png': png_bytes(_noise(3, 5, np.uint16)),
      'rgba_16bit.png': png_bytes(_noise(4, 6, np.uint16)),
      'palette.png': _encode(_palette(), 'PNG'),
      'palette_4bit.png': _encode(_palette(), 'PNG', bits=4),
      'palette_transparent_index.png': _encode(
          _palette(), 'PNG', transparency=3
      ),
      'palette_transparent_alphas.png': _encode(
          _palette(), 'PNG', transparency=bytes(range(0, 256, 16))
      ),
      'palette.gif': _encode(_palette(), 'GIF'),
      'palette_transparent.gif': _encode(_palette(), 'GIF', transparency=3),
      'rgb.bmp': _encode(PIL_Image.fromarray(_noise(3, 8)), 'BMP'),
      'rgba.bmp': _encode(PIL_Image.fromarray(_noise(4, 9)), 'BMP'),
      'gray.bmp': _encode(PIL_Image.fromarray(gray), 'BMP'),
      'rgb_lossless.webp': _encode(
          PIL_Image.fromarray(_noise(3, 10)), 'WEBP', lossless=True
      ),
  }


def jpeg_files():
  """name -> JPEG bytes (4:2:0 colour, 4:4:4, gray, progressive, CMYK,
  EXIF-rotated)."""
  rgb = PIL_Image.fromarray(_photo(3, 0))
  return {
      'rgb.jpg': _encode(rgb, 'JPEG', quality=90),
      'rgb_444.jpg': _encode(rgb, 'JPEG', quality=90, subsampling=0),
      'gray.jpg': _encode(PIL_Image.fromarray(_photo(1, 1)), 'JPEG'),
      'progressive.jpg': _encode(rgb, 'JPEG', progressive=True),
      'cmyk.jpg': _encode(
          PIL_Image.fromarray(_photo(4, 2), 'CMYK'), 'JPEG', quality=95
      ),
      'exif_rotated.jpg': _exif_rotated(),
  }


def training_decode(data: bytes) -> np.ndarray:
  """The training pipeline's decode of a whole image (format from bytes)."""
  from se_flax.data import ops  # pylint: disable=g-import-not-at-top

  def whole(shape):
    return tf.stack([0, 0, shape[0], shape[1]])

  return ops.decode_and_crop(tf.constant(data), whole, jpeg=None).numpy()


def predict_decode(path) -> np.ndarray:
  return np.asarray(preprocess.to_rgb(preprocess.open_image(str(path))))


def _write_all(directory, files):
  for name, data in files.items():
    (directory / name).write_bytes(data)
  return {name: directory / name for name in files}


def test_lossless_formats_decode_to_the_same_pixels_as_training(tmp_path):
  files = lossless_files()
  paths = _write_all(tmp_path, files)
  for name, data in files.items():
    expected = training_decode(data)
    assert expected.shape == (_HEIGHT, _WIDTH, 3), name
    with warnings.catch_warnings():  # Nor a PIL warning on stderr.
      warnings.simplefilter('error')
      got = predict_decode(paths[name])
    np.testing.assert_array_equal(got, expected, err_msg=name)
  # The fault of issue 32: PIL's convert('RGB') clips 16-bit gray to white.
  with PIL_Image.open(paths['gray_16bit.png']) as image:
    clipped = np.asarray(image.convert('RGB'))
  assert (clipped == 255).mean() > 0.9
  assert (training_decode(files['gray_16bit.png']) == 255).mean() < 0.05


def test_jpegs_match_training_up_to_its_fast_idct(tmp_path):
  """Exact against TF's accurate integer IDCT (Pillow's libjpeg method);
  the training pipeline uses TF's default, the fast integer IDCT, which
  rounds each 8x8 block a little differently: about 1 level on average,
  up to ~4 (up to ~15 on CMYK, whose channels are multiplied)."""
  files = jpeg_files()
  paths = _write_all(tmp_path, files)
  for name, data in files.items():
    got = predict_decode(paths[name])
    accurate = tf.io.decode_jpeg(
        data, channels=3, dct_method='INTEGER_ACCURATE'
    ).numpy()
    np.testing.assert_array_equal(got, accurate, err_msg=name)
    training = training_decode(data)
    # TF, like this reader, ignores EXIF orientation: stored pixel order.
    assert training.shape == got.shape == (_HEIGHT, _WIDTH, 3), name
    difference = np.abs(training.astype(int) - got)
    assert difference.mean() < 2.5 and difference.max() <= 24, name
  with PIL_Image.open(paths['cmyk.jpg']) as image:
    assert image.mode == 'CMYK'
    # Pillow's own CMYK conversion rounds, TF's truncates.
    rounded = np.asarray(image.convert('RGB'))
  assert not np.array_equal(rounded, predict_decode(paths['cmyk.jpg']))


def test_an_image_over_the_pixel_limit_is_refused_from_its_header(tmp_path):
  # A 20000 x 20000 PNG header with no pixel data: refused before decoding.
  path = tmp_path / 'huge.png'
  pixel = np.zeros((1, 1, 3), np.uint8)
  path.write_bytes(png_bytes(pixel, bit_depth=8, size=(20000, 20000)))
  with pytest.raises(ValueError) as e:
    preprocess.open_image(str(path))
  message = str(e.value)
  assert message.startswith(f'{path}: too large to decode')
  assert '400000000 pixels' in message and '178956970' in message
  assert '\n' not in message


def test_pixel_count_reads_jpeg_and_png_headers():
  from se_flax.data import large_images  # pylint: disable=g-import-not-at-top

  files = {**lossless_files(), **jpeg_files()}
  for name, data in files.items():
    expected = 0 if name.endswith(('.gif', '.bmp', '.webp')) else 24 * 36
    assert large_images.pixel_count(tf.constant(data)) == expected, name
  huge = png_bytes(np.zeros((1, 1, 3), np.uint8), 8, size=(70000, 80000))
  assert large_images.pixel_count(tf.constant(huge)) == 70000 * 80000
  for short in (b'', b'\x89PNG', huge[:23]):
    assert large_images.pixel_count(tf.constant(short)) == 0


def _large_image_folder(root):
  """2 classes; in train/, 3 images over 1000 pixels (one a JPEG)."""
  sizes = {
      'train/a': [(20, 20), (40, 30), (20, 20)],
      'train/b': [(50, 30), (20, 20), (36, 30)],
      'val/a': [(20, 20)],
      'val/b': [(45, 40)],
  }
  large = set()
  for folder_name, folder_sizes in sizes.items():
    os.makedirs(root / folder_name)
    for i, (width, height) in enumerate(folder_sizes):
      fmt = 'JPEG' if i == 2 else 'PNG'
      path = root / folder_name / f'{i}.{fmt.lower()}'
      pixels = np.full((height, width, 3), 100, np.uint8)
      path.write_bytes(_encode(PIL_Image.fromarray(pixels), fmt))
      if width * height > 1000:
        large.add(str(path))
  return large


def test_large_training_images_are_used_and_warned_about_once(
    tmp_path, monkeypatch, caplog
):
  from se_flax.data import config as config_lib  # pylint: disable=g-import-not-at-top
  from se_flax.data import folder  # pylint: disable=g-import-not-at-top
  from se_flax.data import large_images  # pylint: disable=g-import-not-at-top

  monkeypatch.setattr(large_images, 'LARGE_IMAGE_PIXELS', 1000)
  large = _large_image_folder(tmp_path)
  cfg = config_lib.default_data_config()
  cfg.update(folder_root=str(tmp_path), image_size=16, prefetch=1)
  train = folder.create_train_iterator(cfg, global_batch_size=3, seed=0)
  for _ in range(6):  # three epochs of 6 images
    batch = next(train)
    assert (batch['image'] == 100).all()  # all used, none replaced
  assert train.num_skipped == 0
  warnings = [
      r.getMessage() for r in caplog.records if 'over' in r.getMessage()
  ]
  assert len(warnings) == 2, warnings  # the first by name; then 2 so far
  first, count = warnings
  assert first.startswith('Training input: ') and '1,000' in first
  assert first.split()[2] in large and 'pixels, over 1,000' in first
  assert count.startswith('Training input: 2 images over 1,000 pixels')
  caplog.clear()
  evals = folder.create_eval_iterator(cfg, global_batch_size=2)
  for _ in range(2):  # two passes: still one warning
    masks = np.concatenate([b['mask'] for b in evals])
    assert masks.all()
  warnings = [
      r.getMessage() for r in caplog.records if 'over' in r.getMessage()
  ]
  assert len(warnings) == 1 and str(tmp_path / 'val/b/0.png') in warnings[0]
