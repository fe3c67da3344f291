"""Parameter and multiply-accumulate counts, the spec's convention.

MACs count convolutions (`out.size * C_in / groups * kh * kw`) and dense
layers (`out.size * in_features`), SE FCs included; BN, activations,
pooling, the SE scale and residual adds are not counted (the SE scale's
multiplies are reported separately as `se_scale_ops`). Parameters count
`params` only (BN running statistics are reported separately).
"""

import dataclasses
from typing import Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from se_flax import layers


@dataclasses.dataclass(frozen=True)
class ModelStats:
  """Counts for one network at one input size (batch 1)."""

  params: int
  macs: int
  se_params: int
  se_macs: int
  batch_stats: int
  # Elements multiplied by an SE gate (not in `macs`). The paper's SE
  # GFLOPs/MFLOPs (Tables 2, 3) are consistent with `macs + se_scale_ops`.
  se_scale_ops: int = 0

  @property
  def gmacs(self) -> float:
    return self.macs / 1e9


def _count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def _in_se(path: tuple[str, ...]) -> bool:
  return any(name == 'se' or name.startswith('se_') for name in path)


def model_stats(
    model: Union[str, nn.Module], image_size: int = 224, **create_kwargs
) -> ModelStats:
  """Counts parameters and MACs of `model` for one `image_size` RGB image.

  Nothing is computed: shapes come from `jax.eval_shape`.
  """
  if isinstance(model, str):
    from se_flax.models.registry import create_model

    model = create_model(model, **create_kwargs)
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  macs = {'total': 0, 'se': 0, 'se_scale': 0}

  def count_macs(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name != '__call__':
      return out
    if isinstance(module, layers.SqueezeExcite):
      macs['se_scale'] += out.size  # One multiply per gated element.
      return out
    if isinstance(module, layers.Conv2d):
      kh, kw = module.kernel_shape
      n = out.size * args[0].shape[-1] // module.groups * kh * kw
    elif isinstance(module, nn.Dense):
      n = out.size * args[0].shape[-1]
    else:
      return out
    macs['total'] += n
    if _in_se(module.scope.path):
      macs['se'] += n
    return out

  def init(x):
    with nn.intercept_methods(count_macs):
      return model.init(jax.random.key(0), x, train=False)

  variables = jax.eval_shape(init, x)
  params = variables['params']
  se_params = _count(
      [
          v
          for path, v in jax.tree_util.tree_flatten_with_path(params)[0]
          if _in_se(tuple(getattr(k, 'key', '') for k in path))
      ]
  )
  return ModelStats(
      params=_count(params),
      macs=macs['total'],
      se_params=se_params,
      se_macs=macs['se'],
      batch_stats=_count(variables.get('batch_stats', {})),
      se_scale_ops=macs['se_scale'],
  )


def format_table(names, image_size: int = 224) -> str:
  """A markdown table of parameters and MACs for the registered `names`."""
  rows = [
      '| Model | Params | of which SE | MACs | of which SE | BN stats | '
      'SE scale ops |',
      '|---|---:|---:|---:|---:|---:|---:|',
  ]
  for name in names:
    s = model_stats(name, image_size)
    rows.append(
        f'| {name} | {s.params:,} | {s.se_params:,} | {s.macs:,} | '
        f'{s.se_macs:,} | {s.batch_stats:,} | {s.se_scale_ops:,} |'
    )
  return '\n'.join(rows)
