"""Writes se_flax/pretrained/timm_tags.json: timm's pretrained tags that load
into a registered se_flax model, with where timm publishes them, their
pretrained config and timm's published ImageNet top-1.

Two steps, because timm (torch) and se_flax (jax) live in separate venvs:

  # 1. with timm installed (torch venv): timm's tags and pretrained configs,
  #    and se_flax/pretrained/imagenet_classes.tsv
  /root/torchvenv/bin/python tools/make_pretrained_tags.py dump /tmp/timm_cfgs.json
  # 2. with se_flax installed: keep the tags se_flax can load, add top-1 from
  #    timm's results/results-imagenet.csv (pytorch-image-models repository)
  python tools/make_pretrained_tags.py build /tmp/timm_cfgs.json results-imagenet.csv
"""

import csv
import json
import os
import sys

_CFG_FIELDS = (
    'hf_hub_id',
    'url',
    'num_classes',
    'input_size',
    'test_input_size',
    'crop_pct',
    'test_crop_pct',
    'crop_mode',
    'interpolation',
    'mean',
    'std',
    'license',
)
_PACKAGE = os.path.join(
    os.path.dirname(__file__), '..', 'se_flax', 'pretrained'
)
_OUT = os.path.join(_PACKAGE, 'timm_tags.json')
_CLASSES = os.path.join(_PACKAGE, 'imagenet_classes.tsv')


def dump(out_path):
  import timm
  from timm.models import _registry

  tags = {}
  for name in timm.list_pretrained():
    arch, _, tag = name.partition('.')
    cfg = timm.models.get_pretrained_cfg(name).to_dict()
    entry = {k: cfg.get(k) for k in _CFG_FIELDS}
    entry['default'] = _registry._model_default_cfgs[arch].tags[0] == tag
    tags[name] = entry
  with open(out_path, 'w') as f:
    json.dump({'timm_version': timm.__version__, 'tags': tags}, f)
  print(f'{len(tags)} tags from timm {timm.__version__} -> {out_path}')
  # The ImageNet-1k classes in classifier order: synset id, then WordNet
  # lemmas (timm's label names and descriptions).
  info = timm.data.ImageNetInfo()
  with open(_CLASSES, 'w') as f:
    for i in range(info.num_classes()):
      f.write(
          f'{info.index_to_label_name(i)}\t{info.index_to_description(i)}\n'
      )
  print(
      f'{info.num_classes()} ImageNet classes -> {os.path.normpath(_CLASSES)}'
  )


def _top1(results_csv):
  """tag -> {'img_size': top-1} from timm's published results."""
  table = {}
  with open(results_csv) as f:
    for row in csv.DictReader(f):
      table.setdefault(row['model'], {})[int(row['img_size'])] = float(
          row['top1']
      )
  return table


def build(dump_path, results_csv):
  import se_flax
  from se_flax import convert

  with open(dump_path) as f:
    dumped = json.load(f)
  top1 = _top1(results_csv)
  registered = set(se_flax.list_models())
  out = {}
  for name, entry in sorted(dumped['tags'].items()):
    arch = name.partition('.')[0]
    if arch not in registered or not entry['num_classes']:
      continue  # Not an se_flax network, or a headless backbone.
    try:
      convert.key_layout(arch)
    except NotImplementedError:
      continue
    entry = dict(entry)
    entry['top1'] = {str(k): v for k, v in sorted(top1.get(name, {}).items())}
    out[name] = entry
  with open(_OUT, 'w') as f:
    json.dump(
        {'timm_version': dumped['timm_version'], 'tags': out},
        f,
        indent=1,
        sort_keys=True,
    )
    f.write('\n')
  print(f'{len(out)} tags -> {os.path.normpath(_OUT)}')


if __name__ == '__main__':
  {'dump': dump, 'build': build}[sys.argv[1]](*sys.argv[2:])
