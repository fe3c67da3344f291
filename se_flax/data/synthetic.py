"""Synthetic batches for benchmarks and smoke runs: numpy only, no TF.

Same batch format as `pipeline.create_train_iterator` / the eval iterator.
Each *global* batch is a function of (seed, step) alone and every process
takes its slice, so runs on one or many processes see the same data. A few
distinct batches are made once and cycled: making pixels must cost nothing
next to the step being measured.
"""

import itertools
from typing import Dict, Iterator

import numpy as np

_POOL = 4  # Distinct training batches; enough to defeat caching.


def _local_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size % process_count:
    raise ValueError(
        f'global_batch_size={global_batch_size} is not divisible by '
        f'process_count={process_count}.'
    )
  return global_batch_size // process_count


def _global_batch(
    seed: int, index: int, batch: int, image_size: int, num_classes: int
) -> Dict[str, np.ndarray]:
  rng = np.random.default_rng([seed, index])
  return {
      'image': rng.integers(
          0, 256, (batch, image_size, image_size, 3), dtype=np.uint8
      ),
      'label': rng.integers(0, num_classes, (batch,), dtype=np.int32),
  }


def _slice(
    batch: Dict[str, np.ndarray], process_index: int, local: int
) -> Dict[str, np.ndarray]:
  return {
      k: v[process_index * local : (process_index + 1) * local]
      for k, v in batch.items()
  }


def create_synthetic_iterator(
    *,
    global_batch_size: int,
    image_size: int,
    num_classes: int,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[Dict[str, np.ndarray]]:
  """Yields this process's slice of synthetic global batches, forever.

  Args:
    global_batch_size: examples per step over all processes.
    image_size: side of the square images, pixels.
    num_classes: labels are drawn from [0, num_classes).
    seed: with the step, determines the global batch.
    start_step: global step of the first batch (for resumed runs).
    process_index: this process, in [0, process_count).
    process_count: number of processes; must divide global_batch_size.

  Yields:
    {'image': uint8 [B, image_size, image_size, 3] NHWC,
     'label': int32 [B]} with B = global_batch_size // process_count.
  """
  local = _local_size(global_batch_size, process_count)  # Raises now.
  pool = [
      _slice(
          _global_batch(seed, i, global_batch_size, image_size, num_classes),
          process_index,
          local,
      )
      for i in range(_POOL)
  ]
  return (pool[step % _POOL] for step in itertools.count(start_step))


def create_synthetic_eval(
    *,
    num_examples: int,
    global_batch_size: int,
    image_size: int,
    num_classes: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[Dict[str, np.ndarray]]:
  """One pass over a synthetic eval split of `num_examples`, padded.

  Yields the eval format: 'image', 'label' and 'mask' (False on the padding
  of the last global batch).
  """
  local = _local_size(global_batch_size, process_count)  # Raises now.

  def batches():
    for i, start in enumerate(range(0, num_examples, global_batch_size)):
      batch = _global_batch(
          seed + 1, i, global_batch_size, image_size, num_classes
      )
      batch['mask'] = np.arange(start, start + global_batch_size) < num_examples
      yield _slice(batch, process_index, local)

  return batches()
