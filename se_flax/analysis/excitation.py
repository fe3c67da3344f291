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

Images are normalised as the weights expect: a run's by ImageNet's
mean/std (as in training), timm's by their own config's.
"""

import re
from typing import Optional, Sequence

import numpy as np

from se_flax.analysis.gates import GateStatistics
from se_flax.analysis.gates import NoSEBlocksError
from se_flax.analysis.gates import excitation_statistics
from se_flax.analysis.gates import figure_layers
from se_flax.analysis.gates import se_layers
from se_flax.analysis.gates import select_layers

# -- class names ---------------------------------------------------------------


def resolve_classes(
    wanted: Sequence[str],
    label_names: Optional[Sequence[str]],
    label_descriptions: Optional[Sequence[str]] = None,
) -> list[int]:
  """Class ids for names: an id ('1'), a label name ('n01443537'), a
  description or one of its comma-separated lemmas ('goldfish').

  A lemma shared by several classes (ImageNet's 'crane') is an error that
  lists them. Note ImageNet's 'plane' is the carpenter's tool (726); the
  paper's "plane" may be the airliner (404) or warplane (895).
  """
  names = [n.lower() for n in label_names or ()]
  descriptions = [d.lower() for d in label_descriptions or ()]
  lemmas = [[t.strip() for t in d.split(',')] for d in descriptions]
  num = len(names) or len(descriptions)
  ids = []
  for token in wanted:
    t = token.strip().lower()
    if t.isdigit() and (not num or int(t) < num):
      ids.append(int(t))
      continue
    tiers = (
        [k for k, n in enumerate(names) if n == t],
        [k for k, d in enumerate(descriptions) if d == t],
        [k for k, ls in enumerate(lemmas) if ls[0] == t],
        [k for k, ls in enumerate(lemmas) if t in ls],
    )
    found = next((tier for tier in tiers if tier), [])
    if len(found) == 1:
      ids.append(found[0])
    elif found:
      choices = ', '.join(
          f'{k} ({label_names[k] if label_names else ""}: '
          f'{label_descriptions[k] if label_descriptions else ""})'
          for k in found
      )
      raise ValueError(f'Class {token!r} is ambiguous: {choices}')
    else:
      known = 'no class names' if not num else f'{num} named classes'
      raise ValueError(
          f'Unknown class {token!r} (the dataset has {known}); give a class '
          'id, a label name (ImageNet: a synset id such as n01443537) or a '
          'description'
      )
  return ids


def _descriptions_for(label_names) -> Optional[tuple[str, ...]]:
  """ImageNet's lemmas when the names are its 1000 synsets, else None."""
  from se_flax.pretrained import labels

  if label_names and tuple(label_names) == labels.imagenet_label_names():
    return labels.imagenet_descriptions()
  return None


_PAPER_CLASSES = ('goldfish', 'pug', 'plane', 'cliff')


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


def _classes_to_plot(
    wanted: Optional[str], names, descriptions, num_classes: int
) -> list[int]:
  """--classes, else the paper's four where they resolve, else 0..3."""
  if wanted:
    ids = resolve_classes(wanted.split(','), names, descriptions)
  else:
    try:
      ids = resolve_classes(_PAPER_CLASSES, names, descriptions)
    except ValueError:
      ids = list(range(min(4, num_classes)))
  outside = [k for k in ids if not 0 <= k < num_classes]
  if outside:
    raise ValueError(
        f'Class id(s) {outside} out of range: the dataset has {num_classes} '
        'classes'
    )
  return ids


# -- the command -----------------------------------------------------------------


def _parse_args(argv):
  import argparse

  parser = argparse.ArgumentParser(
      prog='python -m se_flax.analysis.excitation',
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
      help='comma-separated ids, label names or descriptions to plot '
      "(default: the paper's goldfish,pug,plane,cliff where the dataset has "
      'them, else classes 0-3)',
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
      type=int,
      default=50,
      help='images per class counted, the first in stream order (the '
      "paper's 50); 0: all",
  )
  parser.add_argument('--batch-size', type=int, default=64)
  parser.add_argument(
      '--channels', type=int, default=50, help='channels per panel'
  )
  parser.add_argument(
      '--histogram-bins',
      type=int,
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
      type=int,
      metavar='N',
      help='N random-pixel images (smoke tests)',
  )
  data.add_argument('--split', help='eval split to read (TFDS)')
  return parser, parser.parse_args(argv)


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
    import importlib.util

    spec = importlib.util.spec_from_file_location('data_config', args.config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config.data = module.get_config().data
  elif args.folder:
    config.data.source, config.data.folder_root = 'folder', args.folder
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


def main(argv=None) -> int:
  import os
  import time

  parser, args = _parse_args(argv)
  from se_flax.train import cli

  cli.quiet_library_logs(verbosity=0)
  from se_flax import pretrained as pretrained_lib
  from se_flax.analysis import plots
  from se_flax.analysis import statistics as stats_lib

  source = args.workdir or args.pretrained
  try:
    loaded = pretrained_lib.load_pretrained(source, model_name=args.model_name)
    config = _data_config(args, loaded)
    size = config.data.eval_image_size or config.data.image_size
    available = se_layers(loaded.model, loaded.variables, (size, size, 3))
    chosen = select_layers(
        available, args.layers.split(',') if args.layers else None
    )
  except (NoSEBlocksError, ValueError, FileNotFoundError) as e:
    parser.exit(2, f'error: {source}: {e}\n')

  from se_flax.train.inputs import create_inputs

  try:  # Data errors (a bad folder, no prepared dataset) name their path.
    inputs = create_inputs(config)
    names, descriptions = _dataset_labels(inputs, loaded.config)
    classes = _classes_to_plot(
        args.classes, names, descriptions, inputs.num_classes
    )
  except (ValueError, FileNotFoundError) as e:
    parser.exit(2, f'error: {e}\n')
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
  for k in classes:
    print(f'  {stats.class_label(k)}: {int(stats.count[k])} images')

  os.makedirs(args.output, exist_ok=True)
  stats.save(os.path.join(args.output, 'excitation.npz'))
  rows = stats_lib.class_specificity(stats)
  table = stats_lib.specificity_markdown(rows)
  print(table)
  with open(os.path.join(args.output, 'class_specificity.md'), 'w') as f:
    f.write(table + '\n')
  with open(os.path.join(args.output, 'class_specificity.csv'), 'w') as f:
    f.write(stats_lib.specificity_csv(rows))
  if args.histogram_bins:
    _write_quantiles(stats, args.output)

  panels = (
      args.figure_layers.split(',')
      if args.figure_layers
      else figure_layers(list(stats.layers))
  )
  unknown = [p for p in panels if p not in stats.layers]
  if unknown:
    parser.exit(2, f'error: --figure-layers {unknown} were not analysed\n')
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
  print(
      f'Wrote {args.output}: excitation.npz, class_specificity.{{md,csv}}, '
      + ', '.join(f'{n}.png' for n in figures)
  )
  return 0


def _write_quantiles(stats: GateStatistics, output: str) -> None:
  """quantiles.npz: '<layer>' -> (K, C, 3) at q = 0.05, 0.5, 0.95."""
  import os

  q = (0.05, 0.5, 0.95)
  arrays = {name: s.quantiles(q) for name, s in stats.layers.items()}
  arrays['q'] = np.asarray(q)
  np.savez_compressed(os.path.join(output, 'quantiles.npz'), **arrays)


if __name__ == '__main__':
  raise SystemExit(main())
