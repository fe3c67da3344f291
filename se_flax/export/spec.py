"""What an exported network takes and gives, shared by every format.

An export is one pure function `fn(images) -> outputs` of an NHWC batch,
traced with the plain layers (`layers.layer_rules('off')`, the program
accelerators run), and an `InputSpec` saying the batch shape and dtype.
Each format module (`stablehlo`, `savedmodel`, `onnx`) offers
`save(fn, spec, path)` and `load(path) -> callable(np.ndarray) ->
np.ndarray`, the reload used by the round-trip checks.
"""

import dataclasses
from typing import Optional

import numpy as np

FORMATS = ('stablehlo', 'savedmodel', 'onnx')


class ExportError(ValueError):
  """A network, an op or an option a format cannot express (named)."""


@dataclasses.dataclass(frozen=True)
class InputSpec:
  """The input of an exported function: a `(batch, height, width, 3)` array.

  Attributes:
    batch: a fixed batch size, or None for a dynamic (polymorphic) one.
    height, width: pixels.
    dtype: 'float32' (preprocessed images) or 'uint8' (RGB pixels 0-255,
      with the weights' normalisation inside the exported graph).
  """

  batch: Optional[int]
  height: int
  width: int
  dtype: str = 'float32'

  def __post_init__(self):
    if self.batch is not None and self.batch < 1:
      raise ExportError(f'batch must be >= 1 or None, got {self.batch}')
    if self.dtype not in ('float32', 'uint8'):
      raise ExportError(
          f"input dtype must be 'float32' or 'uint8', got {self.dtype!r}"
      )

  def shape(self, batch_symbol: str = 'b') -> tuple:
    """The shape with `batch_symbol` for a dynamic batch."""
    batch = batch_symbol if self.batch is None else self.batch
    return (batch, self.height, self.width, 3)

  def example(self, batch: int = 2, seed: int = 0) -> np.ndarray:
    """Random inputs of this spec (`batch` when the spec's is dynamic)."""
    rng = np.random.default_rng(seed)
    shape = (self.batch or batch, self.height, self.width, 3)
    if self.dtype == 'uint8':
      return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.standard_normal(shape, dtype=np.float32)
