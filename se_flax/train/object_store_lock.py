"""The workdir lock on object stores (gs://, s3://), where files cannot be
created exclusively but objects can be written conditionally.

The lock is the object `<workdir>/lock.json`, the same JSON holder record
as `workdir_lock.WorkdirLock` writes, plus `heartbeat` (unix seconds).
Every write is conditional on the object's generation (GCS's
ifGenerationMatch, through TensorStore's key-value store, which Orbax
already depends on): creating succeeds only if no lock exists, a heartbeat
or release only if the object is still the one we wrote, a takeover only
if it is still the stale record we read. So of two trainers exactly one
wins, and a holder notices when its lock was taken over.

Alive means: on the holder's own host, its pid exists with the recorded
process start time; from any other host, its last heartbeat is younger
than `stale_after_seconds` (the hosts' clocks must agree to well within
that).
"""

import json
import time
from typing import Optional

from absl import logging
import tensorstore as ts

from se_flax.train import workdir_lock


def _parse(data: bytes) -> Optional[dict]:
  try:
    record = json.loads(data)
  except ValueError:
    return None
  if (
      not isinstance(record, dict)
      or not {'host', 'pid', 'token', 'heartbeat'} <= record.keys()
  ):
    return None
  return record


class ObjectStoreLock(workdir_lock.WorkdirLock):
  """An exclusive, heartbeating lock on a workdir URL; see the module doc.

  Same interface as `WorkdirLock`: a context manager, or `acquire()` and
  `release()`; `acquire` raises `WorkdirInUseError` if a live trainer
  holds the workdir.
  """

  def __init__(
      self,
      workdir: str,
      *,
      heartbeat_seconds: float = 30.0,
      stale_after_seconds: float = 300.0,
  ):
    super().__init__(
        workdir,
        heartbeat_seconds=heartbeat_seconds,
        stale_after_seconds=stale_after_seconds,
    )
    self.workdir = workdir.rstrip('/')
    self.path = f'{self.workdir}/{workdir_lock.LOCK_NAME}'
    try:
      self._store = ts.KvStore.open(self.workdir + '/').result()
    except ValueError as e:
      raise ValueError(
          f'Cannot lock {workdir}: TensorStore has no key-value store for '
          f'this URL ({e}). Supported: gs://, s3:// and file:// URLs, or '
          'a local path.'
      ) from e
    self._generation = None  # Of the object we last wrote.
    self._held_record = None

  def _try_acquire(self, token: str) -> bool:
    current = self._store.read(workdir_lock.LOCK_NAME).result()
    if current.state == 'value':
      self._refuse_if_alive(current.value)
    record = self._record(token)
    generation = self._write(record, current.stamp.generation)
    if not generation:
      return False  # Another trainer wrote between our read and write.
    self._generation, self._held_record = generation, record
    return True

  def _remove_if_ours(self) -> bool:
    deleted = self._store.write(
        workdir_lock.LOCK_NAME, None, if_equal=self._generation
    ).result()
    return bool(deleted.generation)

  def _record(self, token: str) -> dict:
    return dict(super()._record(token), heartbeat=time.time())

  def _write(self, record: dict, if_equal: bytes) -> bytes:
    """The new generation, or b'' if the object was not at `if_equal`."""
    data = json.dumps(record, indent=1).encode() + b'\n'
    return (
        self._store.write(workdir_lock.LOCK_NAME, data, if_equal=if_equal)
        .result()
        .generation
    )

  def _refuse_if_alive(self, data: bytes) -> None:
    record = _parse(data)
    if record is None:
      # Objects appear whole: unreadable means damaged, not half-written.
      logging.warning('Taking over %s: it is not a lock record.', self.path)
      return
    age = time.time() - record['heartbeat']
    if self._alive(record, age):  # WorkdirLock's rule: pid, else heartbeat.
      raise workdir_lock.WorkdirInUseError(self.path, record, age)
    logging.warning(
        'Taking over the stale lock %s of host %s, pid %s, started %s '
        '(dead; last heartbeat %.0f s ago).',
        self.path,
        record['host'],
        record['pid'],
        record.get('start_time'),
        age,
    )

  def _holds_token(self) -> bool:
    current = self._store.read(workdir_lock.LOCK_NAME).result()
    record = _parse(current.value) if current.state == 'value' else None
    return record is not None and record['token'] == self._token

  def _beat(self) -> bool:
    record = dict(self._held_record, heartbeat=time.time())
    generation = self._write(record, self._generation)
    if generation:
      self._generation = generation
    return bool(generation)
