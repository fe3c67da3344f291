"""Serialized StableHLO through `jax.export`: one file, any JAX runtime.

The file is `jax.export.Exported.serialize()` bytes: the StableHLO module
with the weights as constants, its input/output shapes (a symbolic batch
`b` when the spec's batch is None) and its platforms. It is lowered for
('cpu', 'cuda', 'tpu') at once: with the plain layers the three programs
are the same ops, so the file costs no more, and one export serves every
backend (`jax.export` refuses a call on a platform it was not lowered for).
Reload with `jax.export.deserialize(blob).call(images)` (what `load` does);
no TensorFlow is needed on either side.
"""

from typing import Callable, Sequence

import jax
import numpy as np

from se_flax.export import spec as spec_lib

PLATFORMS = ('cpu', 'cuda', 'tpu')


def _abstract_input(spec: spec_lib.InputSpec) -> jax.ShapeDtypeStruct:
  """`(batch, H, W, 3)` of spec.dtype, the batch symbolic ('b') if None."""
  if spec.batch is None:
    shape = jax.export.symbolic_shape(','.join(map(str, spec.shape('b'))))
  else:
    shape = spec.shape()
  return jax.ShapeDtypeStruct(shape, np.dtype(spec.dtype))


def export(
    fn: Callable,
    spec: spec_lib.InputSpec,
    platforms: Sequence[str] = PLATFORMS,
) -> jax.export.Exported:
  """`fn(images)` lowered to StableHLO for `platforms`."""
  return jax.export.export(jax.jit(fn), platforms=tuple(platforms))(
      _abstract_input(spec)
  )


def save(fn: Callable, spec: spec_lib.InputSpec, path: str) -> None:
  """Writes `fn`'s serialized StableHLO (bytes) to the file `path`."""
  blob = export(fn, spec).serialize()
  with open(path, 'wb') as f:
    f.write(blob)


def load(path: str) -> Callable[[np.ndarray], np.ndarray]:
  """The function in a file `save` wrote: NHWC numpy in, numpy out."""
  with open(path, 'rb') as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  call = jax.jit(exported.call)
  return lambda images: np.asarray(call(images))
