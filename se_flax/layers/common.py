"""Types, initialisers and small helpers every layer and model shares."""

from typing import Any, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax

Dtype = Any
ModuleDef = Any  # A Flax module class or a factory returning one.

# He (MSRA) initialisation, as in the paper, torchvision and timm.
he_normal = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def make_divisible(
    value: float, divisor: int = 8, min_value: Optional[int] = None
) -> int:
  """timm's channel rounding with `round_limit=0` (used by its SEModule)."""
  min_value = min_value or divisor
  return max(min_value, int(value + divisor / 2) // divisor * divisor)


Padding = Union[
    None, int, Tuple[int, int], Tuple[Tuple[int, int], Tuple[int, int]]
]


def _pair(value: Union[int, Sequence[int]]) -> Tuple[int, int]:
  if isinstance(value, int):
    return value, value
  value = tuple(int(v) for v in value)
  if len(value) != 2:
    raise ValueError(f'expected an int or a pair, got {value}')
  return value


def check_nhwc(x: jax.Array, where: str, channels: Sequence[int] = (3,)):
  """Raises a clear error unless `x` is an NHWC image batch."""
  if x.ndim != 4 or x.shape[-1] not in channels:
    raise ValueError(
        f'{where} expects NHWC images of shape (N, H, W, {channels[0]}), got '
        f'{tuple(x.shape)}; transpose NCHW input with x.transpose(0, 2, 3, 1)'
    )
