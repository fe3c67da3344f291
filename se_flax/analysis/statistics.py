"""Per-class, per-channel SE gate statistics on the host (numpy only).

`GateStatistics` holds what `gates.excitation_statistics` streamed:
for every SE layer and class, the count, mean, M2 (sum of squared
deviations), min and max of each channel's gate, optionally a fixed-bin
histogram for quantiles. Classes without examples have count 0 and NaN
statistics; nothing is divided by zero. `class_specificity` condenses a
layer to the numbers of the paper's §7.2 argument.
"""

import dataclasses
import json
from typing import Optional, Sequence

import numpy as np

ALL = 'all'  # The pooled row of Fig. 6: every counted example of every class.


@dataclasses.dataclass(frozen=True)
class LayerStatistics:
  """One SE layer's gates, per class k and channel c.

  Attributes:
    count: (K,) examples counted per class (after the sample cap).
    mean: (K, C) float64 mean gate; NaN where count is 0.
    m2: (K, C) float64 sum of squared deviations from the mean.
    min, max: (K, C) float64 extremes; NaN where count is 0.
    histogram: (K, C, B) int64 counts on `histogram_range` in B equal bins
      (values outside are clipped into the end bins), or None.
    histogram_range: (low, high) of the histogram.
  """

  count: np.ndarray
  mean: np.ndarray
  m2: np.ndarray
  min: np.ndarray
  max: np.ndarray
  histogram: Optional[np.ndarray] = None
  histogram_range: tuple[float, float] = (0.0, 1.0)

  @property
  def num_channels(self) -> int:
    return self.mean.shape[-1]

  def std(self, ddof: int = 0) -> np.ndarray:
    """(K, C) standard deviation (ddof=0: numpy's default); NaN if
    count <= ddof."""
    n = (self.count - ddof).astype(np.float64)[:, None]
    out = np.full(self.m2.shape, np.nan)
    np.divide(self.m2, n, out=out, where=n > 0)
    return np.sqrt(np.maximum(out, 0.0))

  def pooled(self) -> 'LayerStatistics':
    """The one-row statistics of all counted examples (Chan's merge)."""
    n = self.count.astype(np.float64)
    total = n.sum()
    has = self.count > 0
    if not has.any():
      nan = np.full((1, self.num_channels), np.nan)
      return dataclasses.replace(
          self,
          count=np.zeros(1, np.int64),
          mean=nan,
          m2=np.zeros_like(nan),
          min=nan,
          max=nan,
          histogram=(
              None if self.histogram is None else self.histogram.sum(0)[None]
          ),
      )
    mean = (n[has, None] * self.mean[has]).sum(0) / total
    m2 = self.m2[has].sum(0) + (
        n[has, None] * (self.mean[has] - mean) ** 2
    ).sum(0)
    return dataclasses.replace(
        self,
        count=np.array([int(total)]),
        mean=mean[None],
        m2=m2[None],
        min=self.min[has].min(0)[None],
        max=self.max[has].max(0)[None],
        histogram=(
            None if self.histogram is None else self.histogram.sum(0)[None]
        ),
    )

  @property
  def bin_width(self) -> float:
    """Width of one histogram bin, in gate units."""
    if self.histogram is None:
      raise ValueError('No histogram was accumulated (histogram_bins=0)')
    low, high = self.histogram_range
    return (high - low) / self.histogram.shape[-1]

  def quantiles(self, q: Sequence[float]) -> np.ndarray:
    """(K, C, len(q)) quantiles from the histogram; NaN where count is 0.

    The exact quantile is numpy's `method='inverted_cdf'`: the sample of
    rank ceil(q * n) (at least 1). The estimate is the midpoint of the bin
    holding that sample, clipped to [min, max], so it is within
    `bin_width / 2` of the exact value (up to float32 rounding of the
    binning) whenever every gate lay inside `histogram_range` (see `min`
    and `max`; values outside were clipped into the end bins).
    """
    q = np.asarray(q, np.float64)
    if q.ndim != 1 or np.any((q < 0) | (q > 1)):
      raise ValueError(f'q must be a 1-D sequence in [0, 1], got {q}')
    width = self.bin_width
    cdf = np.cumsum(self.histogram, axis=-1)  # (K, C, B)
    n = cdf[..., -1]  # (K, C)
    out = np.full(n.shape + (len(q),), np.nan)
    for i, qi in enumerate(q):
      rank = np.maximum(np.ceil(qi * n), 1)
      # The first bin whose cumulative count reaches the rank.
      bins = np.minimum((cdf < rank[..., None]).sum(-1), cdf.shape[-1] - 1)
      estimate = self.histogram_range[0] + (bins + 0.5) * width
      out[..., i] = np.clip(estimate, self.min, self.max)
    out[n == 0] = np.nan
    return out


@dataclasses.dataclass(frozen=True)
class GateStatistics:
  """Gate statistics of several SE layers over one pass of a dataset.

  Attributes:
    layers: layer name -> its `LayerStatistics` (network order).
    paths: layer name -> module path ('stage4_block2/se').
    seen: (K,) real examples of each class in the stream (before the cap).
    sample_cap: at most this many examples per class counted (the first
      ones in stream order), or None.
    label_names, label_descriptions: class id -> name / description.
  """

  layers: dict[str, LayerStatistics]
  paths: dict[str, str]
  seen: np.ndarray
  sample_cap: Optional[int] = None
  label_names: Optional[tuple[str, ...]] = None
  label_descriptions: Optional[tuple[str, ...]] = None

  @property
  def num_classes(self) -> int:
    return int(self.seen.shape[0])

  @property
  def count(self) -> np.ndarray:
    """(K,) examples counted per class (the same in every layer)."""
    return next(iter(self.layers.values())).count

  def empty_classes(self) -> list[int]:
    """Class ids with no example in the stream."""
    return [int(k) for k in np.flatnonzero(self.seen == 0)]

  def class_label(self, k: int) -> str:
    """'goldfish (n01443537)', or the name, or 'class 7'."""
    name = self.label_names[k] if self.label_names else None
    desc = self.label_descriptions[k] if self.label_descriptions else None
    if desc and name and desc != name:
      return f'{desc.split(",")[0]} ({name})'
    return desc or name or f'class {k}'

  def save(self, path: str) -> None:
    """Writes one .npz: '<layer>/<field>' arrays plus a JSON 'meta'."""
    arrays = {'seen': self.seen}
    for name, s in self.layers.items():
      for field in ('count', 'mean', 'm2', 'min', 'max'):
        arrays[f'{name}/{field}'] = getattr(s, field)
      arrays[f'{name}/std'] = s.std()  # For readers without this class.
      if s.histogram is not None:
        arrays[f'{name}/histogram'] = s.histogram
    meta = dict(
        layers=list(self.layers),
        paths=self.paths,
        sample_cap=self.sample_cap,
        label_names=self.label_names,
        label_descriptions=self.label_descriptions,
        histogram_range={n: s.histogram_range for n, s in self.layers.items()},
    )
    arrays['meta'] = np.array(json.dumps(meta))
    with open(path, 'wb') as f:
      np.savez_compressed(f, **arrays)

  @classmethod
  def load(cls, path: str) -> 'GateStatistics':
    with np.load(path, allow_pickle=False) as z:
      meta = json.loads(str(z['meta']))
      layers = {}
      for name in meta['layers']:
        hist = z.get(f'{name}/histogram')
        layers[name] = LayerStatistics(
            **{
                f: z[f'{name}/{f}']
                for f in ('count', 'mean', 'm2', 'min', 'max')
            },
            histogram=hist,
            histogram_range=tuple(meta['histogram_range'][name]),
        )
      tup = lambda v: tuple(v) if v is not None else None
      return cls(
          layers=layers,
          paths=meta['paths'],
          seen=z['seen'],
          sample_cap=meta['sample_cap'],
          label_names=tup(meta['label_names']),
          label_descriptions=tup(meta['label_descriptions']),
      )


SPECIFICITY_COLUMNS = (
    'layer',
    'channels',
    'classes',
    'examples',
    'mean_gate',
    'saturated',
    'eta2',
    'eta2_chance',
    'profile_corr',
)


def class_specificity(
    stats: GateStatistics, classes: Optional[Sequence[int]] = None
) -> list[dict]:
  """Per layer, how much the gates depend on the class.

  Over the classes with at least one counted example (all, or `classes`):
  - eta2: the share of the gates' variance that the class explains,
    SS_between / SS_total pooled over channels (one-way ANOVA's eta
    squared): 0 when every class has the same mean gates (the paper's
    class-agnostic SE_2_3), 1 when the class determines them. With K
    classes and N examples it is (K - 1) / (N - 1) on average when the
    class does not matter at all: `eta2_chance`.
  - profile_corr: the mean Pearson correlation, across channels, between
    two classes' mean-gate vectors: near 1 when the classes differ only in
    scale or offset (the paper's SE_5_3), lower when they excite
    different channels.
  - mean_gate and saturated (the share of channels whose pooled mean gate
    is >= 0.9): SE_5_2's near-identity saturation.
  """
  rows = []
  for name, s in stats.layers.items():
    chosen = np.arange(stats.num_classes) if classes is None else classes
    chosen = np.asarray([k for k in chosen if s.count[k] > 0], np.int64)
    n = s.count[chosen].astype(np.float64)
    total = n.sum()
    row = dict(
        layer=name,
        channels=s.num_channels,
        classes=len(chosen),
        examples=int(total),
    )
    if len(chosen) == 0:
      rows.append(
          dict(
              row,
              **{k: float('nan') for k in SPECIFICITY_COLUMNS[4:]},
          )
      )
      continue
    means = s.mean[chosen]  # (K', C)
    grand = (n[:, None] * means).sum(0) / total  # (C,)
    between = (n[:, None] * (means - grand) ** 2).sum()
    within = s.m2[chosen].sum()
    eta2 = between / (between + within) if between + within > 0 else np.nan
    row.update(
        mean_gate=float(grand.mean()),
        saturated=float((grand >= 0.9).mean()),
        eta2=float(eta2),
        eta2_chance=(
            (len(chosen) - 1) / (total - 1) if total > 1 else float('nan')
        ),
        profile_corr=_mean_profile_correlation(means),
    )
    rows.append(row)
  return rows


def _mean_profile_correlation(means: np.ndarray) -> float:
  """Mean off-diagonal Pearson correlation of the rows of (K, C)."""
  if means.shape[0] < 2:
    return float('nan')
  centred = means - means.mean(1, keepdims=True)
  norms = np.linalg.norm(centred, axis=1)
  keep = norms > 0  # A constant profile has no correlation.
  if keep.sum() < 2:
    return float('nan')
  z = centred[keep] / norms[keep, None]
  corr = z @ z.T
  k = corr.shape[0]
  return float((corr.sum() - np.trace(corr)) / (k * (k - 1)))


def specificity_markdown(rows: list[dict]) -> str:
  head = '| ' + ' | '.join(SPECIFICITY_COLUMNS) + ' |'
  rule = '|---|' + '---:|' * (len(SPECIFICITY_COLUMNS) - 1)
  lines = [head, rule]
  for row in rows:
    lines.append('| ' + ' | '.join(_cell(row[c]) for c in SPECIFICITY_COLUMNS))
    lines[-1] += ' |'
  return '\n'.join(lines)


def specificity_csv(rows: list[dict]) -> str:
  lines = [','.join(SPECIFICITY_COLUMNS)]
  for row in rows:
    lines.append(','.join(_cell(row[c], csv=True) for c in SPECIFICITY_COLUMNS))
  return '\n'.join(lines) + '\n'


def _cell(value, csv: bool = False) -> str:
  if isinstance(value, float):
    return repr(value) if csv else f'{value:.4f}'
  return str(value)
