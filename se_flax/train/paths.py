"""Workdir paths: local directories or object-store URLs (gs://, s3://).

Everything the trainer reads or writes goes through `etils.epath` (what
Orbax uses), so a gs:// workdir is written to the bucket by every process,
never to `<cwd>/gs:/...` on each VM's local disk.
"""

import os

from etils import epath


def is_url(path) -> bool:
  return '://' in str(path)


def workdir_path(path) -> epath.Path:
  """An absolute local path, or the URL unchanged."""
  if is_url(path):
    return epath.Path(str(path))
  return epath.Path(os.path.abspath(os.fspath(path)))


def write_atomic(path: epath.Path, data) -> None:
  """Writes `data` (str or bytes); readers never see a half-written file.

  Local files go through a temporary sibling and a rename; on object
  stores an object appears whole or not at all.
  """
  path.parent.mkdir(parents=True, exist_ok=True)
  write = 'write_bytes' if isinstance(data, bytes) else 'write_text'
  if is_url(path):
    getattr(path, write)(data)
    return
  tmp = path.parent / (path.name + '.tmp')
  getattr(tmp, write)(data)
  tmp.replace(path)
