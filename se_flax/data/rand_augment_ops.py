"""timm's RandAugment image ops in TF, equal to its PIL ops.

Every op maps a uint8 [H, W, 3] RGB image (HWC, one example) and scalar
arguments to a uint8 [H, W, 3] image, with no state, so it runs eagerly and
inside `tf.data`. The arithmetic follows Pillow's C code (the functions timm's
`auto_augment.py` calls): its lookup tables' values (computed on the
pixels where that is exact: a per-pixel tf.gather costs ~8x an elementwise
op), blends in float32 and truncated, grey as ITU-R 601-2 luma in 16-bit
fixed point. Outputs equal Pillow 13's bit for bit, but for the geometric
ops, where float32 bilinear weights (Pillow: float64) move a rare pixel
(~0.3%) by one level. The geometric ops
take Pillow's affine convention: output pixel (x, y) samples the input at
(a x' + b y' + c, d x' + e y' + f) with x' = x + 0.5, y' = y + 0.5 (pixel
centres), and sample bilinearly; pixels that map outside the input take the
fill colour, as `Image.transform(..., fillcolor=...)`.
"""

import math

import tensorflow as tf

# Per-channel vectors meet images as rows: the image viewed as [H, W * 3]
# and the vector tiled to [1, W * 3]. TF broadcasts a [3] vector over
# [H, W, 3] ~30x slower than an elementwise op (~0.9 ms on a 224 px image,
# one core); over rows it is as fast as elementwise.


def _rows(image: tf.Tensor) -> tf.Tensor:
  """[H, W, C] -> [H, W * C], pixels' channels side by side."""
  return tf.reshape(image, [tf.shape(image)[0], -1])


def _channel_row(vector: tf.Tensor, image: tf.Tensor) -> tf.Tensor:
  """[3] -> [1, W * 3], matching `_rows(image)`."""
  return tf.tile(vector, tf.shape(image)[1:2])[None]


def _column_centres(image: tf.Tensor) -> tf.Tensor:
  """float64 [1, W * 3]: x + 0.5 of each entry of `_rows(image)`."""
  width = tf.shape(image)[1]
  return tf.cast(tf.range(width * 3) // 3, tf.float64)[None] + 0.5


def _histograms(image: tf.Tensor) -> tf.Tensor:
  """int32 [3, 256]: per-channel counts of each pixel value."""
  channel = _channel_row(tf.range(3, dtype=tf.int32) * 256, image)
  flat = tf.reshape(tf.cast(_rows(image), tf.int32) + channel, [-1])
  return tf.reshape(
      tf.math.bincount(flat, minlength=768, maxlength=768), [3, 256]
  )


def _apply_luts(image: tf.Tensor, luts: tf.Tensor) -> tf.Tensor:
  """Maps channel c's value v to luts[c, v]; luts int [3, 256] in 0..255."""
  channel = _channel_row(tf.range(3, dtype=tf.int32) * 256, image)
  index = tf.cast(_rows(image), tf.int32) + channel
  out = tf.gather(tf.cast(tf.reshape(luts, [-1]), tf.uint8), index)
  return tf.reshape(out, tf.shape(image))


def _halve(x: tf.Tensor, combine) -> tf.Tensor:
  """x [N, ...] -> [1, ...] by elementwise `combine` of its halves.

  For odd N the halves share the middle row, harmless for min and max.
  """
  while x.shape[0] > 1:
    n = x.shape[0]
    x = combine(x[: (n + 1) // 2], x[n // 2 :])
  return x


def _channel_extremum(image: tf.Tensor, combine) -> tf.Tensor:
  """[3]: per-channel min (combine=tf.minimum) or max of uint8 [H, W, 3].

  By halving with elementwise ops where the shape is static: TF's axis
  reductions cost ~0.5 ms per channel set on a 224 px image (one core),
  ~10x its elementwise ops.
  """
  if not image.shape.is_fully_defined():
    reduce = tf.reduce_min if combine is tf.minimum else tf.reduce_max
    return reduce(tf.reshape(image, [-1, 3]), axis=0)
  h, w, _ = image.shape
  columns = _halve(tf.reshape(image, [h, w * 3]), combine)
  return _halve(tf.reshape(columns, [w, 3]), combine)[0]


def auto_contrast(image: tf.Tensor) -> tf.Tensor:
  """`ImageOps.autocontrast`: each channel's [min, max] stretched to 0..255.

  A constant channel is left as it is.
  """
  lo = tf.cast(_channel_extremum(image, tf.minimum), tf.float64)
  hi = tf.cast(_channel_extremum(image, tf.maximum), tf.float64)
  # Pillow's table: int(v * scale + offset), clamped, in float64 as Python;
  # computed on the pixels, as a gather from a table costs ~8x more.
  stretch = hi > lo
  scale = tf.where(stretch, 255.0 / tf.maximum(hi - lo, 1.0), 1.0)
  offset = tf.where(stretch, -lo * scale, 0.0)
  out = tf.cast(_rows(image), tf.float64) * _channel_row(
      scale, image
  ) + _channel_row(offset, image)
  out = tf.cast(tf.clip_by_value(out, 0.0, 255.0), tf.uint8)
  return tf.reshape(out, tf.shape(image))


def equalize(image: tf.Tensor) -> tf.Tensor:
  """`ImageOps.equalize`: each channel's histogram flattened.

  Pillow's table: step = (count - count of the top value) // 255 and
  lut[i] = (step // 2 + pixels below i) // step; a channel with one value,
  or step 0, is left as it is.
  """
  hist = _histograms(image)
  total = tf.reduce_sum(hist, axis=1)
  top = tf.argmax(
      tf.cast(hist > 0, tf.int32) * tf.range(256, dtype=tf.int32), axis=1
  )
  last = tf.gather(hist, top, batch_dims=1)
  step = (total - last) // 255
  below = tf.cumsum(hist, axis=1, exclusive=True)
  safe = tf.maximum(step, 1)[:, None]
  luts = tf.minimum((step[:, None] // 2 + below) // safe, 255)
  identity = tf.range(256, dtype=tf.int32)[None, :]
  # step > 0 implies two or more values are present.
  return _apply_luts(image, tf.where(step[:, None] > 0, luts, identity))


def invert(image: tf.Tensor) -> tf.Tensor:
  """`ImageOps.invert`: 255 - v."""
  return 255 - image


def posterize(image: tf.Tensor, bits: tf.Tensor) -> tf.Tensor:
  """`ImageOps.posterize`: keeps the `bits` (int, 0..8) high bits.

  0 bits make the image black (Pillow 13 refuses 0; timm reaches it only
  at magnitude 10 of PosterizeIncreasing).
  """
  drop = 8 - tf.clip_by_value(tf.cast(bits, tf.int32), 0, 8)
  mask = tf.cast(256 - tf.bitwise.left_shift(1, drop), tf.uint8)
  return tf.bitwise.bitwise_and(image, mask)


# Lookup-table ops in float32 arithmetic: tf.gather and tf.where cost ~8x
# more per pixel than an elementwise op.


def solarize(image: tf.Tensor, threshold: tf.Tensor) -> tf.Tensor:
  """`ImageOps.solarize`: values >= threshold (int, 0..256) inverted."""
  x = tf.cast(image, tf.float32)
  above = tf.clip_by_value(x - tf.cast(threshold, tf.float32) + 1.0, 0.0, 1.0)
  return tf.cast(x + above * (255.0 - 2.0 * x), tf.uint8)


def solarize_add(
    image: tf.Tensor, addition: tf.Tensor, threshold: int = 128
) -> tf.Tensor:
  """timm's `solarize_add`: `addition` (int) added below `threshold`,
  saturating at 255."""
  x = tf.cast(image, tf.float32)
  below = tf.clip_by_value(threshold - x, 0.0, 1.0)
  added = tf.minimum(tf.cast(addition, tf.float32), 255.0 - x)
  return tf.cast(x + below * added, tf.uint8)


def grey(image: tf.Tensor) -> tf.Tensor:
  """float32 [H, W, 1]: Pillow's RGB -> L, (19595 R + 38470 G + 7471 B +
  2^15) // 2^16.

  Exact in float32: every partial sum is an integer below 2^24.
  """
  x = tf.cast(image, tf.float32)
  # Elementwise: ~2x faster than a [H W, 3] x [3, 1] matmul.
  luma = x[..., 0:1] * 19595.0 + x[..., 1:2] * 38470.0 + x[..., 2:3] * 7471.0
  return tf.floor((luma + 32768.0) / 65536.0)


def blend(
    degenerate: tf.Tensor, image: tf.Tensor, factor: tf.Tensor
) -> tf.Tensor:
  """`Image.blend(degenerate, image, factor)`: d + factor (i - d).

  Pillow computes in float32 and truncates to uint8 (saturating outside
  [0, 1]). degenerate: any real dtype, broadcastable to image.
  """
  d = tf.cast(degenerate, tf.float32)
  out = d + tf.cast(factor, tf.float32) * (tf.cast(image, tf.float32) - d)
  return tf.cast(tf.clip_by_value(out, 0.0, 255.0), tf.uint8)


def color(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """`ImageEnhance.Color`: blend with the grey image (0 = grey)."""
  return blend(grey(image), image, factor)


def contrast(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """`ImageEnhance.Contrast`: blend with the mean grey (0 = flat)."""
  luma = grey(image)
  # Sums of integers below 2^24: exact in float32; the mean as Python's.
  total = tf.cast(tf.reduce_sum(luma), tf.float64)
  count = tf.cast(tf.size(luma), tf.float64)
  return blend(tf.floor(total / count + 0.5), image, factor)


def brightness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """`ImageEnhance.Brightness`: blend with black (0 = black)."""
  return blend(tf.zeros([], tf.float32), image, factor)


def smooth(image: tf.Tensor) -> tf.Tensor:
  """float32: Pillow's `ImageFilter.SMOOTH`, [1 1 1; 1 5 1; 1 1 1] / 13.

  The outermost rows and columns are copied, as Pillow's 3x3 filter does.
  """
  x = tf.cast(image, tf.float32)
  rows = x[:-2] + x[1:-1] + x[2:]
  total = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:] + 4.0 * x[1:-1, 1:-1]
  # The sums are exact integers; Pillow rounds the quotient half up, and
  # total / 13 + 0.5 is never within float32 error of an integer.
  inner = tf.floor(total / 13.0 + 0.5)
  return x + tf.pad(inner - x[1:-1, 1:-1], [[1, 1], [1, 1], [0, 0]])


def sharpness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """`ImageEnhance.Sharpness`: blend with the smoothed image (0 = soft)."""
  return blend(smooth(image), image, factor)


def _fill_outside(
    warped: tf.Tensor, inside: tf.Tensor, fill: tf.Tensor
) -> tf.Tensor:
  """uint8: warped (float32 [H, W, 3]) where `inside` (float 0/1
  [H, W * 3], as `_rows`), else `fill` [3]; truncated, as Pillow's
  bilinear filter.

  In arithmetic, as tf.where costs ~8x more per pixel; the product by 1
  keeps the warped value exact.
  """
  fill = _channel_row(tf.cast(fill, tf.float32), warped)
  out = _rows(warped) * inside + fill * (1.0 - inside)
  return tf.reshape(tf.cast(out, tf.uint8), tf.shape(warped))


def _inside(coordinate: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
  """float32 0/1: Pillow samples a continuous coordinate in [0, size).

  coordinate: float64, as Pillow's: in float32 a point within ~1e-5 of the
  border could land on the other side (fill instead of an edge pixel).
  """
  size = tf.cast(size, tf.float64)
  return tf.cast((coordinate >= 0.0) & (coordinate < size), tf.float32)


def affine(image: tf.Tensor, matrix: tf.Tensor, fill: tf.Tensor) -> tf.Tensor:
  """Pillow's `Image.transform(size, AFFINE, matrix, BILINEAR, fill)`.

  Args:
    image: uint8 [H, W, 3].
    matrix: float [6], (a, b, c, d, e, f) in Pillow's convention (module
      docstring): output to input, pixel-centre coordinates.
    fill: uint8-valued [3], the colour where the source lies outside.

  Returns:
    uint8 [H, W, 3].
  """
  matrix64 = tf.cast(matrix, tf.float64)
  a, b, c, d, e, f = tf.unstack(tf.cast(matrix, tf.float32))
  # To TF's convention (pixel indices): x_in = a x + b y + c', with the
  # half-pixel shifts of both ends folded into c' and f'.
  c_idx = c + 0.5 * a + 0.5 * b - 0.5
  f_idx = f + 0.5 * d + 0.5 * e - 0.5
  transform = tf.stack([a, b, c_idx, d, e, f_idx, 0.0, 0.0])[None]
  shape = tf.shape(image)
  # NEAREST clamps the sample point into the image: Pillow's bilinear
  # filter clamps its neighbours the same way (edge pixels repeat).
  warped = tf.raw_ops.ImageProjectiveTransformV3(
      images=tf.cast(image, tf.float32)[None],
      transforms=transform,
      output_shape=shape[:2],
      fill_value=0.0,
      interpolation='BILINEAR',
      fill_mode='NEAREST',
  )[0]
  a, b, c, d, e, f = tf.unstack(matrix64)
  ys = tf.range(tf.cast(shape[0], tf.float64))[:, None] + 0.5
  xs = _column_centres(image)
  inside = _inside(a * xs + b * ys + c, shape[1]) * _inside(
      d * xs + e * ys + f, shape[0]
  )
  return _fill_outside(warped, inside, fill)


def _shift_rows(
    image: tf.Tensor, shifts: tf.Tensor, fill: tf.Tensor
) -> tf.Tensor:
  """Row y of the output samples row y of the input at x + shifts[y].

  Pillow's affine map x_in = (x + 0.5) + shifts[y] with bilinear sampling,
  edge clamping and `fill` outside, for float64 shifts [H] or [1]. One
  `crop_and_resize` box per row (~3x faster than the projective
  transform); a one-pixel edge pad gives Pillow's clamping.
  """
  shape = tf.shape(image)
  h, w = shape[0], shape[1]
  x = tf.cast(image, tf.float32)
  padded = tf.concat([x[:, :1], x, x[:, -1:]], axis=1)
  wf = tf.cast(w, tf.float32)
  shifts64 = tf.broadcast_to(shifts, [h])
  # Normalised to the padded width: the sample of output x is at padded
  # index x + shift + 1 (index = Pillow's coordinate - 0.5).
  shifts = tf.cast(shifts64, tf.float32)
  x1 = (shifts + 1.0) / (wf + 1.0)
  x2 = (shifts + wf) / (wf + 1.0)
  rows = tf.cast(tf.range(h), tf.float32) / tf.maximum(
      tf.cast(h, tf.float32) - 1.0, 1.0
  )
  warped = tf.image.crop_and_resize(
      padded[None],
      tf.stack([rows, x1, rows, x2], axis=1),
      tf.zeros([h], tf.int32),
      tf.stack([1, w]),
  )
  warped = tf.reshape(warped, [h, w, 3])
  inside = _inside(_column_centres(image) + shifts64[:, None], w)
  return _fill_outside(warped, inside, fill)


def _transpose(image: tf.Tensor) -> tf.Tensor:
  return tf.transpose(image, [1, 0, 2])


def rotate(image: tf.Tensor, degrees: tf.Tensor, fill: tf.Tensor) -> tf.Tensor:
  """`Image.rotate(degrees)` about the centre, counter-clockwise, same size."""
  shape = tf.cast(tf.shape(image), tf.float64)
  cx, cy = shape[1] / 2.0, shape[0] / 2.0
  angle = -tf.cast(degrees, tf.float64) * (math.pi / 180.0)
  cos, sin = tf.cos(angle), tf.sin(angle)
  # Pillow's matrix: rotation about (cx, cy), output to input.
  c = cos * -cx + sin * -cy + cx
  f = -sin * -cx + cos * -cy + cy
  return affine(image, tf.stack([cos, sin, c, -sin, cos, f]), fill)


def shear_x(image: tf.Tensor, factor: tf.Tensor, fill: tf.Tensor) -> tf.Tensor:
  """timm's `shear_x`: Pillow's affine (1, factor, 0, 0, 1, 0)."""
  ys = tf.cast(tf.range(tf.shape(image)[0]), tf.float64) + 0.5
  return _shift_rows(image, tf.cast(factor, tf.float64) * ys, fill)


def shear_y(image: tf.Tensor, factor: tf.Tensor, fill: tf.Tensor) -> tf.Tensor:
  """timm's `shear_y`: Pillow's affine (1, 0, 0, factor, 1, 0)."""
  return _transpose(shear_x(_transpose(image), factor, fill))


def _translate(
    image: tf.Tensor, shift: tf.Tensor, axis: int, fill: tf.Tensor
) -> tf.Tensor:
  """Samples the input at coordinate + shift (float64 scalar) along `axis`
  (0: y, 1: x): each output lerps the inputs k = floor(shift) and k + 1
  on, so a roll and two slices (~3x faster than `crop_and_resize`, no
  transposes for y); wrapped-around entries land where the fill goes.
  """
  size = tf.shape(image)[axis]
  k = tf.floor(shift)
  t = tf.cast(shift - k, tf.float32)
  first = [slice(None)] * 3
  last = [slice(None)] * 3
  first[axis], last[axis] = slice(0, 1), slice(-1, None)
  # Index j of `padded` is input index j - 1 (edge pixels repeat).
  padded = tf.concat([image[tuple(first)], image, image[tuple(last)]], axis)
  rolled = tf.roll(padded, -tf.cast(k, tf.int32) - 1, axis)
  lo = [slice(None)] * 3
  hi = [slice(None)] * 3
  lo[axis], hi[axis] = slice(0, size), slice(1, size + 1)
  x0 = tf.cast(rolled[tuple(lo)], tf.float32)
  x1 = tf.cast(rolled[tuple(hi)], tf.float32)
  # Pillow's lerp, in float32: in0 + (in1 - in0) dx.
  warped = x0 + (x1 - x0) * t
  if axis == 1:
    inside = _inside(_column_centres(image) + shift, size)
  else:
    ys = tf.range(tf.cast(size, tf.float64))[:, None] + 0.5
    inside = _inside(ys + shift, size)
  return _fill_outside(warped, inside, fill)


def translate_x_rel(
    image: tf.Tensor, fraction: tf.Tensor, fill: tf.Tensor
) -> tf.Tensor:
  """timm's `translate_x_rel`: x_in = x + fraction * width."""
  width = tf.cast(tf.shape(image)[1], tf.float64)
  return _translate(image, tf.cast(fraction, tf.float64) * width, 1, fill)


def translate_y_rel(
    image: tf.Tensor, fraction: tf.Tensor, fill: tf.Tensor
) -> tf.Tensor:
  """timm's `translate_y_rel`: y_in = y + fraction * height."""
  height = tf.cast(tf.shape(image)[0], tf.float64)
  return _translate(image, tf.cast(fraction, tf.float64) * height, 0, fill)
