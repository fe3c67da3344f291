"""The paper's excitation analysis (§7.2, Figs. 6-7) as a command.

    python -m se_flax.analysis.excitation --workdir DIR \\
        --classes goldfish,pug,plane,cliff --output OUT
    python -m se_flax.analysis.excitation --pretrained seresnet50.a1_in1k \\
        --tfds-data-dir ~/tensorflow_datasets --output OUT

streams the gates of every SE block over the eval split (a workdir's own,
or the dataset given) with `gates.excitation_statistics` and writes to OUT:
- excitation.npz: the statistics (`GateStatistics.load` reads it);
- fig6_class_means.png: per layer, the mean gate of 50 evenly spaced
  channels, one line per class plus 'all' (the paper's Fig. 6);
- fig7_<class>.png: a class's mean with a +-std band (Fig. 7);
- class_specificity.md / .csv: per layer eta squared (the share of the
  gate variance the class explains), its chance level, the mean
  correlation of the class profiles, the mean gate and the share of
  saturated channels (`statistics.class_specificity`);
- quantiles.npz with --histogram-bins; TensorBoard images when CLU and
  TensorFlow are installed.

Without --classes it shows the paper's goldfish, pug, plane and cliff
that have examples in the data, then its most populous classes, 4 in all,
and says which and why (`classes.default_classes`); 'plane' is the
aircraft (airliner, n02690373), and a line says so.

Images are normalised as the weights expect: a run's by ImageNet's
mean/std (as in training), timm's by their own config's.

Expected failures (an argument out of range, an --output it cannot write,
an unknown class or layer, an unreadable source or dataset) end it with
one line naming the argument or path and the cause, exit status 2; all
but data errors found during the pass come before it.
"""

import os
import re
import time
from typing import Optional

import numpy as np

from se_flax.analysis.classes import default_classes
from se_flax.analysis.cli_checks import check_output_dir
from se_flax.analysis.cli_checks import data_of_config_file
from se_flax.analysis.cli_checks import expected_errors
from se_flax.analysis.cli_checks import int_at_least
from se_flax.analysis.classes import resolve_classes
from se_flax.analysis.gates import GateStatistics
from se_flax.analysis.gates import excitation_statistics
from se_flax.analysis.gates import figure_layers
from se_flax.analysis.gates import se_layers
from se_flax.analysis.gates import select_layers

# -- class names ---------------------------------------------------------------


def _descriptions_for(label_names) -> Optional[tuple[str, ...]]:
  """ImageNet's lemmas when the names are its 1000 synsets, else None."""
  from se_flax.pretrained import labels

  if label_names and tuple(label_names) == labels.imagenet_label_names():
    return labels.imagenet_descriptions()
  return None


def _dataset_labels(inputs, pretrained_config):
  """(label names, descriptions) of the dataset's labels, or None each.

  The statistics are per dataset label, whatever the classifier predicts:
  the dataset's names come first; the weights' own names serve only a
  dataset without names (synthetic data) whose label count they fit.
  """
  names = inputs.label_names
  descriptions = None
  if names is None and pretrained_config.label_names is not None:
    if len(pretrained_config.label_names) == inputs.num_classes:
      names = pretrained_config.label_names
      descriptions = pretrained_config.label_descriptions
  return names, descriptions or _descriptions_for(names)


def _wanted_classes(
    wanted: Optional[str], names, descriptions, num_classes: int
) -> Optional[list[int]]:
  """--classes as ids (checked before the pass), or None: the defaults,
  chosen after it from the classes that have examples."""
  if not wanted:
    return None
  ids = resolve_classes(wanted.split(','), names, descriptions)
  outside = [k for k in ids if not 0 <= k < num_classes]
  if outside:
    raise ValueError(
        f'--classes: class id(s) {outside} out of range: the dataset has '
        f'{num_classes} classes'
    )
  return ids


# -- the command -----------------------------------------------------------------

PROG = 'python -m se_flax.analysis.excitation'


def _parse_args(argv):
  import argparse

  parser = argparse.ArgumentParser(
      prog=PROG,
      description="Per-class SE gate statistics and the paper's Figs. 6-7.",
  )
  model = parser.add_mutually_exclusive_group(required=True)
  model.add_argument(
      '--workdir',
      help='a training run: its newest checkpoint and its eval '
      'data (config.json)',
  )
  model.add_argument(
      '--pretrained',
      help='anything se_flax.load_pretrained takes (a timm tag, a file); '
      'needs a dataset option below',
  )
  parser.add_argument(
      '--model-name',
      help='with --pretrained FILE (.safetensors/.pth): its architecture or '
      'timm tag, e.g. seresnet50.a1_in1k',
  )
  parser.add_argument('--output', required=True, help='directory to write')
  parser.add_argument(
      '--classes',
      help='comma-separated ids, label names or descriptions to plot; '
      "'plane' is the aircraft (airliner, n02690373) (default: the paper's "
      'goldfish,pug,plane,cliff that have examples in the data, then its '
      'most populous classes, 4 in all)',
  )
  parser.add_argument(
      '--layers', help='SE layers to analyse (default: every SE block)'
  )
  parser.add_argument(
      '--figure-layers',
      help="panels of the figures (default: the paper's: the last block of "
      'each stage and all of the last stage)',
  )
  parser.add_argument(
      '--sample-cap',
      type=int_at_least(0),
      default=50,
      help='images per class counted, the first in stream order (the '
      "paper's 50); 0: all",
  )
  parser.add_argument('--batch-size', type=int_at_least(1), default=64)
  parser.add_argument(
      '--channels', type=int_at_least(1), default=50, help='channels per panel'
  )
  parser.add_argument(
      '--histogram-bins',
      type=int_at_least(0),
      default=0,
      help='> 0: also quantiles (0.05, 0.5, 0.95) from this many bins',
  )
  data = parser.add_argument_group(
      "data (default with --workdir: the run's eval split)"
  )
  data.add_argument('--config', help='a config file whose `data` is used')
  data.add_argument(
      '--folder',
      help='image folder ROOT (ROOT/train|val/<class>/*, as for training; '
      'val/ is analysed)',
  )
  data.add_argument('--tfds-data-dir', help='TFDS data_dir with imagenet2012')
  data.add_argument(
      '--synthetic',
      type=int_at_least(1),
      metavar='N',
      help='N random-pixel images (smoke tests)',
  )
  data.add_argument('--split', help='eval split to read (TFDS)')
  return parser.parse_args(argv)


def _run_config(workdir: Optional[str]):
  """A workdir's stored config (its data fields), else base_config()."""
  from se_flax.train import config as train_config

  if workdir is None:
    return train_config.base_config()
  return train_config.load_stored(workdir)


def _data_config(args, pretrained):
  """The run's (or a new) config whose `data` describes what to read."""

  config = _run_config(args.workdir)
  if args.config:
    config.data = data_of_config_file(args.config)
  elif args.folder:
    config.data.source = 'folder'
    config.data.folder_root = os.path.abspath(args.folder)
  elif args.tfds_data_dir:
    config.data.source, config.data.data_dir = 'tfds', args.tfds_data_dir
  elif args.synthetic:
    config.data.source = 'synthetic'
    config.data.synthetic_eval_examples = args.synthetic
    config.data.synthetic_num_classes = pretrained.model.num_classes
  elif args.workdir is None:
    raise ValueError(
        '--pretrained needs a dataset: --config, --folder, --tfds-data-dir '
        'or --synthetic'
    )
  if args.pretrained:  # The weights' own eval transform.
    cfg = pretrained.config
    config.data.image_size = cfg.eval_size()
    config.data.eval_image_size = None
    config.data.crop_pct = cfg.eval_crop_pct()
    config.data.interpolation = cfg.interpolation
  if args.split:
    config.data.eval_split = args.split
  config.batch_size = config.eval_batch_size = args.batch_size
  return config


def _slug(text: str) -> str:
  return re.sub(r'[^A-Za-z0-9]+', '_', text).strip('_').lower()


def _write_tensorboard(directory, images: dict) -> bool:
  try:
    from clu import metric_writers

    writer = metric_writers.SummaryWriter(directory)
  except ImportError:
    return False
  try:
    writer.write_images(0, {k: v[None] for k, v in images.items()})
  finally:
    writer.close()
  return True


def _load_model(args):
  """(the loaded weights, the run's data config, the SE layers chosen)."""
  from se_flax import pretrained as pretrained_lib

  source = args.workdir or args.pretrained
  loaded = pretrained_lib.load_pretrained(source, model_name=args.model_name)
  config = _data_config(args, loaded)
  size = config.data.eval_image_size or config.data.image_size
  try:
    available = se_layers(loaded.model, loaded.variables, (size, size, 3))
    chosen = select_layers(
        available, args.layers.split(',') if args.layers else None
    )
  except ValueError as e:  # NoSEBlocksError too: name the weights.
    raise ValueError(f'{source}: {e}') from None
  return loaded, config, chosen


def _panels(args, chosen) -> list[str]:
  """The figures' layers, checked against the analysed ones."""
  names = [l.name for l in chosen]
  if not args.figure_layers:
    return figure_layers(names)
  panels = args.figure_layers.split(',')
  unknown = [p for p in panels if p not in names]
  if unknown:
    raise ValueError(
        f'--figure-layers {unknown} are not analysed; expected some of '
        f'{names}'
    )
  return panels


def _statistics(args, loaded, inputs, chosen, names, descriptions):
  """One pass over the eval split, timed."""
  start = time.perf_counter()
  stats = excitation_statistics(
      loaded.model,
      loaded.variables,
      inputs.eval(),
      layers=[l.name for l in chosen],
      mean=loaded.config.mean,
      std=loaded.config.std,
      sample_cap=args.sample_cap or None,
      histogram_bins=args.histogram_bins,
      num_classes=inputs.num_classes,
      label_names=names,
      label_descriptions=descriptions,
  )
  seconds = time.perf_counter() - start
  seen = int(stats.seen.sum())
  print(
      f'{seen} images ({int(stats.count.sum())} counted, cap '
      f'{stats.sample_cap}) in {seconds:.1f} s: '
      f'{1000 * seconds / max(seen, 1):.1f} s per 1,000 images (with '
      'compilation)'
  )
  empty = stats.empty_classes()
  if empty:
    print(f'{len(empty)} of {stats.num_classes} classes have no examples')
  return stats


def _write_tables(stats: GateStatistics, output: str, histogram_bins: int):
  """excitation.npz, class_specificity.{md,csv} (and quantiles.npz)."""
  from se_flax.analysis import statistics as stats_lib

  os.makedirs(output, exist_ok=True)
  stats.save(os.path.join(output, 'excitation.npz'))
  rows = stats_lib.class_specificity(stats)
  table = stats_lib.specificity_markdown(rows)
  print(table)
  with open(os.path.join(output, 'class_specificity.md'), 'w') as f:
    f.write(table + '\n')
  with open(os.path.join(output, 'class_specificity.csv'), 'w') as f:
    f.write(stats_lib.specificity_csv(rows))
  if histogram_bins:
    _write_quantiles(stats, output)


def _write_figures(stats, panels, classes, args) -> list[str]:
  """Fig. 6 and a Fig. 7 per class with examples; their names."""
  from se_flax.analysis import plots

  figures = {
      'fig6_class_means': plots.class_means_figure(
          stats, panels, classes, num_channels=args.channels
      )
  }
  for k in classes:
    if stats.count[k]:
      figures[f'fig7_{_slug(stats.class_label(k))}'] = plots.class_band_figure(
          stats, panels, k, num_channels=args.channels
      )
  images = {}
  for name, fig in figures.items():
    images[name] = plots.to_rgb_array(fig)
    plots.save(fig, os.path.join(args.output, f'{name}.png'))
  if _write_tensorboard(args.output, images):
    print(f'TensorBoard images: tensorboard --logdir {args.output}')
  return list(figures)


def _analyse(args) -> int:
  """The command; expected failures raise (main prints them)."""
  from se_flax.train.inputs import create_inputs

  check_output_dir(args.output, '--output')  # Before the long pass.
  loaded, config, chosen = _load_model(args)
  panels = _panels(args, chosen)
  inputs = create_inputs(config)  # Data errors name their path.
  names, descriptions = _dataset_labels(inputs, loaded.config)
  classes = _wanted_classes(
      args.classes, names, descriptions, inputs.num_classes
  )
  stats = _statistics(args, loaded, inputs, chosen, names, descriptions)
  if classes is None:
    classes = default_classes(stats)
  for k in classes:
    none = '' if stats.count[k] else ' (none in this data: no Fig. 7)'
    print(f'  {stats.class_label(k)}: {int(stats.count[k])} images{none}')
  _write_tables(stats, args.output, args.histogram_bins)
  figures = _write_figures(stats, panels, classes, args)
  print(
      f'Wrote {args.output}: excitation.npz, class_specificity.{{md,csv}}, '
      + ', '.join(f'{n}.png' for n in figures)
  )
  return 0


def main(argv=None) -> int:
  args = _parse_args(argv)
  from se_flax.train import cli

  cli.quiet_library_logs(verbosity=0)
  cli.install_quiet_shutdown()
  try:
    return _analyse(args)
  except expected_errors() as e:
    cli.fail(PROG, e, code=2)


def _write_quantiles(stats: GateStatistics, output: str) -> None:
  """quantiles.npz: '<layer>' -> (K, C, 3) at q = 0.05, 0.5, 0.95."""
  q = (0.05, 0.5, 0.95)
  arrays = {name: s.quantiles(q) for name, s in stats.layers.items()}
  arrays['q'] = np.asarray(q)
  np.savez_compressed(os.path.join(output, 'quantiles.npz'), **arrays)


if __name__ == '__main__':
  raise SystemExit(main())
