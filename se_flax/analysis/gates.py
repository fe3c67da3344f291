"""SE gates per class and channel, streamed over a dataset (paper §7.2).

    stats = excitation_statistics(model, variables, batches,
                                  mean=cfg.mean, std=cfg.std,
                                  sample_cap=50)
    stats.layers['SE_4_6'].mean[k]      # (C,) mean gate of class k

streams the sigmoid gates that every `SqueezeExcite` sows
(`intermediates/gate`, (N, C)) over one pass of `batches`, on every device
of the mesh in one jitted function, and accumulates per layer, class and
channel the count, mean, M2, min, max (and optionally a histogram for
quantiles). Padding (mask False) is never counted. Memory is
O(layers x classes x channels), whatever the dataset's size.

Accumulation is on the device: each batch's per-class count, mean and M2
(a one-hot matmul with the mask at HIGHEST precision, centred on the
batch's own class means) are merged into the running ones with Chan et
al.'s parallel update, in float32, and fetched once at the end as float64.
That is numerically stable (no sum of squares is ever differenced) and
ships nothing per batch; its relative error grows like float32's epsilon
times the square root of the number of batches (~1e-6 on ImageNet's val).

ResNet-family layers are named as in the paper: SE_stage_block with the
stages conv2_x..conv5_x and 1-based blocks, so `stage1_block2/se` is
SE_2_3; other families' layers keep their module path ('inception_3a/se').

The command `python -m se_flax.analysis.excitation` (excitation.py)
makes the paper's figures and table from them.
"""

import dataclasses
import functools
import itertools
import re
from typing import Any, Iterable, Iterator, Optional, Sequence

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from se_flax.analysis.statistics import GateStatistics, LayerStatistics
from se_flax.constants import MEAN_RGB, STDDEV_RGB
from se_flax.models import resnet
from se_flax.train import sharding

_RESNET_SE_PATH = re.compile(r'^stage(\d+)_block(\d+)/se$')


class NoSEBlocksError(ValueError):
  """The model sows no SE gate: a plain network, or SE switched off."""


@dataclasses.dataclass(frozen=True)
class SELayer:
  """One SE block: its display name, module path and gated channels."""

  name: str
  path: tuple[str, ...]
  channels: int


def paper_name(model: nn.Module, path: Sequence[str]) -> str:
  """SE_stage_block for the ResNet family (stage1_block2/se: SE_2_3), else
  the module path joined by '/'."""
  joined = '/'.join(path)
  match = _RESNET_SE_PATH.match(joined)
  if isinstance(model, resnet.ResNet) and match:
    return f'SE_{int(match[1]) + 1}_{int(match[2]) + 1}'
  return joined


def _natural_key(path: Sequence[str]):
  return [
      [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', part)]
      for part in path
  ]


def _sown_gates(model, variables, images) -> dict[tuple[str, ...], Any]:
  """module path -> the gate each SqueezeExcite sowed (N, C) or NHWC."""
  _, state = model.apply(
      variables, images, train=False, mutable=['intermediates']
  )
  flat = traverse_util.flatten_dict(nn.unbox(state.get('intermediates', {})))
  return {k[:-1]: v[-1] for k, v in flat.items() if k[-1] == 'gate'}


def se_layers(
    model: nn.Module, variables, image_shape: Sequence[int]
) -> list[SELayer]:
  """Every SE block of `model`, in network order (shapes only, no compute).

  Args:
    model, variables: the network and its `{'params', 'batch_stats'}`.
    image_shape: one input's (H, W, 3).

  Raises:
    NoSEBlocksError: the model has no SqueezeExcite.
  """
  x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  gates = jax.eval_shape(functools.partial(_sown_gates, model), variables, x)
  if not gates:
    raise NoSEBlocksError(
        f'{type(model).__name__} has no SE blocks (nothing sows '
        "'intermediates/gate'): this is a plain network (se=None or every "
        'SE switched off), so there are no excitations to analyse'
    )
  return [
      SELayer(paper_name(model, p), p, int(gates[p].shape[-1]))
      for p in sorted(gates, key=_natural_key)
  ]


def select_layers(
    available: Sequence[SELayer], wanted: Optional[Sequence[str]]
) -> list[SELayer]:
  """`wanted` names or module paths (None: all) -> the `SELayer`s."""
  if wanted is None:
    return list(available)
  by_name = {l.name: l for l in available}
  by_name.update({'/'.join(l.path): l for l in available})
  unknown = [w for w in wanted if w not in by_name]
  if unknown:
    raise ValueError(
        f'Unknown SE layers {unknown}; this model has '
        f'{[l.name for l in available]}'
    )
  return [by_name[w] for w in wanted]


def figure_layers(names: Sequence[str]) -> list[str]:
  """The paper's Fig. 6 panels among `names`: the last SE block of every
  stage but the last, and every block of the last stage (SE-ResNet-50:
  SE_2_3, SE_3_4, SE_4_6, SE_5_1, SE_5_2, SE_5_3). Names not in the
  SE_stage_block form are all kept."""
  parsed = [re.fullmatch(r'SE_(\d+)_(\d+)', n) for n in names]
  if not names or not all(parsed):
    return list(names)
  stages = [int(m[1]) for m in parsed]
  last_stage = max(stages)
  keep = []
  for i, name in enumerate(names):
    last_of_stage = i + 1 == len(names) or stages[i + 1] != stages[i]
    if stages[i] == last_stage or last_of_stage:
      keep.append(name)
  return keep


# -- the jitted accumulation -------------------------------------------------


def normalize(images, mean, std, dtype=jnp.float32):
  """Pixels 0..255 (uint8 or float) -> (x / 255 - mean) / std, per channel.

  `mean` and `std` are RGB on the [0, 1] scale: ImageNet's for se_flax
  runs (`data.normalize.normalize_images` computes the same), the
  weights' own config for timm's (`Pretrained.config.mean/std`; some use
  0.5 / 0.5).
  """
  scale = 1.0 / (255.0 * jnp.asarray(std, jnp.float32))
  shift = jnp.asarray(mean, jnp.float32) / jnp.asarray(std, jnp.float32)
  return (images.astype(jnp.float32) * scale - shift).astype(dtype)


def init_state(
    layers: Sequence[SELayer], num_classes: int, histogram_bins: int = 0
) -> dict:
  """Zero running statistics (float32 on the device)."""
  k = num_classes
  state = dict(
      count=jnp.zeros((k,), jnp.int32),
      seen=jnp.zeros((k,), jnp.int32),
      invalid=jnp.zeros((), jnp.int32),
      layers={},
  )
  for layer in layers:
    c = layer.channels
    s = dict(
        mean=jnp.zeros((k, c), jnp.float32),
        m2=jnp.zeros((k, c), jnp.float32),
        min=jnp.full((k, c), jnp.inf, jnp.float32),
        max=jnp.full((k, c), -jnp.inf, jnp.float32),
    )
    if histogram_bins:
      s['hist'] = jnp.zeros((k, c, histogram_bins), jnp.int32)
    state['layers'][layer.name] = s
  return state


def _included(state, labels, mask, num_classes, sample_cap):
  """(N,) bool: real, in-range examples under the per-class cap, taken
  in stream order (batch order, then position in the batch)."""
  valid = mask & (labels >= 0) & (labels < num_classes)
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32) * valid[
      :, None
  ].astype(jnp.int32)
  seen = onehot.sum(0)
  invalid = jnp.sum(mask & ~valid)
  if sample_cap is None:
    return valid, seen, invalid
  earlier = jnp.cumsum(onehot, axis=0) - onehot  # Same class, before n.
  rank = jnp.sum(earlier * onehot, axis=1)
  before = state['count'][jnp.clip(labels, 0, num_classes - 1)]
  return valid & (before + rank < sample_cap), seen, invalid


def _merge_layer(s, gates, labels, weights, counts, total, hist_range):
  """Chan et al.'s merge of one batch's per-class moments into `s`."""
  hi = jax.lax.Precision.HIGHEST
  n_b = weights.sum(0)  # (K,)
  mean_b = jnp.einsum('nk,nc->kc', weights, gates, precision=hi)
  mean_b = mean_b / jnp.maximum(n_b, 1.0)[:, None]
  dev = gates - mean_b[labels]
  m2_b = jnp.einsum('nk,nc->kc', weights, dev * dev, precision=hi)
  delta = mean_b - s['mean']
  frac = jnp.where(total > 0, n_b / jnp.maximum(total, 1.0), 0.0)
  out = dict(
      mean=s['mean'] + delta * frac[:, None],
      m2=s['m2'] + m2_b + delta**2 * (counts * frac)[:, None],
  )
  # Excluded examples go to segment K, which is dropped.
  k = weights.shape[1]
  ids = jnp.where(weights.sum(1) > 0, labels, k)
  out['min'] = jnp.minimum(
      s['min'], jax.ops.segment_min(gates, ids, num_segments=k + 1)[:k]
  )
  out['max'] = jnp.maximum(
      s['max'], jax.ops.segment_max(gates, ids, num_segments=k + 1)[:k]
  )
  if 'hist' in s:
    bins = s['hist'].shape[-1]
    low, high = hist_range
    b = jnp.floor((gates - low) * (bins / (high - low))).astype(jnp.int32)
    b = jnp.clip(b, 0, bins - 1)
    channel = jnp.arange(gates.shape[1])[None, :]
    out['hist'] = s['hist'].at[ids[:, None], channel, b].add(1, mode='drop')
  return out


def update_state(
    state: dict,
    variables,
    batch: dict,
    *,
    model: nn.Module,
    layers: Sequence[SELayer],
    mean: Sequence[float],
    std: Sequence[float],
    sample_cap: Optional[int] = None,
    histogram_range: tuple[float, float] = (0.0, 1.0),
) -> dict:
  """One batch's gates merged into `state` (pure; jit it).

  `batch`: 'image' (N, H, W, 3) pixels 0..255, 'label' (N,) int, 'mask'
  (N,) bool (False: padding, never counted).
  """
  num_classes = state['count'].shape[0]
  images = normalize(batch['image'], mean, std)
  gates = _sown_gates(model, variables, images)
  labels = batch['label'].astype(jnp.int32)
  included, seen, invalid = _included(
      state, labels, batch['mask'], num_classes, sample_cap
  )
  weights = jax.nn.one_hot(labels, num_classes) * included[:, None]
  counts = state['count'].astype(jnp.float32)
  total = counts + weights.sum(0)
  labels = jnp.clip(labels, 0, num_classes - 1)
  new_layers = {}
  for layer in layers:
    g = gates[layer.path].astype(jnp.float32)
    if g.ndim == 4:  # squeeze='none': one gate per position; average them.
      g = g.mean(axis=(1, 2))
    new_layers[layer.name] = _merge_layer(
        state['layers'][layer.name],
        g,
        labels,
        weights,
        counts,
        total,
        histogram_range,
    )
  return dict(
      count=state['count'] + weights.sum(0).astype(jnp.int32),
      seen=state['seen'] + seen,
      invalid=state['invalid'] + invalid,
      layers=new_layers,
  )


# -- the stream ---------------------------------------------------------------


def padded_batches(batches: Iterable[dict], multiple: int) -> Iterator[dict]:
  """Batches with a 'mask' (all True if absent), each padded (mask False)
  to the first batch's size rounded up to `multiple` (one compiled shape;
  every device gets an equal slice)."""
  size = None
  for batch in batches:
    if 'image' not in batch or 'label' not in batch:
      raise ValueError(
          "Each batch must be a dict with 'image' (N, H, W, 3) and 'label' "
          f"(N,) (and optionally 'mask'), got keys {sorted(batch)}"
      )
    batch = {k: np.asarray(v) for k, v in batch.items()}
    n = batch['label'].shape[0]
    batch.setdefault('mask', np.ones((n,), bool))
    batch['mask'] = batch['mask'].astype(bool)
    if size is None:
      size = -(-n // multiple) * multiple
    if n > size:
      raise ValueError(
          f'A batch of {n} examples follows batches of {size}: the first '
          'batch sets the size; only a shorter last batch is allowed'
      )
    if n < size:
      batch = {
          k: np.concatenate(
              [v, np.zeros((size - n,) + v.shape[1:], v.dtype)], axis=0
          )
          for k, v in batch.items()
      }
    yield {k: batch[k] for k in ('image', 'label', 'mask')}


def excitation_statistics(
    model: nn.Module,
    variables,
    batches: Iterable[dict],
    *,
    num_classes: Optional[int] = None,
    layers: Optional[Sequence[str]] = None,
    mean: Sequence[float] = MEAN_RGB,
    std: Sequence[float] = STDDEV_RGB,
    sample_cap: Optional[int] = None,
    histogram_bins: int = 0,
    histogram_range: tuple[float, float] = (0.0, 1.0),
    label_names: Optional[Sequence[str]] = None,
    label_descriptions: Optional[Sequence[str]] = None,
    mesh: Optional[jax.sharding.Mesh] = None,
) -> GateStatistics:
  """Per-class, per-channel gate statistics over one pass of `batches`.

  Args:
    model, variables: the network (`create_model`, `load_pretrained`) and
      its `{'params', 'batch_stats'}`.
    batches: this process's batches, each {'image': (N, H, W, 3) RGB
      pixels in 0..255 (uint8), 'label': (N,) int, optionally 'mask': (N,)
      bool}: e.g. `create_inputs(config).eval()` (the padded eval stream)
      or any iterator (a shorter last batch is padded here).
    num_classes: K, labels in [0, K); default the classifier's width.
    layers: SE layer names or module paths (default: every SE block).
    mean, std: the input normalisation (see `normalize`); pass
      `Pretrained.config.mean/std` for timm weights.
    sample_cap: count at most this many examples per class, the first
      ones in stream order (the paper: 50); None counts all.
    histogram_bins: B > 0 also keeps a (K, C, B) histogram per layer for
      `LayerStatistics.quantiles` (error <= width / 2 of a bin; memory
      4 K C B bytes per layer).
    histogram_range: its (low, high); sigmoid gates lie in [0, 1].
    label_names, label_descriptions: class id -> name, stored with it.
    mesh: default `sharding.create_mesh()` (every device).

  Raises:
    NoSEBlocksError: the model has no SE block.
    ValueError: labels outside [0, K), or an unknown layer.
  """
  if num_classes is None:
    num_classes = int(np.shape(variables['params']['fc']['kernel'])[-1])
  if sample_cap is not None and sample_cap < 1:
    raise ValueError(f'sample_cap must be >= 1 or None, got {sample_cap}')
  mesh = mesh or sharding.create_mesh()
  stream = padded_batches(batches, jax.local_device_count())
  try:
    first = next(stream)
  except StopIteration:
    raise ValueError('The dataset yielded no batch') from None
  chosen = select_layers(
      se_layers(model, variables, first['image'].shape[1:]), layers
  )
  replicated = sharding.replicated(mesh)
  update = jax.jit(
      functools.partial(
          update_state,
          model=model,
          layers=tuple(chosen),
          mean=tuple(mean),
          std=tuple(std),
          sample_cap=sample_cap,
          histogram_range=tuple(histogram_range),
      ),
      in_shardings=(replicated, replicated, sharding.batch_sharding(mesh)),
      out_shardings=replicated,
      donate_argnums=0,
  )
  state = jax.device_put(
      init_state(chosen, num_classes, histogram_bins), replicated
  )
  variables = jax.device_put(variables, replicated)
  batch_sharding = sharding.batch_sharding(mesh)
  for batch in sharding.prefetch_to_mesh(
      itertools.chain([first], stream), batch_sharding
  ):
    state = update(state, variables, batch)
  state = jax.device_get(state)
  if int(state['invalid']):
    raise ValueError(
        f'{int(state["invalid"])} examples have labels outside '
        f'[0, {num_classes})'
    )
  return _to_host(
      state,
      chosen,
      sample_cap=sample_cap,
      histogram_range=tuple(histogram_range),
      label_names=label_names,
      label_descriptions=label_descriptions,
  )


def _to_host(state, layers, **meta) -> GateStatistics:
  count = np.asarray(state['count'], np.int64)
  empty = count == 0
  out = {}
  for layer in layers:
    s = {
        k: np.asarray(v, np.float64)
        for k, v in state['layers'][layer.name].items()
    }
    for field in ('mean', 'min', 'max'):
      s[field][empty] = np.nan
    hist = s.pop('hist', None)
    out[layer.name] = LayerStatistics(
        count=count,
        mean=s['mean'],
        m2=s['m2'],
        min=s['min'],
        max=s['max'],
        histogram=None if hist is None else hist.astype(np.int64),
        histogram_range=meta['histogram_range'],
    )
  names = meta['label_names']
  descriptions = meta['label_descriptions']
  return GateStatistics(
      layers=out,
      paths={l.name: '/'.join(l.path) for l in layers},
      seen=np.asarray(state['seen'], np.int64),
      sample_cap=meta['sample_cap'],
      label_names=tuple(names) if names is not None else None,
      label_descriptions=(
          tuple(descriptions) if descriptions is not None else None
      ),
  )
