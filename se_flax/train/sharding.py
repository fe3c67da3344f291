"""Device mesh, shardings, multi-host start-up and global batches.

Data parallelism only: a 1-D mesh with axis 'data', the batch sharded on
it and the train state replicated. Under `jax.jit` the compiler inserts the
gradient all-reduce and BatchNorm sees the global batch; there is no pmap
and no leading device axis.
"""

import collections
import os
from typing import Iterable, Iterator

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """Starts `jax.distributed` when the config asks for it.

  TPU pods find their peers by themselves (all fields unset). GPU clusters
  give the coordinator address, process count and id in the config or in
  JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID.
  """
  dist = config.distributed
  if not dist.enabled or jax.distributed.is_initialized():
    return
  if dist.cpu_collectives:
    jax.config.update('jax_cpu_collectives_implementation',
                      dist.cpu_collectives)
  env = os.environ
  address = dist.coordinator_address or env.get('JAX_COORDINATOR_ADDRESS')
  num = dist.num_processes if dist.num_processes >= 0 else int(
      env.get('JAX_NUM_PROCESSES', -1))
  pid = dist.process_id if dist.process_id >= 0 else int(
      env.get('JAX_PROCESS_ID', -1))
  kwargs = {}
  if address:
    kwargs['coordinator_address'] = address
  if num >= 0:
    kwargs['num_processes'] = num
  if pid >= 0:
    kwargs['process_id'] = pid
  jax.distributed.initialize(**kwargs)


def create_mesh() -> Mesh:
  """A 1-D mesh over every device of every process, axis 'data'."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch: dict, sharding: NamedSharding) -> dict:
  """Joins each process's slice of the global batch into global arrays."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def prefetch_to_mesh(batches: Iterable[dict], sharding: NamedSharding,
                     size: int = 2) -> Iterator[dict]:
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
