"""Export an se_flax network out of JAX: StableHLO, TF SavedModel or ONNX.

    path = se_flax.export.export('seresnet50.a1_in1k', 'stablehlo', 'r50.bin')
    python -m se_flax.export --pretrained seresnet50.a1_in1k \\
        --format savedmodel --output r50_savedmodel --preprocess

The exported function takes an NHWC batch: float32 images normalised as
the weights expect, or with `preprocess` uint8 RGB 0-255 pixels with the
normalisation inside. It gives logits (or softmax probabilities) float32,
(batch, classes). The batch is dynamic unless a size is given. Every
export is written under a temporary name, reloaded in its own runtime
(jax.export, TensorFlow, onnxruntime) and compared with se_flax's outputs
on a random batch (to 1e-4 of their largest value) before it takes its
name; an existing output is kept unless `overwrite`.

Neither this package nor the StableHLO format imports TensorFlow; the
SavedModel format needs it, ONNX needs `pip install 'se_flax[export]'`.
"""

import dataclasses
import functools
import importlib
import os
import shutil
import tempfile
from typing import Callable, Optional, Union

from se_flax.export import serving
from se_flax.export.serving import Check
from se_flax.export.spec import FORMATS, ExportError, InputSpec
from se_flax.pretrained import load as load_lib

# What each format imports beyond se_flax, and how to install it.
_PACKAGES = {
    'stablehlo': ((), ''),
    'savedmodel': (('tensorflow',), 'pip install tensorflow-cpu'),
    'onnx': (
        ('onnx', 'onnxruntime', 'jax2onnx', 'onnx_ir'),
        "pip install 'se_flax[export]' && pip install --no-deps"
        ' jax2onnx==0.17.1',
    ),
}


@dataclasses.dataclass(frozen=True)
class Exported:
  """What `export_checked` wrote and how its reload compared."""

  path: str
  format: str
  spec: InputSpec
  checks: tuple[Check, ...]


def _check_options(format_: str, batch, outputs: str) -> None:
  """Refuses bad options before anything is loaded or written."""
  if format_ not in FORMATS:
    raise ExportError(f'format must be one of {FORMATS}, got {format_!r}')
  if batch is not None and (not isinstance(batch, int) or batch < 1):
    raise ExportError(f'batch must be an integer >= 1 or None, got {batch!r}')
  if outputs not in serving.OUTPUTS:
    raise ExportError(
        f'outputs must be one of {serving.OUTPUTS}, got {outputs!r}'
    )


def _check_output(output: str, overwrite: bool) -> str:
  path = os.path.abspath(os.fspath(output))
  if os.path.lexists(path) and not overwrite:
    raise FileExistsError(
        f'output {path} exists; expected a new path (or overwrite=True, '
        '--overwrite)'
    )
  return path


def _missing(format_: str, error: ModuleNotFoundError) -> Optional[str]:
  """The one-line install hint when `error` is a package `format_` needs."""
  packages, command = _PACKAGES[format_]
  root = (error.name or '').partition('.')[0]
  if root not in packages:
    return None
  return (
      f'format {format_!r} needs the package {root!r} ({", ".join(packages)})'
      f', which is not installed; install with: {command}'
  )


def _guarded(format_: str, call: Callable) -> Callable:
  """`call` with a missing package of `format_` as a one-line ImportError."""

  @functools.wraps(call)
  def wrapped(*args, **kwargs):
    try:
      return call(*args, **kwargs)
    except ModuleNotFoundError as e:
      message = _missing(format_, e)
      if message is None:
        raise
      raise ImportError(message) from None

  return wrapped


def format_module(format_: str):
  """The module of `format_` (`save(fn, spec, path)`, `load(path)`),
  imported when first asked for: ONNX and TF are optional."""
  if format_ not in FORMATS:
    raise ExportError(f'format must be one of {FORMATS}, got {format_!r}')
  return _guarded(format_, importlib.import_module)(f'se_flax.export.{format_}')


def _save_and_load(format_: str, outputs: str):
  """(`save(fn, spec, path)`, `load(path)`) of a format, missing packages
  reported with how to install them."""
  module = format_module(format_)
  save = module.save
  if format_ == 'savedmodel':  # Its signature names the output.
    save = functools.partial(save, output_name=outputs)
  return _guarded(format_, save), _guarded(format_, module.load)


def _move_into_place(written: str, output: str, staging: str) -> None:
  """Renames `written` to `output`; an `output` there (overwrite) goes into
  `staging` first, deleted with it. One filesystem: renames only."""
  if os.path.lexists(output):
    os.rename(output, os.path.join(staging, 'replaced'))
  os.rename(written, output)


def _write(output: str, save_to: Callable, verify: Callable) -> None:
  """`save_to(tmp)` then `verify(tmp)` under a temporary name beside
  `output`, renamed to `output` only when both succeed."""
  parent = os.path.dirname(output)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f'.{os.path.basename(output)}.', dir=parent)
  try:
    written = os.path.join(staging, os.path.basename(output))
    save_to(written)
    verify(written)
    _move_into_place(written, output, staging)
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def _pretrained(source, model_name) -> load_lib.Pretrained:
  if isinstance(source, load_lib.Pretrained):
    if model_name is not None:
      raise ExportError(
          f'model_name={model_name!r} is for sources to load; got weights '
          'already loaded (a Pretrained)'
      )
    return source
  return load_lib.load_pretrained(os.fspath(source), model_name=model_name)


def export_checked(
    source: Union[str, os.PathLike, load_lib.Pretrained],
    format: str,  # pylint: disable=redefined-builtin
    output: Union[str, os.PathLike],
    *,
    batch: Optional[int] = None,
    preprocess: bool = False,
    outputs: str = 'logits',
    image_size: Optional[int] = None,
    model_name: Optional[str] = None,
    check: bool = True,
    overwrite: bool = False,
) -> Exported:
  """`export`, returning the path and the figures of the checks."""
  _check_options(format, batch, outputs)
  output = _check_output(output, overwrite)
  save, load = _save_and_load(format, outputs)  # A missing package: now.
  pretrained = _pretrained(source, model_name)
  model, variables, config = (
      pretrained.model,
      pretrained.variables,
      pretrained.config,
  )
  fn = serving.serving_fn(
      model, variables, config, preprocess=preprocess, outputs=outputs
  )
  spec = serving.input_spec(
      config, batch=batch, image_size=image_size, preprocess=preprocess
  )
  checks = []

  def verify(path):
    if not check:
      return
    reference = functools.partial(
        serving.reference_outputs, model, variables, config, outputs=outputs
    )
    checks.extend(serving.compare(load(path), reference, spec))
    failed = [c for c in checks if not c.ok]
    if failed:
      raise ExportError(
          f'the {format} export of {pretrained.model_name} reloads with '
          f'outputs unlike se_flax\'s: {"; ".join(map(str, failed))}'
      )

  _write(output, lambda path: save(fn, spec, path), verify)
  return Exported(output, format, spec, tuple(checks))


def export(
    source: Union[str, os.PathLike, load_lib.Pretrained],
    format: str,  # pylint: disable=redefined-builtin
    output: Union[str, os.PathLike],
    *,
    batch: Optional[int] = None,
    preprocess: bool = False,
    outputs: str = 'logits',
    image_size: Optional[int] = None,
    model_name: Optional[str] = None,
    check: bool = True,
    overwrite: bool = False,
) -> str:
  """Writes a network as `format` at `output`; returns the absolute path.

  Args:
    source: anything `se_flax.load_pretrained` takes (a timm tag, a file,
      a timm directory, a workdir, an se_flax .npz export), or a
      `Pretrained` already loaded.
    format: 'stablehlo' (a file of `jax.export` bytes), 'savedmodel' (a
      directory; signature `serving_default`, input 'images', output named
      `outputs`) or 'onnx' (a file).
    output: where to write; must not exist unless `overwrite`.
    batch: a fixed batch size, or None for a dynamic one.
    preprocess: uint8 RGB 0-255 NHWC in, the weights' mean/std inside;
      else float32 inputs already normalised.
    outputs: 'logits' or 'probabilities' (softmax), (batch, classes).
    image_size: the input side in pixels; default the weights' eval size.
    model_name: the architecture, for sources that do not say.
    check: reload the export in its runtime and compare with se_flax on a
      random batch (two batch sizes when dynamic); ExportError (with the
      figures) when the largest difference exceeds 1e-4 of the largest
      output. Nothing is written then.
    overwrite: replace an existing `output`.

  Raises:
    ExportError: a bad option, a network a format cannot express, or a
      reload unlike se_flax.
    FileExistsError: `output` exists (without `overwrite`).
    ImportError: the format's packages are missing (names what to install).
  """
  return export_checked(
      source,
      format,
      output,
      batch=batch,
      preprocess=preprocess,
      outputs=outputs,
      image_size=image_size,
      model_name=model_name,
      check=check,
      overwrite=overwrite,
  ).path


__all__ = [
    'Check',
    'ExportError',
    'Exported',
    'FORMATS',
    'InputSpec',
    'export',
    'export_checked',
    'format_module',
]
