"""Agreement between the processes of a multi-host run.

Every function is collective: all processes must call it, in the same
order. With one process each is a no-op on its argument, so single-host
code pays nothing.
"""

from typing import Sequence

import jax
import numpy as np


def sync(name: str) -> None:
  """Waits until every process has reached this point."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def gather_flags(flag: bool) -> np.ndarray:
  """`flag` of every process, indexed by process (bool array)."""
  if jax.process_count() == 1:
    return np.array([flag])
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(np.array(flag)),
                    bool).reshape(-1)


def any_process(flag: bool) -> bool:
  return bool(np.any(gather_flags(flag)))


def broadcast_ints(values: Sequence[int]) -> list[int]:
  """Process 0's `values` on every process."""
  if jax.process_count() == 1:
    return list(values)
  from jax.experimental import multihost_utils
  count = int(multihost_utils.broadcast_one_to_all(np.int32(len(values))))
  local = np.zeros(count, np.int64)
  local[:min(count, len(values))] = list(values)[:count]
  return [int(v) for v in multihost_utils.broadcast_one_to_all(local)]
