"""Figures in the style of the paper's Figs. 6 and 7 (matplotlib).

Imported only to plot: the statistics need neither matplotlib nor a
display. x is the channel index of `num_channels` evenly spaced channels
of each layer (the paper's "50 uniformly sampled channels"; whether it
spaced or drew them is not stated), y the mean gate in [0, 1].
"""

from typing import Sequence

# Figures are made without pyplot: no backend is chosen or changed (a
# notebook keeps its inline display, a server needs none) and nothing
# accumulates in pyplot's figure registry.
import matplotlib.figure
import matplotlib.ticker
import numpy as np

from se_flax.analysis.statistics import ALL, GateStatistics


def sampled_channels(num_channels: int, count: int = 50) -> np.ndarray:
  """`count` evenly spaced channel indices in [0, num_channels)."""
  if count >= num_channels:
    return np.arange(num_channels)
  return np.unique(
      np.round(np.linspace(0, num_channels - 1, count)).astype(int)
  )


def _grid(num_panels: int):
  cols = min(3, num_panels)
  rows = -(-num_panels // cols)
  fig = matplotlib.figure.Figure(figsize=(4.2 * cols, 3.0 * rows))
  axes = fig.subplots(rows, cols, squeeze=False)
  for ax in axes.flat[num_panels:]:
    ax.set_visible(False)
  return fig, list(axes.flat[:num_panels])


def _axes_style(ax, name, layer_channels, gate_range):
  ax.set_title(name)
  ax.set_xlabel(f'channel index (of {layer_channels})')
  ax.set_ylabel('mean activation')
  ax.set_ylim(*gate_range)
  ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  ax.grid(alpha=0.3)


def class_means_figure(
    stats: GateStatistics,
    layers: Sequence[str],
    classes: Sequence[int],
    *,
    num_channels: int = 50,
    include_all: bool = True,
    gate_range=(0.0, 1.0),
):
  """Fig. 6: per layer, one line per class (mean gate) plus 'all'.

  Classes without examples are left out of the plot (the legend says so).
  Returns the matplotlib Figure.
  """
  fig, axes = _grid(len(layers))
  for ax, name in zip(axes, layers):
    s = stats.layers[name]
    channels = sampled_channels(s.num_channels, num_channels)
    for k in classes:
      label = stats.class_label(k)
      if s.count[k] == 0:
        ax.plot([], [], label=f'{label}: no examples')
        continue
      ax.plot(channels, s.mean[k, channels], lw=1.2, label=label)
    if include_all:
      pooled = s.pooled()
      if pooled.count[0]:
        ax.plot(
            channels,
            pooled.mean[0, channels],
            'k--',
            lw=1.2,
            label=f'{ALL} ({pooled.count[0]} images)',
        )
    _axes_style(ax, name, s.num_channels, gate_range)
  axes[0].legend(fontsize=7, loc='lower left')
  fig.suptitle('Mean SE activation per class (cf. paper Fig. 6)')
  fig.tight_layout()
  return fig


def class_band_figure(
    stats: GateStatistics,
    layers: Sequence[str],
    k: int,
    *,
    num_channels: int = 50,
    gate_range=(0.0, 1.0),
):
  """Fig. 7: per layer, class k's mean gate with a +-1 std band.

  Raises ValueError when the class has no examples.
  """
  first = stats.layers[layers[0]]
  if first.count[k] == 0:
    raise ValueError(f'{stats.class_label(k)} has no examples to plot')
  fig, axes = _grid(len(layers))
  for ax, name in zip(axes, layers):
    s = stats.layers[name]
    channels = sampled_channels(s.num_channels, num_channels)
    mean, std = s.mean[k, channels], s.std()[k, channels]
    ax.plot(channels, mean, lw=1.2, label='mean')
    ax.fill_between(channels, mean - std, mean + std, alpha=0.3, label='± std')
    _axes_style(ax, name, s.num_channels, gate_range)
  axes[0].legend(fontsize=7, loc='lower left')
  fig.suptitle(
      f'{stats.class_label(k)}: {first.count[k]} images (cf. paper Fig. 7)'
  )
  fig.tight_layout()
  return fig


def save(fig, path: str, dpi: int = 120) -> None:
  fig.savefig(path, dpi=dpi)


def to_rgb_array(fig, dpi: int = 80) -> np.ndarray:
  """The figure as (H, W, 3) uint8, for TensorBoard images."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg

  fig.set_dpi(dpi)
  canvas = FigureCanvasAgg(fig)
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()
