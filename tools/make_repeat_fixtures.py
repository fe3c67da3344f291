"""Generates tests/fixtures/repeats/: timm's RepeatAugSampler epochs.

Needs torch and timm (no TensorFlow; se_flax.data.repeats is TF-free)::

  /work/torch-venv/bin/python tools/make_repeat_fixtures.py

For each case (n, R, W, epoch, selected_round) timm's `RepeatAugSampler`
is run for every rank r < W on a dataset of n items; its permutation is
torch.randperm(n) from a generator seeded with the epoch, as
`RepeatAugSampler.__iter__` draws it (`timm_perm`).

Writes ``cases.json`` (the cases, versions) and ``cases.npz``: per case
``{case}/perm`` int64 [n] and ``{case}/rank{r}`` int64 [timm's len], the
indices timm's sampler yields for rank r.
tests/data/test_repeats_timm_live.py imports `timm_epoch` from here.
"""

import json
import os

import numpy as np
import timm
from timm.data import distributed_sampler
import torch

OUT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    'tests',
    'fixtures',
    'repeats',
)

# (n, R, W, epoch, selected_round): n below, at and above 256 and not a
# multiple of it; W = 1, 2, 3, 8; R = 1 (timm's degenerate case) to 4;
# a W that does not divide n R (padding by wrapping); rounding off / 128.
CASES = (
    (10, 3, 1, 0, 256),
    (10, 3, 8, 1, 256),  # n R / W < 4: few samples, much padding
    (255, 2, 2, 0, 256),
    (256, 3, 3, 2, 256),
    (257, 3, 8, 0, 256),
    (1000, 3, 1, 5, 256),
    (1000, 3, 3, 0, 256),
    (1283, 3, 8, 7, 256),
    (1283, 2, 3, 1, 256),
    (1283, 4, 2, 3, 256),
    (777, 1, 2, 0, 256),
    (777, 3, 8, 2, 0),
    (777, 3, 3, 4, 128),
    (5, 3, 8, 0, 256),  # fewer items than ranks
    # Where the last ranks' samples wrap to the start (timm's padding):
    (10, 1, 3, 0, 256),
    (100, 1, 8, 1, 0),
    (1, 2, 8, 0, 256),
    (3, 2, 8, 2, 256),
)


def case_name(n, r, w, epoch, selected_round) -> str:
  return f'n{n}_r{r}_w{w}_e{epoch}_s{selected_round}'


def timm_perm(n: int, epoch: int) -> np.ndarray:
  """int64 [n]: the permutation timm's sampler draws for `epoch`."""
  g = torch.Generator()
  g.manual_seed(epoch)
  return torch.randperm(n, generator=g).numpy().astype(np.int64)


def timm_epoch(n, r, w, epoch, selected_round) -> list:
  """Every rank's epoch from timm's RepeatAugSampler: int64 [len] each."""
  out = []
  for rank in range(w):
    sampler = distributed_sampler.RepeatAugSampler(
        range(n),
        num_replicas=w,
        rank=rank,
        num_repeats=r,
        selected_round=selected_round,
    )
    sampler.set_epoch(epoch)
    got = np.array(list(sampler), np.int64)
    assert len(got) == len(sampler)
    out.append(got)
  return out


def main():
  os.makedirs(OUT, exist_ok=True)
  arrays, cases = {}, []
  for case in CASES:
    name = case_name(*case)
    arrays[f'{name}/perm'] = timm_perm(case[0], case[3])
    for rank, got in enumerate(timm_epoch(*case)):
      arrays[f'{name}/rank{rank}'] = got
    n, r, w, epoch, selected_round = case
    cases.append(
        dict(
            name=name,
            n=n,
            num_repeats=r,
            num_replicas=w,
            epoch=epoch,
            selected_round=selected_round,
        )
    )
  meta = {
      'versions': {'timm': timm.__version__, 'torch': torch.__version__},
      'cases': cases,
  }
  np.savez_compressed(os.path.join(OUT, 'cases.npz'), **arrays)
  with open(os.path.join(OUT, 'cases.json'), 'w') as f:
    json.dump(meta, f, indent=1)
  for f in ('cases.npz', 'cases.json'):
    print(f, os.path.getsize(os.path.join(OUT, f)), 'bytes')


if __name__ == '__main__':
  main()
