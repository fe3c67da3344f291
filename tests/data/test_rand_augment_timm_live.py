"""Live comparison of se_flax.data.rand_augment with timm's RandAugment.

Not a CI dependency: skipped unless timm and scikit-image import. Run it
in the torch venv (no TensorFlow there: the TF side runs in a subprocess of
the main venv, $SE_FLAX_TF_PYTHON or .venv/bin/python)::

  /work/torch-venv/bin/python -m pytest -p no:xdist -o addopts='' -s \\
      tests/data/test_rand_augment_timm_live.py

Fresh photographs (random crops of scikit-image's), fresh magnitudes and
signs, fresh policy seeds each run; -s prints the per-op differences,
against timm with bilinear (what se_flax does) and bicubic warps (timm's
default 'random' interpolation picks either per op).
"""

import importlib.util
import json
import os
import subprocess

import numpy as np
import pytest

timm = pytest.importorskip('timm')
pytest.importorskip('skimage')

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
TOOL = os.path.join(ROOT, 'tools', 'make_rand_augment_fixtures.py')
TF_PYTHON = os.environ.get(
    'SE_FLAX_TF_PYTHON', os.path.join(ROOT, '.venv', 'bin', 'python')
)
if not os.path.exists(TF_PYTHON):
  pytest.skip(f'no TF python at {TF_PYTHON}', allow_module_level=True)

_spec = importlib.util.spec_from_file_location('make_ra_fixtures', TOOL)
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)

PHOTOS = ('astronaut', 'coffee', 'chelsea', 'rocket', 'camera')


def _tf(*args):
  subprocess.run(
      [TF_PYTHON, TOOL, *args],
      check=True,
      cwd=ROOT,
      env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='2'),
  )


@pytest.mark.parametrize('size', [(224, 224), (160, 208)])
def test_ops_match_timm_on_fresh_photographs(size, tmp_path):
  seed = int.from_bytes(os.urandom(4), 'little')
  print(f'\nseed {seed}, size {size}')
  rng = np.random.default_rng(seed)
  images = tool.photos(size, PHOTOS, rng)
  increasing, _ = tool.op_names()
  cases, expected = {}, {}
  for name in increasing:
    for index, image in enumerate(images):
      magnitude, negate = float(rng.uniform(0, 10)), bool(rng.random() < 0.5)
      key = f'{name}/{index}'
      cases[key] = (name, index, magnitude, negate)
      expected[key] = {
          m: tool.timm_op(name, image, magnitude, negate, m)
          for m in ('bilinear', 'bicubic')
      }
  np.savez(tmp_path / 'in.npz', images=images, cases=json.dumps(cases))
  _tf('--tf_ops', str(tmp_path / 'in.npz'), str(tmp_path / 'out.npz'))
  ours = np.load(tmp_path / 'out.npz')
  print(f'{"op":22s} {"bilinear mean":>13s} {"max":>4s} {"bicubic mean":>13s}')
  for name in increasing:
    diffs = {
        m: np.stack(
            [
                np.abs(ours[k].astype(int) - expected[k][m].astype(int))
                for k in cases
                if k.startswith(name + '/')
            ]
        )
        for m in ('bilinear', 'bicubic')
    }
    bilinear = diffs['bilinear']
    print(
        f'{name:22s} {bilinear.mean():13.4f} {bilinear.max():4d} '
        f'{diffs["bicubic"].mean():13.4f}'
    )
    where = f'{name}, seed {seed}, size {size}: max {bilinear.max()}'
    if name in tool.GEOMETRIC:
      assert bilinear.max() <= 1 and bilinear.mean() < 0.05, where
    else:
      assert bilinear.max() == 0, where


@pytest.mark.parametrize('config_str', tool.POLICIES)
def test_policy_matches_timm_with_fresh_seeds(config_str, tmp_path):
  seed = int.from_bytes(os.urandom(4), 'little') >> 1
  theirs = tool.timm_policy(config_str, tool.POLICY_COUNT, seed)
  out = tmp_path / 'policy.json'
  _tf('--tf_policy', config_str, str(tool.POLICY_COUNT), str(seed), str(out))
  with open(out) as f:
    ours = json.load(f)
  problems = tool.policy_mismatches(ours, theirs)
  assert not problems, '\n'.join(problems)
