"""Reading timm / PyTorch state dict files into numpy arrays.

`.safetensors` needs only the `safetensors` package; `.pth`/`.pt`/`.bin`
need torch. A damaged or truncated file is a ValueError naming its path.
"""

import os

import numpy as np


def to_numpy(x) -> np.ndarray:
  """A numpy array of `x`, a numpy array or a torch tensor."""
  if hasattr(x, 'detach'):  # A torch tensor, without importing torch.
    x = x.detach().cpu().numpy()
  return np.asarray(x)


def _unreadable(path: str, error: BaseException) -> ValueError:
  reason = ' '.join(str(error).split()) or type(error).__name__
  return ValueError(
      f'{path}: not a readable state dict, damaged or truncated? ({reason})'
  )


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors import SafetensorError
  from safetensors.numpy import load_file

  try:
    return load_file(path)
  except SafetensorError as e:  # A truncated file, a garbled header.
    raise _unreadable(path, e) from None


def _load_torch(path: str):
  try:
    import torch
  except ImportError as e:
    raise ImportError(
        f'Reading {path!r} needs torch; convert it to '
        '.safetensors or install torch'
    ) from e
  try:
    return torch.load(path, map_location='cpu', weights_only=True)
  except OSError:
    raise
  # Damage surfaces as RuntimeError (zip), UnpicklingError, EOFError, ...
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise _unreadable(path, e) from None


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a `.safetensors` file (numpy only) or a torch `.pth`/`.pt`/`.bin`.

  A damaged or truncated file raises ValueError naming `path`.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'No checkpoint file at {path!r}')
  if path.endswith('.safetensors'):
    return _load_safetensors(path)
  state = _load_torch(path)
  for wrapper in ('state_dict', 'model', 'state_dict_ema'):
    if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
      state = state[wrapper]
      break
  if not isinstance(state, dict):
    raise ValueError(
        f'{path}: holds a {type(state).__name__}, not a state dict '
        '(a mapping of parameter names to tensors)'
    )
  return {k.removeprefix('module.'): to_numpy(v) for k, v in state.items()}
