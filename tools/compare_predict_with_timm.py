"""timm's and se_flax's top-5 on real photographs, side by side, from the
same Hub files that timm itself writes; and what loading and a first
prediction cost through `python -m se_flax.predict`.

Needs torch + timm (+ matplotlib / scikit-image for the photographs), in a
venv with se_flax installed but without TensorFlow:

  /root/torchvenv/bin/python tools/compare_predict_with_timm.py \
      --tag seresnet50.a1_in1k [--python .venv/bin/python]

The weights are timm's random initialisation (BN statistics randomised;
no trained weights are downloadable here); timm's `save_for_hf` writes
model.safetensors + config.json, which go into a fresh Hub cache (HF_HOME)
read offline by both libraries. `--python` runs the se_flax command under
another interpreter (e.g. the project venv, without torch).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--tag', default='seresnet50.a1_in1k')
  parser.add_argument('--python', default=sys.executable)
  args = parser.parse_args()
  home = tempfile.mkdtemp(prefix='hf_home_')
  os.environ.update(HF_HOME=home, HF_HUB_OFFLINE='1')

  import matplotlib
  import skimage.data
  import timm
  import torch
  from PIL import Image

  from tests import timm_reference

  images = [
      os.path.join(
          matplotlib.get_data_path(), 'sample_data', 'grace_hopper.jpg'
      ),
      os.path.join(skimage.data.data_dir, 'chelsea.png'),
      os.path.join(skimage.data.data_dir, 'coffee.png'),
  ]
  arch, _, tag = args.tag.partition('.')
  repo = timm_reference.cache_random_model(
      arch,
      tag,
      saved_dir=tempfile.mkdtemp(prefix='timm_saved_'),
      cache_dir=os.path.join(home, 'hub'),
  )
  reference = timm.create_model(f'hf-hub:{repo}', pretrained=True).eval()
  transform = timm.data.create_transform(
      **timm.data.resolve_data_config(model=reference, use_test_size=True)
  )
  with torch.no_grad():
    x = torch.stack([transform(Image.open(p).convert('RGB')) for p in images])
    timm_probs = torch.softmax(reference(x), -1).numpy()

  env = dict(os.environ, JAX_PLATFORMS='cpu')
  started = time.perf_counter()
  run = subprocess.run(
      [
          args.python,
          '-m',
          'se_flax.predict',
          '--pretrained',
          args.tag,
          '--json',
          *images,
      ],
      env=env,
      capture_output=True,
      text=True,
      check=False,
  )
  wall = time.perf_counter() - started
  if run.returncode:
    sys.exit(run.stderr)
  rows = [json.loads(line) for line in run.stdout.splitlines()]
  info = timm.data.ImageNetInfo()
  for path, probs, row in zip(images, timm_probs, rows):
    print(f"\n{os.path.basename(path)} ({args.tag}, timm's random init)")
    print(f'  {"timm":>44}    {"se_flax":>44}')
    top = probs.argsort()[::-1][:5]
    for i, ours in zip(top, row['top_k']):
      name = info.index_to_description(i).split(',')[0]
      mine = (ours['description'] or '').split(',')[0]
      print(
          f'  {name[:32]:>32} {probs[i]:.6f}    '
          f'{mine[:32]:>32} {ours["probability"]:.6f}'
      )
  print(
      f'\npython -m se_flax.predict, {len(images)} images, own process '
      f'(import, Hub-cache load, conversion, compile, predict): {wall:.1f} s'
  )
  load = subprocess.run(
      [
          args.python,
          '-c',
          (
              'import time, se_flax; from se_flax import predict\n'
              't = time.perf_counter()\n'
              f'p = se_flax.load_pretrained({args.tag!r})\n'
              't1 = time.perf_counter()\n'
              f'predict.predict(p, [{images[0]!r}])\n'
              't2 = time.perf_counter()\n'
              f'predict.predict(p, [{images[0]!r}])\n'
              't3 = time.perf_counter()\n'
              'print(f"load_pretrained {t1 - t:.2f} s, first predict (compile) '
              '{t2 - t1:.2f} s, second predict {t3 - t2:.2f} s")'
          ),
      ],
      env=env,
      capture_output=True,
      text=True,
      check=False,
  )
  print(load.stdout.strip() or load.stderr[-2000:])


if __name__ == '__main__':
  main()
