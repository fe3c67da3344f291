"""Deterministic random weights and inputs for golden-logit tests.

The golden fixtures under ``tests/fixtures/golden/`` store only key names,
shapes and the logits that timm computed; the weights and images are rebuilt
here from a seed. The same arrays must therefore come out of this module in
the fixture generator (``tools/make_golden_fixtures.py``, PyTorch) and in the
tests (JAX), so it depends on numpy alone.

Every array is drawn from its own generator, seeded from ``(seed, crc32(key))``,
so a value does not depend on the order of the keys or on which other keys are
present (except for the choice of the last BN of a residual block, see
:func:`random_state_dict`).
"""

import hashlib
import re
import zlib
from typing import Dict, Iterable, Optional, Sequence, Tuple, Union

import numpy as np

KeyShape = Tuple[str, Sequence[int], str]

# Residual blocks in timm ``resnet.py`` and legacy ``senet.py``: ``layer1.0.``.
RESIDUAL_BLOCK_RE = r'(?:^|\.)layer\d+\.\d+$'
# Last BN of a residual branch, in order of preference within one block:
# ``bn3`` in bottleneck blocks, ``bn2`` in basic blocks.
LAST_BN_NAMES = ('bn3', 'bn2')

_BN_STATS = ('running_mean', 'running_var', 'num_batches_tracked')


def _rng(seed: int, name: str) -> np.random.Generator:
  return np.random.default_rng([seed, zlib.crc32(name.encode('utf-8'))])


def _split(key: str) -> Tuple[str, str]:
  prefix, _, leaf = key.rpartition('.')
  return prefix, leaf


def _last_bn_modules(
    bn_modules: Iterable[str], last_bn_names: Sequence[str], block_re: str
) -> set:
  """Returns the BN module paths that end a residual branch."""
  blocks = {}
  for module in bn_modules:
    block, _, name = module.rpartition('.')
    if re.search(block_re, block):
      blocks.setdefault(block, set()).add(name)
  last = set()
  for block, names in blocks.items():
    for name in last_bn_names:
      if name in names:
        last.add(f'{block}.{name}')
        break
  return last


def random_state_dict(
    key_shapes: Sequence[KeyShape],
    seed: int,
    last_bn_names: Sequence[str] = LAST_BN_NAMES,
    residual_block_re: str = RESIDUAL_BLOCK_RE,
) -> Dict[str, np.ndarray]:
  """Draws a random PyTorch-style state dict that keeps deep nets bounded.

  Modules are recognised from the key names alone. A BN layer is any module
  with a ``running_mean`` key. The distributions are:

  * conv / linear ``weight`` (ndim >= 2): normal, std ``sqrt(2 / fan_in)``
    with ``fan_in = prod(shape[1:])`` (grouped and 2-D weights included);
  * other ``bias``: normal, std 0.05;
  * BN ``weight``: U(0.5, 1.5), except for the last BN of a residual branch:
    U(0.1, 0.3) (otherwise 100+ layer nets produce logits around 1e6);
  * BN ``bias`` and ``running_mean``: normal, std 0.1;
  * BN ``running_var``: U(0.5, 1.5);
  * ``num_batches_tracked`` and any other integer array: zeros;
  * any other 1-D ``weight``: U(0.5, 1.5); anything else: normal, std 0.1.

  The last BN of a residual branch is found per block: a block is a module
  path matching ``residual_block_re`` (default ``layerN.M``, as in timm
  ``resnet.py`` and legacy ``senet.py``), and its last BN is the first name of
  ``last_bn_names`` (default ``bn3`` then ``bn2``) that is a BN in that block.
  Shortcut BNs (``downsample.1``) are never last. Pass ``last_bn_names=()``
  to disable the rule.

  Args:
    key_shapes: ``(key, shape, dtype)`` triples, e.g. from a timm state dict;
      dtype is a name such as ``'float32'`` or ``'int64'`` (a ``torch.``
      prefix is ignored).
    seed: base seed; each array uses ``(seed, crc32(key))``.
    last_bn_names: BN names that may end a residual branch, by preference.
    residual_block_re: regex (``re.search``) matching a residual block path.

  Returns:
    Dict from key to numpy array, in the order of ``key_shapes``. Float arrays
    are float32 whatever their dtype in ``key_shapes``.
  """
  keys = [k for k, _, _ in key_shapes]
  bn_modules = {_split(k)[0] for k in keys if _split(k)[1] == 'running_mean'}
  last_bns = _last_bn_modules(bn_modules, last_bn_names, residual_block_re)

  out = {}
  for key, shape, dtype in key_shapes:
    shape = tuple(int(s) for s in shape)
    dtype = np.dtype(str(dtype).replace('torch.', ''))
    module, leaf = _split(key)
    rng = _rng(seed, key)
    if not np.issubdtype(dtype, np.floating):
      out[key] = np.zeros(shape, dtype)
      continue
    if module in bn_modules and leaf == 'weight':
      low, high = (0.1, 0.3) if module in last_bns else (0.5, 1.5)
      value = rng.uniform(low, high, shape)
    elif module in bn_modules and leaf in ('bias', 'running_mean'):
      value = 0.1 * rng.standard_normal(shape)
    elif module in bn_modules and leaf == 'running_var':
      value = rng.uniform(0.5, 1.5, shape)
    elif leaf == 'weight' and len(shape) >= 2:
      fan_in = int(np.prod(shape[1:]))
      value = np.sqrt(2.0 / fan_in) * rng.standard_normal(shape)
    elif leaf == 'bias':
      value = 0.05 * rng.standard_normal(shape)
    elif leaf == 'weight' and len(shape) == 1:
      value = rng.uniform(0.5, 1.5, shape)
    else:
      value = 0.1 * rng.standard_normal(shape)
    out[key] = np.asarray(value, np.float32)
  return out


def random_images(
    seed: int, batch: int, size: Union[int, Tuple[int, int]], channels: int = 3
) -> np.ndarray:
  """Draws standard-normal images (about ImageNet-normalised scale).

  Args:
    seed: base seed; the draw also depends on batch, size and channels.
    batch: number of images.
    size: ``H`` (square) or ``(H, W)``.
    channels: number of channels.

  Returns:
    float32 array in **NCHW** layout, shape ``(batch, channels, H, W)``; JAX
    tests transpose it with ``x.transpose(0, 2, 3, 1)``.
  """
  h, w = (size, size) if isinstance(size, int) else size
  rng = np.random.default_rng(
      [seed, zlib.crc32(b'images'), batch, channels, h, w]
  )
  return rng.standard_normal((batch, channels, h, w)).astype(np.float32)


def state_dict_fingerprint(
    state_dict: Dict[str, np.ndarray], keys: Optional[Sequence[str]] = None
) -> str:
  """Returns a sha256 of names, shapes, dtypes and bytes of the arrays.

  Stored in the fixtures to detect a change in numpy's random streams.

  Args:
    state_dict: key to array (numpy, or anything ``np.asarray`` accepts).
    keys: keys to hash, in this order; default all, in sorted order.

  Returns:
    Hex digest.
  """
  digest = hashlib.sha256()
  for key in sorted(state_dict) if keys is None else keys:
    value = np.ascontiguousarray(np.asarray(state_dict[key]))
    digest.update(f'{key}|{value.shape}|{value.dtype.str}|'.encode('utf-8'))
    digest.update(value.tobytes())
  return digest.hexdigest()
