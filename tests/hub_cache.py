"""Writes a Hugging Face Hub cache the way `huggingface_hub` lays it out,
so tests go through the real client in offline mode without a network.

    <cache>/models--<org>--<name>/blobs/<sha256>
    <cache>/models--<org>--<name>/snapshots/<commit>/<file> -> ../../blobs/..
    <cache>/models--<org>--<name>/refs/<revision>   (the commit hash)
"""

import hashlib
import json
import os

import numpy as np


def add_to_cache(cache_dir, repo_id, files, revision='main'):
  """`files`: name -> bytes. Returns the snapshot directory."""
  repo = os.path.join(cache_dir, 'models--' + repo_id.replace('/', '--'))
  commit = hashlib.sha1(
      b''.join(hashlib.sha256(data).digest() for data in files.values())
  ).hexdigest()
  snapshot = os.path.join(repo, 'snapshots', commit)
  os.makedirs(os.path.join(repo, 'blobs'), exist_ok=True)
  os.makedirs(os.path.join(repo, 'refs'), exist_ok=True)
  os.makedirs(snapshot, exist_ok=True)
  for name, data in files.items():
    blob = hashlib.sha256(data).hexdigest()
    with open(os.path.join(repo, 'blobs', blob), 'wb') as f:
      f.write(data)
    link = os.path.join(snapshot, name)
    if os.path.lexists(link):
      os.remove(link)
    os.symlink(os.path.join('..', '..', 'blobs', blob), link)
  with open(os.path.join(repo, 'refs', revision), 'w') as f:
    f.write(commit)
  return snapshot


def timm_hub_files(state_dict, architecture, pretrained_cfg, **top_level):
  """timm's Hub files for a state dict: model.safetensors + config.json."""
  from safetensors.numpy import save

  config = {
      'architecture': architecture,
      'num_classes': int(pretrained_cfg.get('num_classes', 1000)),
      'pretrained_cfg': pretrained_cfg,
      **top_level,
  }
  tensors = {k: np.ascontiguousarray(v) for k, v in state_dict.items()}
  return {
      'model.safetensors': save(tensors),
      'config.json': json.dumps(config).encode(),
  }
