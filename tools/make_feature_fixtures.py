"""Generates the feature-map fixtures in ``tests/fixtures/features/``.

Needs PyTorch and timm (see tools/make_golden_fixtures.py for the venv)::

  /work/timm_venv/bin/python tools/make_feature_fixtures.py [--models a b]

The weights are those of the golden fixtures: the timm state-dict keys
filled with ``se_flax.testing.random_state_dict(keys, seed)``. They are
loaded into timm's ``features_only=True`` network (the same keys without
the classifier) and into the full classifier, which run in eval mode on
``random_images(seed, 1, size)`` in float64. Two files per model:

* ``{name}.json``: versions, seed, batch, sizes, timm's ``feature_info``
  (``num_chs``, ``reduction``, ``module``) and ``out_indices``, the key list
  and weight fingerprint, and per-size statistics (documentation only).
* ``{name}.npz``: ``features_{size}_{i}``, timm's NCHW map ``i`` as float32
  (from float64); ``pre_logits_{size}``, ``forward_head(...,
  pre_logits=True)``; and ``logits_{size}``.
"""

import argparse
import os
import sys
import time

import numpy as np
import timm
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_golden_fixtures as golden  # pylint: disable=g-import-not-at-top

testing = golden.testing

# Basic blocks in both key layouts (resnet.py `act1`, senet.py `layer0`),
# a Caffe bottleneck with groups, and the deep-stem SENet-154 twins.
MODELS = (
    'seresnet18',
    'legacy_seresnet18',
    'legacy_seresnext26_32x4d',
    'senet154',
    'legacy_senet154',
)
# 48 is even (the Caffe ceil-mode pool pads: 24 -> 12); 33 leaves odd grids
# (17 -> 9 padded, 8 in ceil mode) down to a 1x1 or 2x2 last stage.
SIZES = {
    'seresnet18': (48, 33),
    'legacy_seresnet18': (48, 33),
}
DEFAULT_SIZES = (33,)
BATCH = 1  # The stem maps dominate the file size.


def _run(features_model, model, x):
  with torch.no_grad():
    maps = features_model(x)
    pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    logits = model(x)
  return [m.numpy() for m in maps], pooled.numpy(), logits.numpy()


def make_fixture(name, seed, sizes, out_dir):
  t0 = time.time()
  model = timm.create_model(name, pretrained=False, num_classes=1000).eval()
  features_model = timm.create_model(
      name, pretrained=False, features_only=True
  ).eval()
  key_shapes = [
      (k, list(v.shape), str(v.dtype).replace('torch.', ''))
      for k, v in model.state_dict().items()
  ]
  weights = {
      k: torch.from_numpy(v)
      for k, v in testing.random_state_dict(key_shapes, seed).items()
  }
  model.load_state_dict(weights, strict=True)
  features_model.load_state_dict(
      {k: weights[k] for k in features_model.state_dict()}, strict=True
  )
  model.double()
  features_model.double()

  arrays, stats = {}, {}
  for size in sizes:
    images = testing.random_images(seed, BATCH, size)
    maps, pooled, logits = _run(
        features_model, model, torch.from_numpy(images).double()
    )
    for i, m in enumerate(maps):
      arrays[f'features_{size}_{i}'] = m.astype(np.float32)
    arrays[f'pre_logits_{size}'] = pooled.astype(np.float32)
    arrays[f'logits_{size}'] = logits.astype(np.float32)
    stats[str(size)] = {
        'shapes': [list(m.shape) for m in maps],
        'max_abs': [float(np.abs(m).max()) for m in maps],
        'images_fingerprint': testing.state_dict_fingerprint({'x': images}),
    }

  info = [
      {k: d[k] for k in ('num_chs', 'reduction', 'module')}
      for d in model.feature_info
  ]
  meta = {
      'model': name,
      'timm_version': timm.__version__,
      'torch_version': torch.__version__,
      'numpy_version': np.__version__,
      'seed': seed,
      'num_classes': 1000,
      'batch': BATCH,
      'input_sizes': list(sizes),
      'layout': 'images NCHW from se_flax.testing.random_images; '
      'features_{size}_{i} NCHW as timm returns them',
      'reference': 'float64 timm eval() outputs cast to float32',
      'feature_info': info,
      'features_only_feature_info': [
          {k: d[k] for k in ('num_chs', 'reduction', 'module')}
          for d in features_model.feature_info.get_dicts()
      ],
      'out_indices': list(features_model.feature_info.out_indices),
      'weights_fingerprint': testing.state_dict_fingerprint(
          {k: v.numpy() for k, v in weights.items()}
      ),
      'stats': stats,
      'keys': [list(k) for k in key_shapes],
  }
  os.makedirs(out_dir, exist_ok=True)
  golden._dump_json(meta, os.path.join(out_dir, f'{name}.json'))
  np.savez_compressed(os.path.join(out_dir, f'{name}.npz'), **arrays)
  return time.time() - t0


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--models', nargs='+', default=MODELS)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument(
      '--out',
      default=os.path.join(golden.ROOT, 'tests', 'fixtures', 'features'),
  )
  parser.add_argument('--threads', type=int, default=1)
  args = parser.parse_args(argv)
  torch.set_num_threads(args.threads)
  for name in args.models:
    secs = make_fixture(
        name, args.seed, SIZES.get(name, DEFAULT_SIZES), args.out
    )
    size = os.path.getsize(os.path.join(args.out, f'{name}.npz'))
    print(f'done {name} in {secs:.1f}s ({size / 1e3:.0f} kB)', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
