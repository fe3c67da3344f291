"""Device mesh, shardings and global batches.

Data parallelism only: a 1-D mesh with axis 'data', the batch sharded on
it and the train state replicated. Under `jax.jit` the compiler inserts the
gradient all-reduce and BatchNorm sees the global batch; there is no pmap
and no leading device axis.
"""

import collections
from typing import Iterable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def create_mesh() -> Mesh:
  """A 1-D mesh over every device of every process, axis 'data'."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch: dict, sharding: NamedSharding) -> dict:
  """Joins each process's slice of the global batch into global arrays."""
  return {
      k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
      for k, v in local_batch.items()
  }


def prefetch_to_mesh(
    batches: Iterable[dict], sharding: NamedSharding, size: int = 2
) -> Iterator[dict]:
  """Keeps `size` batches in flight to the devices ahead of the step."""
  queue = collections.deque()
  iterator = iter(batches)

  def enqueue(n):
    for local in iterator:
      queue.append(global_batch(local, sharding))
      if len(queue) >= n:
        return

  enqueue(size)
  while queue:
    yield queue.popleft()
    enqueue(size)
