"""Content checksums and finiteness of state pytrees, for checkpoints.

Orbax and TensorStore check the framing of what they read but not the
array bytes (a few overwritten bytes in a data file restore silently), so
every checkpoint carries a manifest: one SHA-256 per leaf of the state it
holds, computed from the values that were saved. Restoring recomputes it
from the values read back; any difference, missing leaf or extra leaf
makes the checkpoint unusable. The manifest is saved inside the same
atomic Orbax commit as the state, so the two can never disagree.

Leaves are named by their '/'-joined tree path ('params/conv1/kernel',
'opt_state/1/0/trace/fc/bias'), the same for a `TrainState` and for the
`{'params', 'batch_stats'}` dicts that `load_variables` reads.
"""

import hashlib
import jax
import numpy as np


def leaf_name(key_path) -> str:
  """'/'-joined names of a tree path: attribute, dict key or index."""
  parts = []
  for key in key_path:
    for field in ('name', 'key', 'idx'):
      if hasattr(key, field):
        parts.append(str(getattr(key, field)))
        break
    else:
      parts.append(str(key))
  return '/'.join(parts)


def host_leaves(tree) -> dict[str, np.ndarray]:
  """Leaf name -> numpy copy on this host.

  The train state is replicated, so a process's first local shard is the
  whole array even when the array spans several processes.
  """
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      leaf = leaf.addressable_shards[0].data
    out[leaf_name(path)] = np.asarray(jax.device_get(leaf))
  return out


def _digest(array: np.ndarray) -> str:
  h = hashlib.sha256(f'{array.dtype.str}{array.shape}'.encode())
  h.update(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
  return h.hexdigest()


def checksums(leaves: dict[str, np.ndarray]) -> dict[str, str]:
  """Leaf name -> SHA-256 of (dtype, shape, bytes)."""
  return {name: _digest(array) for name, array in leaves.items()}


def nonfinite(leaves: dict[str, np.ndarray]) -> list[str]:
  """Names of the floating-point leaves holding any NaN or infinity."""
  bad = []
  for name, array in leaves.items():
    if np.issubdtype(array.dtype, np.inexact) or array.dtype.name in (
        'bfloat16',
        'float8_e4m3fn',
        'float8_e5m2',
    ):
      if not np.all(np.isfinite(array.astype(np.float32))):
        bad.append(name)
  return bad


def mismatches(
    leaves: dict[str, np.ndarray],
    manifest: dict[str, str],
    partial: bool = False,
) -> list[str]:
  """What differs between `leaves` and `manifest`, one line per leaf.

  `partial`: `leaves` is a subset (a partial restore); manifest entries
  that were not read are not reported.
  """
  found = checksums(leaves)
  lines = [
      f'{name}: checksum differs'
      for name in sorted(found)
      if name in manifest and manifest[name] != found[name]
  ]
  lines += [
      f'{name}: not in the manifest'
      for name in sorted(found)
      if name not in manifest
  ]
  if not partial:
    lines += [
        f'{name}: missing' for name in sorted(manifest) if name not in found
    ]
  return lines


def summarise(lines: list[str], limit: int = 3) -> str:
  more = len(lines) - limit
  return '; '.join(lines[:limit]) + (f' (and {more} more)' if more > 0 else '')
