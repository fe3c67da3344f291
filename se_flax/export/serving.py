"""The function an export holds, its input spec, and the check of a reload.

`serving_fn` closes a linen model's variables over an eval-mode call:
`fn(images) -> (N, classes) float32`, NHWC input. Its body sets
`layers.layer_rules('off')`, so whoever traces it (jax.export, jax2tf,
jax2onnx, at save time or again later) gets the plain layers accelerators
run, not the custom-derivative CPU rules.
"""

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from se_flax import layers
from se_flax.export import spec as spec_lib
from se_flax.pretrained import config as config_lib

OUTPUTS = ('logits', 'probabilities')

# A reload equals se_flax's outputs to this fraction of their largest |value|.
RELATIVE_TOLERANCE = 1e-4


def _check_outputs(outputs: str) -> None:
  if outputs not in OUTPUTS:
    raise spec_lib.ExportError(
        f'outputs must be one of {OUTPUTS}, got {outputs!r}'
    )


def normalise(pixels, config: config_lib.PretrainedConfig):
  """uint8 RGB NHWC 0-255 -> float32 model inputs: x / 255, then
  (x - mean) / std, as the last step of `pretrained.preprocess.eval_image`.

  Works on numpy and jax arrays alike (`jnp` inside a trace).
  """
  xp = np if isinstance(pixels, np.ndarray) else jnp
  x = pixels.astype(xp.float32) / np.float32(255)
  mean = np.asarray(config.mean, np.float32)
  std = np.asarray(config.std, np.float32)
  return (x - mean) / std


# eq=False: hashed by identity, as jax.jit and jax2onnx hash a function.
@dataclasses.dataclass(frozen=True, eq=False)
class ServingFunction:
  """`fn(images) -> (N, classes) float32`, the function an export holds.

  Calling it closes `variables` over as constants (StableHLO, ONNX);
  `apply(variables, images)` takes them as an argument, for formats that
  keep weights as variables (a SavedModel's tf.Variables: a VGG-16's 0.5 GB
  as graph constants does not reload in 23 GB).
  """

  apply: Callable
  variables: dict

  def __call__(self, images):
    return self.apply(self.variables, images)


def serving_fn(
    model,
    variables,
    config: Optional[config_lib.PretrainedConfig] = None,
    *,
    preprocess: bool = False,
    outputs: str = 'logits',
) -> ServingFunction:
  """The eval-mode function to export (see `ServingFunction`).

  Args:
    model: a linen classifier taking `(N, H, W, 3)` and `train=`.
    variables: its `{'params', 'batch_stats'}`; copied to numpy.
    config: the weights' preprocessing (mean/std); needed for `preprocess`.
    preprocess: the input is uint8 RGB 0-255 and the weights' mean/std
      normalisation runs inside the function.
    outputs: 'logits' or 'probabilities' (softmax over the classes).
  """
  _check_outputs(outputs)
  if 'fc' not in variables.get('params', {}):
    raise spec_lib.ExportError(
        "variables['params'] has no 'fc': these weights have no classifier "
        '(loaded with a new num_classes); expected a full network'
    )
  if preprocess and config is None:
    raise spec_lib.ExportError(
        "preprocess=True needs the weights' config (mean/std), got None"
    )

  def apply(weights, images):
    x = normalise(images, config) if preprocess else images
    # Inside the body: every trace (also a later re-trace by TF) is plain.
    with layers.layer_rules('off'):
      logits = model.apply(weights, x, train=False).astype(jnp.float32)
    if outputs == 'probabilities':
      return jax.nn.softmax(logits, axis=-1)
    return logits

  return ServingFunction(apply, jax.tree.map(np.asarray, variables))


def input_spec(
    config: config_lib.PretrainedConfig,
    *,
    batch: Optional[int] = None,
    image_size: Optional[int] = None,
    preprocess: bool = False,
) -> spec_lib.InputSpec:
  """The spec of an export: square `image_size` pixels (default: the
  weights' eval size, `config.eval_size()`), uint8 when `preprocess`."""
  if image_size is not None and image_size < 1:
    raise spec_lib.ExportError(
        f'image_size must be >= 1 pixel, got {image_size}'
    )
  side = image_size or config.eval_size()
  dtype = 'uint8' if preprocess else 'float32'
  return spec_lib.InputSpec(batch, side, side, dtype)


@dataclasses.dataclass(frozen=True)
class Check:
  """A reload's outputs against se_flax's, on one random batch."""

  batch: int
  max_abs_diff: float
  max_abs_reference: float

  @property
  def relative(self) -> float:
    return self.max_abs_diff / max(self.max_abs_reference, 1e-30)

  @property
  def ok(self) -> bool:
    return self.max_abs_diff <= RELATIVE_TOLERANCE * self.max_abs_reference

  def __str__(self) -> str:
    return (
        f'batch {self.batch}: max |diff| {self.max_abs_diff:.3g} vs max '
        f'|se_flax| {self.max_abs_reference:.3g} ({self.relative:.2g} '
        f'relative; limit {RELATIVE_TOLERANCE:g})'
    )


def reference_outputs(
    model,
    variables,
    config: Optional[config_lib.PretrainedConfig],
    images: np.ndarray,
    outputs: str = 'logits',
) -> np.ndarray:
  """se_flax's own outputs for `images`: numpy preprocessing for uint8
  inputs, then `model.apply` under the process's layer rules (on CPU, the
  custom-derivative ones: an independent path to the plain export)."""
  _check_outputs(outputs)
  x = normalise(images, config) if images.dtype == np.uint8 else images
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  logits = logits.astype(jnp.float32)
  if outputs == 'probabilities':
    logits = jax.nn.softmax(logits, axis=-1)
  return np.asarray(logits)


def check_batches(spec: spec_lib.InputSpec) -> tuple[int, ...]:
  """Batch sizes a check runs: the fixed one, or two for a dynamic batch."""
  return (spec.batch,) if spec.batch is not None else (2, 1)


def compare(
    reloaded: Callable,
    reference: Callable,
    spec: spec_lib.InputSpec,
) -> list[Check]:
  """Calls `reloaded` and `reference` (arrays -> arrays) on random inputs of
  `spec` at each of `check_batches(spec)`; one `Check` per batch size."""
  checks = []
  for seed, batch in enumerate(check_batches(spec)):
    images = spec.example(batch=batch, seed=seed)
    got = np.asarray(reloaded(images))
    want = np.asarray(reference(images))
    if got.shape != want.shape:
      raise spec_lib.ExportError(
          f'the reloaded export gives shape {got.shape} for batch {batch}, '
          f'expected {want.shape}'
      )
    checks.append(
        Check(
            batch,
            float(np.max(np.abs(got.astype(np.float64) - want))),
            float(np.max(np.abs(want))),
        )
    )
  return checks
