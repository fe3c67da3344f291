"""Repeated augmentation: timm's `RepeatAugSampler` index arithmetic.

timm (timm/data/distributed_sampler.py, from DeiT's RASampler) builds an
epoch for rank r of W from a permutation `perm` of the N examples:

  repeated = each index of perm num_repeats (R) times in a row;
  padded to total_size = ceil(N R / W) W by wrapping to its start;
  rank r takes repeated[r::W], then only its first `num_selected`, about
  floor(N / 256) 256 / W.

So an epoch is still about one dataset's worth of samples (all ranks
together), made of about N / R distinct examples, each R times, its copies
on consecutive ranks (each its own augmentation). Only integer R is
supported (timm's float-R branch is not).

The folder source (`folder.py`) uses this with replicas = processes and a
permutation shared by all processes; the TFDS source (`pipeline.py`) can
not (a process streams only its own shard through a shuffle buffer), so it
repeats within the process (`pipeline.py`). TF-free: the trainer may import
it for `examples_per_epoch`.
"""

import math

import numpy as np

SELECTED_ROUND = 256  # timm's default: the epoch is rounded down to it


def is_on(num_repeats: int) -> bool:
  """Whether config.data.repeated_augmentation asks for repeats (0, 1: off)."""
  return num_repeats > 1


def num_selected(
    n: int,
    num_repeats: int,
    num_replicas: int,
    selected_round: int = SELECTED_ROUND,
) -> int:
  """Samples per rank and epoch: timm's `num_selected_samples`.

  Args:
    n: examples in the dataset (all ranks together).
    num_repeats: R, copies of each chosen example.
    num_replicas: W, the ranks (processes).
    selected_round: the epoch's sample count (all ranks) is rounded down
      to a multiple of it when n >= it; 0 = no rounding.
  """
  num_samples = math.ceil(n * num_repeats / num_replicas)
  if selected_round and n >= selected_round:
    # timm: floor(n // round * round / ratio), the ratio being W.
    selected = (n // selected_round * selected_round) // num_replicas
  else:
    selected = math.ceil(n / num_replicas)
  return min(selected, num_samples)


def examples_per_epoch(n: int, num_repeats: int, num_replicas: int) -> int:
  """Samples per epoch over all ranks (the folder source's, with repeats).

  n itself when repeats are off; with R > 1 timm's num_selected times W,
  e.g. 1,281,024 of ImageNet's 1,281,167 images on 8 ranks.
  """
  if not is_on(num_repeats):
    return n
  return num_selected(n, num_repeats, num_replicas) * num_replicas


def slots(
    n: int,
    num_repeats: int,
    rank: int,
    num_replicas: int,
    selected_round: int = SELECTED_ROUND,
) -> np.ndarray:
  """int64 [num_selected]: which entry of the permutation each sample is.

  Sample j of rank r is repeated[(r + j W) % (n R)] = perm[that // R].
  """
  count = num_selected(n, num_repeats, num_replicas, selected_round)
  flat = rank + num_replicas * np.arange(count, dtype=np.int64)
  # total_size - 1 < n R + W, so one wrap (the % ) is timm's padding.
  return flat % (n * num_repeats) // num_repeats


def repeated_indices(
    perm: np.ndarray,
    num_repeats: int,
    rank: int,
    num_replicas: int,
    selected_round: int = SELECTED_ROUND,
) -> np.ndarray:
  """Rank `rank`'s epoch as timm's `RepeatAugSampler.__iter__` gives it.

  Args:
    perm: int [n], the epoch's permutation of the example indices (timm:
      torch.randperm(n) seeded with the epoch).
    num_repeats: R >= 1.
    rank: r in [0, num_replicas).
    num_replicas: W, the ranks (processes).
    selected_round: see `num_selected`.

  Returns:
    int [num_selected]: the example indices, in order.
  """
  perm = np.asarray(perm)
  return perm[slots(len(perm), num_repeats, rank, num_replicas, selected_round)]
