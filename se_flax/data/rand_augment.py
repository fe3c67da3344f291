"""timm's RandAugment policy (`rand_augment_transform`) in TF.

A config string such as 'rand-m7-mstd0.5-inc1' (ResNet strikes back)
parses to a `Policy` (`rand_augment_config`, no TensorFlow). Per image,
`augment` draws from a stateless int [2] seed, as timm's `RandAugment`
and `AugmentOp` draw from Python's `random`:

  num_layers ops, chosen uniformly with replacement from the op list;
  each applied with probability `prob` (else skipped);
  its magnitude ~ N(magnitude, magnitude_std) (uniform on [0, magnitude]
    when the std is infinite), clipped to [0, magnitude_max];
  a fair coin for the sign of signed arguments (timm's `_randomly_negate`).

Magnitudes map to op arguments as timm's LEVEL_TO_ARG (level / 10 scaled to
the op's range), in float64 as Python does, so integer arguments truncate
at the same points. The ops themselves are in `rand_augment_ops`. Geometric
ops sample bilinearly (timm with interpolation='bilinear'; its default
'random' picks bilinear or bicubic per op) and fill with the ImageNet mean
pixel, as timm's `transforms_imagenet_train` sets `img_mean`.
"""

import functools
import math
from typing import Callable, Dict, Tuple

import tensorflow as tf

# pylint: disable-next=g-direct-tensorflow-import
from tensorflow.python.ops import cond_v2

from se_flax import constants
from se_flax.data import rand_augment_config
from se_flax.data import rand_augment_ops as ops

# The TF-free config half, re-exported.
Policy = rand_augment_config.Policy
parse = rand_augment_config.parse
INCREASING_OPS = rand_augment_config.INCREASING_OPS
ORIGINAL_OPS = rand_augment_config.ORIGINAL_OPS

_LEVEL_DENOM = 10.0  # timm's: magnitude 10 is each op's full range

# timm: img_mean = round(255 * mean) per channel: (124, 116, 104).
FILL = tuple(min(255, round(255 * m)) for m in constants.MEAN_RGB)


def sample(
    policy: Policy, seed: tf.Tensor, batch_shape: Tuple[int, ...] = ()
) -> Dict[str, tf.Tensor]:
  """The per-image draws, each batch_shape + [num_layers].

  batch_shape: () for one image; more draws many images' worth from one
    seed (statistics in tests).

  Returns:
    'op': int32 index into policy.op_names; 'apply': bool; 'magnitude':
    float64, clipped to [0, magnitude_max]; 'negate': bool.
  """
  shape = list(batch_shape) + [policy.num_layers]
  op_seed, apply_seed, mag_seed, sign_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 4)
  )
  uniform = lambda s: tf.random.stateless_uniform(shape, s, dtype=tf.float64)
  op = tf.random.stateless_uniform(
      shape, op_seed, 0, len(policy.op_names), dtype=tf.int32
  )
  magnitude = tf.fill(shape, tf.constant(policy.magnitude, tf.float64))
  if policy.magnitude_std == math.inf:
    magnitude = magnitude * uniform(mag_seed)
  elif policy.magnitude_std > 0:
    noise = tf.random.stateless_normal(shape, mag_seed, dtype=tf.float64)
    magnitude = magnitude + policy.magnitude_std * noise
  upper = policy.magnitude_max or _LEVEL_DENOM  # timm: mmax0 means 10
  return {
      'op': op,
      # timm skips when random() > prob.
      'apply': uniform(apply_seed) <= policy.prob,
      'magnitude': tf.clip_by_value(magnitude, 0.0, float(upper)),
      'negate': uniform(sign_seed) > 0.5,
  }


def _signed(value: tf.Tensor, negate: tf.Tensor) -> tf.Tensor:
  return tf.where(negate, -value, value)


def _int(value: tf.Tensor) -> tf.Tensor:
  """Python's int() of a non-negative float64."""
  return tf.cast(value, tf.int32)


def _enhance_increasing(level, negate):
  # timm: max(0.1, 1 +- level * 0.9); 1 leaves the image as it is.
  return tf.maximum(
      tf.constant(0.1, tf.float64), 1.0 + _signed(level * 0.9, negate)
  )


def _solarize_threshold(level):
  return tf.minimum(256, _int(level * 256))


# Op name -> (level = magnitude / 10 in float64, negate) -> op argument, as
# timm's LEVEL_TO_ARG; None for ops without one.
_LEVEL_TO_ARG: Dict[str, Callable] = {
    'AutoContrast': None,
    'Equalize': None,
    'Invert': None,
    'Rotate': lambda level, neg: _signed(level * 30.0, neg),
    'Posterize': lambda level, neg: _int(level * 4),
    'PosterizeIncreasing': lambda level, neg: 4 - _int(level * 4),
    'Solarize': lambda level, neg: _solarize_threshold(level),
    'SolarizeIncreasing': lambda level, neg: 256 - _solarize_threshold(level),
    'SolarizeAdd': lambda level, neg: tf.minimum(128, _int(level * 110)),
    'ShearX': lambda level, neg: _signed(level * 0.3, neg),
    'ShearY': lambda level, neg: _signed(level * 0.3, neg),
    'TranslateXRel': lambda level, neg: _signed(level * 0.45, neg),
    'TranslateYRel': lambda level, neg: _signed(level * 0.45, neg),
}
for _name in ('Color', 'Contrast', 'Brightness', 'Sharpness'):
  _LEVEL_TO_ARG[_name] = lambda level, neg: level * 1.8 + 0.1
  _LEVEL_TO_ARG[_name + 'Increasing'] = _enhance_increasing

_FILL_T = lambda: tf.constant(FILL, tf.uint8)

# Op name -> (uint8 [H, W, 3], argument) -> uint8 [H, W, 3].
_OPS: Dict[str, Callable] = {
    'AutoContrast': lambda image, _: ops.auto_contrast(image),
    'Equalize': lambda image, _: ops.equalize(image),
    'Invert': lambda image, _: ops.invert(image),
    'Rotate': lambda image, a: ops.rotate(image, a, _FILL_T()),
    'Posterize': ops.posterize,
    'Solarize': ops.solarize,
    'SolarizeAdd': ops.solarize_add,
    'Color': ops.color,
    'Contrast': ops.contrast,
    'Brightness': ops.brightness,
    'Sharpness': ops.sharpness,
    'ShearX': lambda image, a: ops.shear_x(image, a, _FILL_T()),
    'ShearY': lambda image, a: ops.shear_y(image, a, _FILL_T()),
    'TranslateXRel': lambda image, a: ops.translate_x_rel(image, a, _FILL_T()),
    'TranslateYRel': lambda image, a: ops.translate_y_rel(image, a, _FILL_T()),
}


def op_argument(name: str, magnitude, negate) -> tf.Tensor:
  """timm's argument of op `name` at a (clipped) magnitude; 0 if none."""
  level_fn = _LEVEL_TO_ARG[name]
  if level_fn is None:
    return tf.zeros([], tf.float64)
  level = tf.cast(magnitude, tf.float64) / _LEVEL_DENOM
  return level_fn(level, tf.convert_to_tensor(negate))


def apply_op(name: str, image: tf.Tensor, magnitude, negate) -> tf.Tensor:
  """Op `name` (timm's name) at a given magnitude and sign."""
  return _OPS[name.replace('Increasing', '')](
      image, op_argument(name, magnitude, negate)
  )


def _switch(index: tf.Tensor, branches) -> tf.Tensor:
  """tf.switch_case, in a graph as one function call: not lowered to
  Switch/Merge (its default in tf.data), where the untaken branches' ops
  still pass dead tensors (two skipped layers: measured ~1.0 ms of CPU per
  224 px image as calls, 1.2-1.7 ms lowered)."""
  if tf.executing_eagerly():
    return tf.switch_case(index, branches)
  return cond_v2.indexed_case(index, branches, lower_using_switch_merge=False)


# Plain Python control flow only: autograph's conversion of the 15 ops'
# code took seconds per pipeline build.
@tf.autograph.experimental.do_not_convert
def augment(image: tf.Tensor, seed: tf.Tensor, policy: Policy) -> tf.Tensor:
  """RandAugment of one uint8 [H, W, 3] image; a function of `seed`."""
  draws = sample(policy, seed)
  for layer in range(policy.num_layers):
    args = (image, draws['magnitude'][layer], draws['negate'][layer])
    branches = [
        functools.partial(apply_op, name, *args) for name in policy.op_names
    ]
    # A skipped layer passes the switch by: tf.cond is lowered to
    # Switch/Merge in tf.data, where a dead Case costs nothing, and a
    # taken Case's function call ~0.1 ms.
    image = tf.cond(
        draws['apply'][layer],
        functools.partial(_switch, draws['op'][layer], branches),
        functools.partial(tf.identity, image),
    )
  return image
