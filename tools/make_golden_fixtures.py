"""Generates the golden-logit fixtures in ``tests/fixtures/golden/``.

Needs PyTorch and timm, which are not project dependencies; CI never runs
this. Use a separate virtualenv, e.g.::

  python3 -m venv /work/timm_venv
  /work/timm_venv/bin/pip install torch torchvision timm numpy safetensors
  /work/timm_venv/bin/python tools/make_golden_fixtures.py [--models a b]

For every model, the timm state-dict keys are filled with
``se_flax.testing.random_state_dict(keys, seed)``, the model is run in eval
mode on ``random_images(seed, batch, size)`` (NCHW) for each input size, in
float32 and in float64, and two files are written:

* ``{name}.json``: versions, seed, batch, input sizes, the key list
  ``[[key, shape, dtype], ...]``, fingerprints of the weights and images,
  per-size statistics and the timm pretrained_cfg facts (documentation only).
* ``{name}.npz``: ``logits_{size}`` = float64 logits cast to float32 (the
  reference) and ``logits_fp32_{size}`` = timm's float32 logits; each
  ``(batch, num_classes)``.
"""

import argparse
import importlib.util
import json
import os
import sys
import time

import numpy as np
import timm
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_testing():
  # Load by path: se_flax/__init__.py may import JAX, absent from this venv.
  path = os.path.join(ROOT, 'se_flax', 'testing.py')
  spec = importlib.util.spec_from_file_location('se_flax_testing', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


testing = _load_testing()

MODELS = (
    'resnet18 resnet34 resnet50 resnet101 resnet152 resnext50_32x4d '
    'resnext101_32x4d seresnet18 seresnet34 seresnet50 seresnet101 '
    'seresnet152 seresnext50_32x4d seresnext101_32x4d legacy_seresnet18 '
    'legacy_seresnet34 legacy_seresnet50 legacy_seresnet101 '
    'legacy_seresnet152 legacy_seresnext26_32x4d legacy_seresnext50_32x4d '
    'legacy_seresnext101_32x4d legacy_senet154 senet154 inception_resnet_v2 '
    'vgg16_bn mobilenetv1_100'
).split()

# One even and one odd size per model. 64 makes the legacy ceil-mode maxpool
# pad (32 -> 16); 65 leaves a 3x3 final grid in timm resnets (2x2 in legacy).
DEFAULT_SIZES = (64, 65)
SIZES = {
    # Valid (unpadded) convs need >= 75 px; 128 / 139 leave a 2x2 / 3x3 grid.
    'inception_resnet_v2': (128, 139),
    # 65 -> 2x2 features, upsampled to 7x7 by adaptive_avg_pool2d in
    # ConvMlp; 256 -> 8x8 features, fc1 (7x7 valid conv) gives 2x2 -> pool.
    'vgg16_bn': (65, 256),
}
CFG_FACTS = (
    'input_size',
    'test_input_size',
    'mean',
    'std',
    'interpolation',
    'crop_pct',
    'test_crop_pct',
    'crop_mode',
    'pool_size',
    'first_conv',
    'classifier',
    'hf_hub_id',
    'tag',
)
MAX_LOGIT = 1e3


def _jsonable(value):
  if isinstance(value, (tuple, list)):
    return [_jsonable(v) for v in value]
  return value


def _dump_json(meta, path):
  # One state-dict key per line keeps the file small and diffable.
  keys = meta.pop('keys')
  text = json.dumps(meta, indent=1)
  key_lines = ',\n'.join('  ' + json.dumps(k) for k in keys)
  text = text[:-2] + ',\n "keys": [\n' + key_lines + '\n ]\n}\n'
  json.loads(text)  # sanity
  with open(path, 'w') as f:
    f.write(text)


def make_fixture(name, seed, batch, sizes, out_dir):
  t0 = time.time()
  model = timm.create_model(name, pretrained=False, num_classes=1000)
  model.eval()
  key_shapes = [
      (k, list(v.shape), str(v.dtype).replace('torch.', ''))
      for k, v in model.state_dict().items()
  ]
  weights = testing.random_state_dict(key_shapes, seed)
  model.load_state_dict(
      {k: torch.from_numpy(v) for k, v in weights.items()}, strict=True
  )
  images = {s: testing.random_images(seed, batch, s) for s in sizes}

  with torch.no_grad():
    fp32 = {s: model(torch.from_numpy(x)).numpy() for s, x in images.items()}
    model.double()
    fp64 = {
        s: model(torch.from_numpy(x).double()).numpy()
        for s, x in images.items()
    }

  stats = {}
  arrays = {}
  for s in sizes:
    ref, low = fp64[s], fp32[s].astype(np.float64)
    max_abs = float(np.abs(ref).max())
    stats[str(s)] = {
        'max_abs_logit': max_abs,
        'std_logit': float(ref.std()),
        'fp32_vs_fp64_rel_diff': float(np.abs(low - ref).max() / max_abs),
        'argmax': [int(i) for i in ref.argmax(-1)],
        # How much the logits depend on the image (vs. biases / BN shifts).
        'image0_vs_image1_rel_diff': float(
            np.abs(ref[0] - ref[-1]).max() / max_abs
        ),
        'images_fingerprint': testing.state_dict_fingerprint({'x': images[s]}),
    }
    arrays[f'logits_{s}'] = ref.astype(np.float32)
    arrays[f'logits_fp32_{s}'] = fp32[s].astype(np.float32)

  cfg = dict(model.pretrained_cfg)
  meta = {
      'model': name,
      'timm_version': timm.__version__,
      'torch_version': torch.__version__,
      'numpy_version': np.__version__,
      'seed': seed,
      'num_classes': 1000,
      'batch': batch,
      'input_sizes': list(sizes),
      'layout': 'images are NCHW from se_flax.testing.random_images',
      'reference': 'logits_{size}: float64 timm eval() logits cast to '
      'float32; logits_fp32_{size}: timm float32 logits',
      'num_params': int(sum(p.numel() for p in model.parameters())),
      'weights_fingerprint': testing.state_dict_fingerprint(weights),
      'stats': stats,
      'pretrained_cfg': {k: _jsonable(cfg[k]) for k in CFG_FACTS if k in cfg},
      'keys': [list(k) for k in key_shapes],
  }
  os.makedirs(out_dir, exist_ok=True)
  _dump_json(meta, os.path.join(out_dir, f'{name}.json'))
  np.savez_compressed(os.path.join(out_dir, f'{name}.npz'), **arrays)
  return {
      'name': name,
      'keys': len(key_shapes),
      'sizes': list(sizes),
      'max_abs': max(v['max_abs_logit'] for v in stats.values()),
      'rel': max(v['fp32_vs_fp64_rel_diff'] for v in stats.values()),
      'img': min(v['image0_vs_image1_rel_diff'] for v in stats.values()),
      'secs': time.time() - t0,
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--models', nargs='+', default=MODELS)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--batch', type=int, default=2)
  parser.add_argument(
      '--out', default=os.path.join(ROOT, 'tests', 'fixtures', 'golden')
  )
  parser.add_argument('--threads', type=int, default=1)
  args = parser.parse_args(argv)
  torch.set_num_threads(args.threads)

  rows, failed = [], []
  for name in args.models:
    if not timm.is_model(name):
      print(f'skip {name}: not in timm {timm.__version__}', flush=True)
      continue
    sizes = SIZES.get(name, DEFAULT_SIZES)
    row = make_fixture(name, args.seed, args.batch, sizes, args.out)
    rows.append(row)
    print(f"done {name} in {row['secs']:.1f}s", flush=True)
    if not row['max_abs'] < MAX_LOGIT:
      failed.append(name)

  print(
      f'\ntimm {timm.__version__}, torch {torch.__version__}, '
      f'numpy {np.__version__}, seed {args.seed}, batch {args.batch}'
  )
  print(
      f"{'model':28s} {'#keys':>6s} {'sizes':>9s} {'max|logit|':>11s} "
      f"{'fp32 vs fp64':>12s} {'img0 vs img1':>12s}"
  )
  for r in rows:
    sizes = '/'.join(str(s) for s in r['sizes'])
    print(
        f"{r['name']:28s} {r['keys']:6d} {sizes:>9s} {r['max_abs']:11.3f} "
        f"{r['rel']:12.2e} {r['img']:12.3f}"
    )
  if failed:
    print(f'max|logit| >= {MAX_LOGIT:g} for: {failed}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
