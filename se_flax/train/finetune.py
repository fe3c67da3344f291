"""Fine-tuning: pretrained variables merged into a new run's variables.

Leaves are matched by name (`params/stage1_block0/conv1/kernel`) and
shape. The classifier (`fc`) is re-initialised when its shape differs or
the source has none (`load_pretrained` drops it when the class counts
differ); any other difference (a missing, unexpected or reshaped leaf) is
an error naming the leaves, unless `allow_mismatch`: then missing and
reshaped leaves keep their fresh initialisation and unexpected ones are
ignored. `load_init_from` reads `config.init_from` and plans the merge
before anything compiles; the loop merges inside its jitted init. The
rest is pure.
"""

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util

from se_flax.data.config import MEAN_RGB, STDDEV_RGB
from se_flax.train.optim import HEAD

_SEP = '/'
_LOG_NAMES = 8  # Names a log line lists before '... and N more'.


class MergeMismatchError(ValueError):
  """Pretrained variables that do not fit the network, outside the head."""


@dataclasses.dataclass(frozen=True)
class MergeReport:
  """What a merge did, leaf by leaf ('collection/module/.../name').

  Attributes:
    loaded: target leaves given the source's values.
    reinitialised: target leaves that keep their fresh initialisation.
    ignored: source leaves not used (a reshaped head, or what
      `allow_mismatch` let through).
    mismatched: (name, source shape, target shape) of reshaped leaves
      outside the head (empty unless `allow_mismatch`).
  """

  loaded: tuple[str, ...]
  reinitialised: tuple[str, ...]
  ignored: tuple[str, ...]
  mismatched: tuple[tuple[str, tuple, tuple], ...] = ()

  def summary(self, source: str) -> str:
    """One log line: counts, plus the names that were not loaded."""
    line = (
        f'init_from {source}: loaded {len(self.loaded)} leaves; '
        f're-initialised {len(self.reinitialised)}'
        f'{_names(self.reinitialised)}; ignored {len(self.ignored)}'
        f'{_names(self.ignored)}'
    )
    if self.mismatched:
      line += f'; shape mismatches allowed: {_names(self.mismatched)}'
    return line


def _names(items) -> str:
  if not items:
    return ''
  shown = [
      i if isinstance(i, str) else f'{i[0]} {i[1]}->{i[2]}'
      for i in items[:_LOG_NAMES]
  ]
  more = len(items) - len(shown)
  return (
      ' (' + ', '.join(shown) + (f', ... and {more} more' if more else '') + ')'
  )


def flatten(variables: Mapping[str, Any]) -> dict[str, Any]:
  """`{'collection/module/.../name': leaf}` of a variables tree."""
  return traverse_util.flatten_dict(dict(variables), sep=_SEP)


def is_head(name: str) -> bool:
  """Whether a flat name belongs to the classifier (`fc`)."""
  return name.split(_SEP)[1:2] == [HEAD]


def plan_merge(
    target_shapes: Mapping[str, tuple],
    source_shapes: Mapping[str, tuple],
    *,
    allow_mismatch: bool = False,
) -> MergeReport:
  """Decides, from flat names and shapes alone, what a merge loads.

  Raises:
    MergeMismatchError: a non-head leaf is missing from the source, has
      another shape there, or the source has a leaf the network lacks;
      and `allow_mismatch` is False. The message lists every such leaf.
  """
  loaded, reinitialised, ignored, mismatched = [], [], [], []
  missing, unexpected = [], []
  for name, shape in sorted(target_shapes.items()):
    shape = tuple(shape)
    if name in source_shapes and tuple(source_shapes[name]) == shape:
      loaded.append(name)
      continue
    reinitialised.append(name)
    if name in source_shapes:
      ignored.append(name)
      if not is_head(name):
        mismatched.append((name, tuple(source_shapes[name]), shape))
    elif not is_head(name):
      missing.append(name)
  for name in sorted(set(source_shapes) - set(target_shapes)):
    ignored.append(name)
    if not is_head(name):
      unexpected.append(name)
  if (missing or unexpected or mismatched) and not allow_mismatch:
    raise MergeMismatchError(_mismatch_message(missing, unexpected, mismatched))
  return MergeReport(
      loaded=tuple(loaded),
      reinitialised=tuple(reinitialised),
      ignored=tuple(sorted(ignored)),
      mismatched=tuple(mismatched),
  )


def _mismatch_message(missing, unexpected, mismatched) -> str:
  lines = ['The pretrained variables do not fit the network outside its head:']
  lines += [f'  {n}: source {s}, network {t}' for n, s, t in mismatched]
  lines += [f'  {n}: missing from the source' for n in missing]
  lines += [f'  {n}: in the source, not in the network' for n in unexpected]
  lines.append(
      'Check that config.model matches the pretrained model, or keep '
      'those leaves freshly initialised with --config.init_allow_mismatch'
  )
  return '\n'.join(lines)


def merge_variables(
    target: Mapping[str, Any],
    source: Mapping[str, Any],
    *,
    allow_mismatch: bool = False,
) -> tuple[dict[str, Any], MergeReport]:
  """`target` with every leaf `source` has under the same name and shape.

  Args:
    target: the new network's variables (`{'params', 'batch_stats'}`).
    source: pretrained variables of the same layout (numpy or JAX arrays).
    allow_mismatch: see the module docstring.

  Returns:
    (merged variables, report). Loaded leaves take the target's dtype;
    the rest are the target's own objects. Works under `jax.jit`.
  """
  flat_target, flat_source = flatten(target), flatten(source)
  report = plan_merge(
      {k: np.shape(v) for k, v in flat_target.items()},
      {k: np.shape(v) for k, v in flat_source.items()},
      allow_mismatch=allow_mismatch,
  )
  merged = dict(flat_target)
  for name in report.loaded:
    merged[name] = flat_source[name].astype(flat_target[name].dtype)
  return traverse_util.unflatten_dict(merged, sep=_SEP), report


def select(variables: Mapping[str, Any], names) -> dict[str, Any]:
  """The sub-tree of `variables` with only the flat `names`."""
  flat = flatten(variables)
  return traverse_util.unflatten_dict({n: flat[n] for n in names}, sep=_SEP)


def log_report(report: MergeReport, source: str) -> None:
  """The summary at INFO; every leaf's fate at verbosity 1."""
  logging.info('%s', report.summary(source))
  for kind in ('loaded', 'reinitialised', 'ignored'):
    for name in getattr(report, kind):
      logging.vlog(1, 'init_from %s: %s', kind, name)


def load_init_from(config, model, image_size: int, num_classes: int) -> dict:
  """`config.init_from`'s variables (numpy), checked against `model`.

  Every process loads them itself (from the hub cache, a file or a
  workdir every process sees), so nothing is broadcast. The merge plan is
  made and logged here, before anything compiles: a mismatch outside the
  head raises `MergeMismatchError`.
  """
  from se_flax.pretrained import load_pretrained  # Hub client, converters.

  pretrained = load_pretrained(
      config.init_from, num_classes=num_classes, model_name=config.model.name
  )
  if (
      pretrained.model_name != config.model.name
      and not config.init_allow_mismatch
  ):
    raise MergeMismatchError(
        f'config.init_from {config.init_from!r} is a {pretrained.model_name}, '
        f'config.model.name is {config.model.name!r}: set the same model, or '
        '--config.init_allow_mismatch=True to load what fits'
    )
  _warn_on_other_preprocessing(config, pretrained)
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  shapes = jax.eval_shape(
      lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x
  )
  flat_shapes = lambda tree: {k: np.shape(v) for k, v in flatten(tree).items()}
  report = plan_merge(
      flat_shapes(shapes),
      flat_shapes(pretrained.variables),
      allow_mismatch=config.init_allow_mismatch,
  )
  log_report(report, pretrained.source)
  return pretrained.variables


def _warn_on_other_preprocessing(config, pretrained) -> None:
  """The pipeline normalises with ImageNet's mean and std; say when the
  pretrained weights expect other inputs."""
  mean, std = pretrained.config.mean, pretrained.config.std
  if not (
      np.allclose(mean, MEAN_RGB, atol=1e-3)
      and np.allclose(std, STDDEV_RGB, atol=1e-3)
  ):
    logging.warning(
        'init_from %s expects inputs normalised with mean %s, std %s; '
        'this pipeline uses mean %s, std %s',
        config.init_from,
        tuple(mean),
        tuple(std),
        MEAN_RGB,
        STDDEV_RGB,
    )
