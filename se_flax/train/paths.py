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


def write_text_atomic(path: epath.Path, text: str) -> None:
  """Readers never see a half-written file (object stores: whole objects)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  if is_url(path):
    path.write_text(text)  # An object appears whole or not at all.
    return
  tmp = path.parent / (path.name + '.tmp')
  tmp.write_text(text)
  tmp.replace(path)
