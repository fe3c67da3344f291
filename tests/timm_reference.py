"""timm reference models for the live tests and tools (needs torch + timm).

Imported only where torch and timm are installed (the live tests skip
first); not a CI dependency.
"""

import os
from typing import Dict, Tuple

import timm
import torch

from tests import hub_cache


def random_model(
    arch: str,
    *,
    seed: int = 0,
    bn_scale: Tuple[float, float] = (0.1, 0.5),
    **create_kwargs,
) -> torch.nn.Module:
  """timm's `arch`, randomly initialised, in eval mode, BN randomised.

  timm zero-inits some BN scales; random BN scales (uniform in bn_scale),
  biases and running statistics make every term of the network count.
  Predictions want scales near 1 ((0.5, 1.5)) so that deep networks keep
  their activations' scale; logit comparisons are fine with smaller ones.
  """
  torch.manual_seed(seed)
  model = timm.create_model(arch, pretrained=False, **create_kwargs).eval()
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(*bn_scale)
        module.bias.normal_(0, 0.1)
        module.running_mean.normal_(0, 0.1)
        module.running_var.uniform_(0.5, 1.5)
  return model


_HUB_FILES = ('config.json', 'model.safetensors')


def save_hub_files(model: torch.nn.Module, directory: str) -> Dict[str, bytes]:
  """timm's own Hub files of `model` (`save_for_hf`), written and returned."""
  timm.models._hub.save_for_hf(  # pylint: disable=protected-access
      model, directory, safe_serialization=True
  )
  files = {}
  for name in _HUB_FILES:
    with open(os.path.join(directory, name), 'rb') as f:
      files[name] = f.read()
  return files


def cache_random_model(
    arch: str, tag: str, *, saved_dir: str, cache_dir: str
) -> str:
  """Caches timm's Hub files of a random `arch` as timm/<arch>.<tag>.

  The files are also left in saved_dir (a timm Hub directory). Returns the
  repository id.
  """
  model = random_model(arch, bn_scale=(0.5, 1.5))
  repo = f'timm/{arch}.{tag}'
  hub_cache.add_to_cache(cache_dir, repo, save_hub_files(model, saved_dir))
  return repo
