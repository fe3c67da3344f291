"""Workdir paths: local directories or object-store URLs (gs://, s3://).

Everything the trainer reads or writes goes through `etils.epath` (what
Orbax uses), so a gs:// workdir is written to the bucket by every process,
never to `<cwd>/gs:/...` on each VM's local disk.
"""

import json
import os
import tempfile
from typing import Any, Optional, Tuple

from etils import epath


def is_url(path) -> bool:
  return '://' in str(path)


def workdir_path(path) -> epath.Path:
  """An absolute local path, or the URL unchanged."""
  if is_url(path):
    return epath.Path(str(path))
  return epath.Path(os.path.abspath(os.fspath(path)))


def first_write_problem(path: str) -> Tuple[str, Optional[OSError]]:
  """(folder, problem): the nearest existing ancestor of local `path`,
  where writing `path` would first create something, and why that fails
  there (None if it does not). Checked before long work, by a probe
  folder made and removed (modes alone mislead: root ignores them).
  """
  folder = os.path.abspath(path)
  while not os.path.lexists(folder):
    folder = os.path.dirname(folder)
  if not os.path.isdir(folder):
    return folder, NotADirectoryError(f'{folder} is not a directory')
  try:
    os.rmdir(tempfile.mkdtemp(prefix='.se_flax_probe_', dir=folder))
  except OSError as e:
    return folder, e
  return folder, None


def read_json(path) -> Any:
  """A JSON file's value; a ValueError naming the file if it does not
  parse (a hand edit, a truncated copy)."""
  try:
    return json.loads(epath.Path(path).read_text(encoding='utf-8'))
  except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
    raise ValueError(f'{path}: not valid JSON ({e})') from None


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
