"""Multi-host runs: starting `jax.distributed`, and agreement between the
processes.

Start-up (`initialize_distributed`) must run before anything asks JAX about
devices. The other functions are collective: all processes must call them,
in the same order; with one process each is a no-op on its argument, so
single-host code pays nothing.
"""

import importlib.util
import os
from typing import Mapping, Optional, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging


def _on_tpu_vm() -> bool:
  """A TPU VM (TPU chips on the PCI bus and libtpu installed)."""
  if importlib.util.find_spec('libtpu') is None:
    return False
  try:  # Reads /sys only; starts no backend.
    from jax._src import hardware_utils

    return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
  except Exception:  # pylint: disable=broad-except
    return False


def launcher(
    config: ml_collections.ConfigDict, env: Optional[Mapping[str, str]] = None
) -> Optional[str]:
  """What asks for a multi-process run, or None for a single process.

  `config.distributed.enabled` decides when set; unset, a run is
  multi-process when the config or JAX_COORDINATOR_ADDRESS names a
  coordinator, under SLURM or Open MPI with more than one task, or on a
  TPU VM (where `jax.distributed` finds its peers itself).
  """
  env = os.environ if env is None else env
  dist = config.distributed
  if dist.enabled is not None:
    return 'config.distributed.enabled' if dist.enabled else None
  if dist.coordinator_address or dist.num_processes > 0:
    return 'config.distributed fields'
  if env.get('JAX_COORDINATOR_ADDRESS'):
    return 'JAX_COORDINATOR_ADDRESS'
  if 'SLURM_JOB_ID' in env and int(env.get('SLURM_NTASKS', '1')) > 1:
    return 'SLURM'
  if int(env.get('OMPI_COMM_WORLD_SIZE', '1')) > 1:
    return 'Open MPI'
  if _on_tpu_vm():
    return 'TPU VM'
  return None


def initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """Starts `jax.distributed` when the run is multi-process; idempotent.

  Unset fields are filled by JAX: from JAX_COORDINATOR_ADDRESS /
  JAX_NUM_PROCESSES / JAX_PROCESS_ID, or from the cluster (SLURM, Open
  MPI, TPU VMs). Devices: `distributed.local_device_ids` 'all' makes every
  local GPU visible to the process (one process per node); a list '0,1'
  those; unset keeps JAX's default, which under SLURM is the GPU of
  SLURM_LOCALID (one process per GPU). JAX_LOCAL_DEVICE_IDS is the
  environment form of a list.
  """
  dist = config.distributed
  source = launcher(config)
  if source is None or jax.distributed.is_initialized():
    return
  if dist.cpu_collectives:
    jax.config.update(
        'jax_cpu_collectives_implementation', dist.cpu_collectives
    )
  env = os.environ
  kwargs = {'heartbeat_timeout_seconds': dist.heartbeat_timeout_seconds}
  address = dist.coordinator_address or env.get('JAX_COORDINATOR_ADDRESS')
  num = (
      dist.num_processes
      if dist.num_processes >= 0
      else int(env.get('JAX_NUM_PROCESSES', -1))
  )
  pid = (
      dist.process_id
      if dist.process_id >= 0
      else int(env.get('JAX_PROCESS_ID', -1))
  )
  if address:
    kwargs['coordinator_address'] = address
  if num >= 0:
    kwargs['num_processes'] = num
  if pid >= 0:
    kwargs['process_id'] = pid
  ids = dist.local_device_ids or env.get('JAX_LOCAL_DEVICE_IDS')
  if ids == 'all':
    # An empty list is "set" for JAX's cluster detection (so it does not
    # pick SLURM_LOCALID) and restricts nothing.
    kwargs['local_device_ids'] = []
  elif ids:
    kwargs['local_device_ids'] = [int(i) for i in str(ids).split(',')]
  logging.info('Starting jax.distributed (%s): %s', source, kwargs)
  jax.distributed.initialize(**kwargs)


def layout() -> str:
  """One line: this process, the processes, and the devices it drives."""
  visible = jax.config.read('jax_cuda_visible_devices')
  return (
      f'process {jax.process_index()}/{jax.process_count()}, '
      f'{jax.local_device_count()} local of {jax.device_count()} '
      f'devices ({jax.default_backend()}): {jax.local_devices()}'
      + (f', CUDA visible devices {visible}' if visible != 'all' else '')
  )


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

  return np.asarray(
      multihost_utils.process_allgather(np.array(flag)), bool
  ).reshape(-1)


def any_process(flag: bool) -> bool:
  return bool(np.any(gather_flags(flag)))


def broadcast_ints(values: Sequence[int]) -> list[int]:
  """Process 0's `values` on every process."""
  if jax.process_count() == 1:
    return list(values)
  from jax.experimental import multihost_utils

  count = int(multihost_utils.broadcast_one_to_all(np.int32(len(values))))
  local = np.zeros(count, np.int64)
  local[: min(count, len(values))] = list(values)[:count]
  return [int(v) for v in multihost_utils.broadcast_one_to_all(local)]
