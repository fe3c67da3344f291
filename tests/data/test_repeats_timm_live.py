"""Live comparison of se_flax.data.repeats with timm's RepeatAugSampler.

Not a CI dependency: skipped unless torch and timm import (run it in the
torch venv: /work/torch-venv/bin/python -m pytest -p no:xdist -o addopts=''
tests/data/test_repeats_timm_live.py). The committed fixtures
(test_repeats.py) cover the same code without them.

timm's sampler draws its permutation with torch.randperm from a generator
seeded with the epoch; `repeated_indices` is given that permutation and
must yield every rank's indices exactly, for fresh random (n, R, W, epoch),
for ImageNet's size, and for the committed fixture's cases.
"""

import importlib.util
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')

from se_flax.data import repeats  # pylint: disable=g-import-not-at-top


def _load_tool():
  path = os.path.join(
      os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
      'tools',
      'make_repeat_fixtures.py',
  )
  spec = importlib.util.spec_from_file_location('make_repeat_fixtures', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


tool = _load_tool()


def _check(n, r, w, epoch, selected_round=256):
  perm = tool.timm_perm(n, epoch)
  want = tool.timm_epoch(n, r, w, epoch, selected_round)
  for rank, timms in enumerate(want):
    got = repeats.repeated_indices(perm, r, rank, w, selected_round)
    np.testing.assert_array_equal(got, timms, err_msg=f'rank {rank}')
  if selected_round == repeats.SELECTED_ROUND:  # the streams' setting
    total = sum(map(len, want)) if r > 1 else n
    assert repeats.examples_per_epoch(n, r, w) == total


def test_fresh_random_cases_are_timms():
  rng = np.random.default_rng(int.from_bytes(os.urandom(4), 'little'))
  for _ in range(40):
    n = int(rng.integers(1, 5000))
    r = int(rng.integers(1, 6))
    w = int(rng.choice([1, 2, 3, 4, 5, 8, 16]))
    round_ = int(rng.choice([0, 64, 256]))
    epoch = int(rng.integers(0, 1000))
    print(n, r, w, epoch, round_)
    _check(n, r, w, epoch, round_)


@pytest.mark.parametrize('w', [1, 8])
def test_imagenet_size_is_timms(w):
  # The last rank: its tail is where timm's wrap and the rounding meet.
  n, r, epoch = 1_281_167, 3, 17
  perm = tool.timm_perm(n, epoch)
  sampler = timm.data.distributed_sampler.RepeatAugSampler(
      range(n), num_replicas=w, rank=w - 1, num_repeats=r
  )
  sampler.set_epoch(epoch)
  want = np.fromiter(iter(sampler), np.int64)
  np.testing.assert_array_equal(
      repeats.repeated_indices(perm, r, w - 1, w), want
  )
  assert repeats.examples_per_epoch(n, r, w) == len(want) * w == 1_281_024


def test_the_committed_fixture_is_timms_today():
  """The fixture's cases rerun in the installed timm."""
  fixtures = os.path.join(
      os.path.dirname(os.path.dirname(__file__)), 'fixtures', 'repeats'
  )
  with open(os.path.join(fixtures, 'cases.json')) as f:
    cases = json.load(f)['cases']
  with np.load(os.path.join(fixtures, 'cases.npz')) as z:
    for c in cases:
      args = (c['n'], c['num_repeats'], c['num_replicas'], c['epoch'])
      args += (c['selected_round'],)
      np.testing.assert_array_equal(
          z[f'{c["name"]}/perm'], tool.timm_perm(c['n'], c['epoch'])
      )
      for rank, want in enumerate(tool.timm_epoch(*args)):
        np.testing.assert_array_equal(z[f'{c["name"]}/rank{rank}'], want)
