"""Synthetic batches for benchmarks and smoke tests: numpy only, no TF.

Same batch format as `pipeline.create_train_iterator`. Pixels are random
(nothing to learn); a few batches are made once and cycled so that producing
a batch costs nothing next to the step being measured.
"""

from typing import Dict, Iterator

import numpy as np

_POOL = 4  # distinct batches per process; enough to defeat caching.


def create_synthetic_iterator(
    *,
    global_batch_size: int,
    image_size: int,
    num_classes: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[Dict[str, np.ndarray]]:
  """An endless iterator over this process's slice of synthetic batches.

  Args:
    global_batch_size: examples per step over all processes.
    image_size: side of the square images, pixels.
    num_classes: labels are drawn from [0, num_classes).
    seed: the stream is a function of (seed, process_index, step).
    process_index: this process, in [0, process_count).
    process_count: number of processes; must divide global_batch_size.

  Returns:
    An endless iterator of {'image': uint8 [B, image_size, image_size, 3]
    NHWC, 'label': int32 [B]} with B = global_batch_size // process_count.
  """
  if global_batch_size % process_count:
    raise ValueError(
        f'global_batch_size={global_batch_size} is not divisible by '
        f'process_count={process_count}.'
    )
  local = global_batch_size // process_count
  rng = np.random.default_rng([seed, process_index])
  pool = [
      {
          'image': rng.integers(
              0, 256, (local, image_size, image_size, 3), dtype=np.uint8
          ),
          'label': rng.integers(0, num_classes, (local,), dtype=np.int32),
      }
      for _ in range(_POOL)
  ]
  return _cycle(pool)


def _cycle(pool):
  step = 0
  while True:
    yield pool[step % len(pool)]
    step += 1
