"""timm's RandAugment config strings, without TensorFlow.

`parse` turns a `rand_augment_transform` config string such as
'rand-m7-mstd0.5-inc1' (ResNet strikes back) into a `Policy`; config
validation calls it where TensorFlow may not be installed. The TF policy and
ops are in `rand_augment` and `rand_augment_ops`.
"""

import dataclasses
import math
import re
from typing import Tuple

# timm's _RAND_INCREASING_TRANSFORMS ('inc1') and _RAND_TRANSFORMS, in order.
INCREASING_OPS = (
    'AutoContrast',
    'Equalize',
    'Invert',
    'Rotate',
    'PosterizeIncreasing',
    'SolarizeIncreasing',
    'SolarizeAdd',
    'ColorIncreasing',
    'ContrastIncreasing',
    'BrightnessIncreasing',
    'SharpnessIncreasing',
    'ShearX',
    'ShearY',
    'TranslateXRel',
    'TranslateYRel',
)
ORIGINAL_OPS = tuple(name.replace('Increasing', '') for name in INCREASING_OPS)

_EXPECTED = (
    "timm's 'rand-m{M}[-n{N}][-mstd{S}][-mmax{X}][-p{P}][-inc{0|1}]', "
    "e.g. 'rand-m7-mstd0.5-inc1', or '' for none"
)


@dataclasses.dataclass(frozen=True)
class Policy:
  """A parsed RandAugment config (timm's defaults).

  Attributes:
    magnitude: mean magnitude, 0..magnitude_max ('m', default 10).
    num_layers: ops per image ('n').
    prob: probability of applying each chosen op ('p').
    magnitude_std: std of the magnitude noise; inf = uniform on
      [0, magnitude] ('mstd'; timm reads values > 100 as inf).
    magnitude_max: upper clip of the magnitude ('mmax').
    increasing: timm's 'inc1' op list (severity grows with magnitude).
  """

  magnitude: int = 10
  num_layers: int = 2
  prob: float = 0.5
  magnitude_std: float = 0.0
  magnitude_max: int = 10
  increasing: bool = False

  @property
  def op_names(self) -> Tuple[str, ...]:
    return INCREASING_OPS if self.increasing else ORIGINAL_OPS


def _bad(config_str: str, why: str = '') -> ValueError:
  why = f' ({why})' if why else ''
  return ValueError(
      f'config.data.rand_augment={config_str!r}{why}: expected {_EXPECTED}.'
  )


def parse(config_str: str) -> Policy:
  """timm's `rand_augment_transform` config string -> Policy.

  Only timm's default op lists ('inc0'/'inc1'); the weighted and '3a'
  lists ('t' key) are not implemented. Raises ValueError naming
  config.data.rand_augment on anything else.
  """
  sections = config_str.split('-')
  if sections[0] != 'rand':
    raise _bad(config_str)
  fields = {}
  casts = {
      'm': ('magnitude', int),
      'n': ('num_layers', int),
      'p': ('prob', float),
      'mstd': ('magnitude_std', float),
      'mmax': ('magnitude_max', int),
      'inc': ('increasing', lambda v: bool(int(v))),
  }
  for section in sections[1:]:
    # As timm: the key is what precedes the first digit.
    match = re.fullmatch(r'([a-z]+)(\d.*)', section)
    if not match or match.group(1) not in casts:
      raise _bad(config_str, f'section {section!r}')
    name, cast = casts[match.group(1)]
    try:
      fields[name] = cast(match.group(2))
    except ValueError:
      raise _bad(config_str, f'section {section!r}') from None
  if fields.get('magnitude_std', 0.0) > 100:
    fields['magnitude_std'] = math.inf
  policy = Policy(**fields)
  if policy.num_layers < 1 or not 0.0 <= policy.prob <= 1.0:
    raise _bad(config_str, 'needs n >= 1 and 0 <= p <= 1')
  return policy
