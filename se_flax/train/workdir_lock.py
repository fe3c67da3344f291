"""A lock file so that two trainers never run on the same workdir at once.

    with WorkdirLock(workdir):
      train(...)

The lock is `<workdir>/lock.json`, a JSON record of its holder: host, pid,
the process's start time (so that a reused pid is not taken for the
holder), wall-clock start time and a random token. A daemon thread touches
the file every `heartbeat_seconds`. A second trainer fails with
`WorkdirInUseError` while the holder is alive; a dead holder's lock is
taken over, with a warning.

Alive means: on the holder's own host, its pid exists and has the recorded
process start time (on Linux, the boot id and field 22 of
/proc/<pid>/stat); from any other host, the heartbeat (the file's mtime)
is younger than `stale_after_seconds`. The cross-host check assumes the
hosts' clocks agree to well within `stale_after_seconds`, and the
same-host check that one hostname means one pid namespace.

Multi-host runs: take one lock per run, in process 0 only (the caller
decides; this class is per-process and knows nothing of JAX).

Assumes a POSIX filesystem for the workdir: creating with O_EXCL and
`rename` must be atomic (local disks are; NFSv3+ and most cluster
filesystems are too, but not every FUSE or object-store mount). URLs
(gs://, s3://) get `object_store_lock.ObjectStoreLock`, the same protocol
on conditional object writes.
"""

import atexit
import datetime
import errno
import json
import os
import random
import secrets
import socket
import threading
import time
from typing import Optional

from absl import logging

LOCK_NAME = 'lock.json'
# An empty or unparseable lock may be a holder between creating the file
# and writing it; only this much older is it a holder that died mid-write.
_PARTIAL_GRACE_SECONDS = 10.0
# Takeover contenders that lose a rename start over; a few rounds settle
# any real contention, more would mean something else is wrong.
_MAX_ATTEMPTS = 20


class WorkdirInUseError(RuntimeError):
  """The workdir's lock is held by a live trainer."""

  def __init__(
      self,
      path: str,
      holder: Optional[dict],
      age: float,
      message: Optional[str] = None,
  ):
    self.path = path
    self.holder = holder
    if message is not None:  # Said by a process that did not read the lock.
      super().__init__(message)
      return
    if holder is None:
      who = (
          'an unknown holder (the lock file is empty or unreadable, '
          'probably still being written)'
      )
    else:
      who = (
          f"host {holder.get('host')}, pid {holder.get('pid')}, started "
          f"{holder.get('start_time')}"
      )
    super().__init__(
        f'Workdir {os.path.dirname(path)} is in use by another trainer: '
        f'{who}; lock {path}, '
        + (
            f'last heartbeat {age:.0f} s ago'
            if age >= 0
            else f"last heartbeat {-age:.0f} s in the future (the hosts' "
            'clocks disagree)'
        )
        + '. Stop that run '
        f'first, or, if you are sure it is dead, delete {path}.'
    )


def process_start(pid: int) -> Optional[str]:
  """`<boot id>:<start ticks>` of a live pid; None if gone or unknown.

  A zombie counts as gone: it is a dead holder its parent has not reaped.
  """
  try:
    with open(f'/proc/{pid}/stat', 'rb') as f:
      stat = f.read().decode('ascii', 'replace')
    with open('/proc/sys/kernel/random/boot_id') as f:
      boot_id = f.read().strip()
  except OSError:
    return None
  # The command name (field 2) may hold spaces and parentheses.
  fields = stat[stat.rfind(')') + 2 :].split()
  if fields[0] in ('Z', 'X'):
    return None
  return f'{boot_id}:{fields[19]}'  # Fields 3 on; 22 is the start time.


def _pid_exists(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except (ProcessLookupError, OverflowError, ValueError):
    return False  # No such process (or not a pid this OS can have).
  except PermissionError:
    return True  # Someone else's process, but it exists.
  return True


def _fsync_dir(path: str) -> None:
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass  # Not every filesystem syncs directories; the lock still works.
  finally:
    os.close(fd)


def _read(path: str):
  """(bytes, stat) of `path`, read through one descriptor."""
  fd = os.open(path, os.O_RDONLY)
  try:
    st = os.fstat(fd)
    chunks = []
    try:
      while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    except IsADirectoryError:
      raise IsADirectoryError(
          f'{path} is a directory, not a lock file: remove it'
      ) from None
    return b''.join(chunks), st
  finally:
    os.close(fd)


def _parse(data: bytes) -> Optional[dict]:
  try:
    record = json.loads(data)
  except ValueError:
    return None
  keys = ('host', 'pid', 'token')
  if not isinstance(record, dict) or not all(k in record for k in keys):
    return None
  return record


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
  # mtime too: a holder judged stale by its heartbeat that beats again is
  # alive after all.
  return (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns) == (
      b.st_dev,
      b.st_ino,
      b.st_size,
      b.st_mtime_ns,
  )


class WorkdirLock:
  """An exclusive, heartbeating lock on one training workdir.

  Use as a context manager, or `acquire()` and `release()`. `acquire`
  raises `WorkdirInUseError` if a live trainer holds the workdir. Also
  released at normal interpreter exit.
  """

  def __init__(
      self,
      workdir: str,
      *,
      heartbeat_seconds: float = 30.0,
      stale_after_seconds: float = 300.0,
  ):
    if heartbeat_seconds <= 0:
      raise ValueError(f'heartbeat_seconds must be > 0: {heartbeat_seconds}')
    if stale_after_seconds <= heartbeat_seconds:
      raise ValueError(
          f'stale_after_seconds ({stale_after_seconds}) must exceed '
          f'heartbeat_seconds ({heartbeat_seconds}), or live holders on '
          'other hosts look dead between beats.'
      )
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_NAME)
    self.heartbeat_seconds = heartbeat_seconds
    self.stale_after_seconds = stale_after_seconds
    self.host = socket.gethostname()
    self._token = None
    self._owner_pid = None
    self._stop = threading.Event()
    self._thread = None
    self._mutex = threading.Lock()  # Between release and the heartbeat.

  @property
  def held(self) -> bool:
    """Acquired, not released, and the file still holds our token."""
    return self._token is not None and self._holds_token()

  def __enter__(self) -> 'WorkdirLock':
    self.acquire()
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()

  def acquire(self) -> None:
    """Takes the lock, taking over a dead holder's; see the module doc."""
    if self._token is not None:
      raise RuntimeError(f'{self.path} is already held by this lock.')
    token = secrets.token_hex(16)
    for _ in range(_MAX_ATTEMPTS):
      if self._try_acquire(token):
        break
      # A contender changed the lock under us; let the winner finish.
      time.sleep(random.uniform(0.01, 0.05))
    else:
      raise RuntimeError(
          f'Could not acquire {self.path} after '
          f'{_MAX_ATTEMPTS} attempts: too much contention.'
      )
    self._token = token
    self._owner_pid = os.getpid()
    self._stop.clear()
    self._thread = threading.Thread(
        target=self._heartbeat,
        name=f'{type(self).__name__}({self.workdir})',
        daemon=True,
    )
    self._thread.start()
    atexit.register(self.release)

  def release(self) -> None:
    """Stops the heartbeat and removes the lock if it is still ours."""
    if self._token is None:
      return
    if os.getpid() != self._owner_pid:
      return  # A forked child: the lock belongs to its parent.
    self._stop.set()
    thread = self._thread
    if thread is not None and thread is not threading.current_thread():
      thread.join()
    with self._mutex:
      if not self._remove_if_ours():
        logging.warning(
            '%s no longer holds our token; left it in place.', self.path
        )
      self._token = None
      self._thread = None
    atexit.unregister(self.release)

  def _try_acquire(self, token: str) -> bool:
    """One attempt: True if ours, False to retry; raises WorkdirInUseError."""
    os.makedirs(self.workdir, exist_ok=True)
    return self._try_create(token) or self._take_over_if_stale(token)

  def _remove_if_ours(self) -> bool:
    if not self._holds_token():
      return False
    try:
      os.unlink(self.path)
    except FileNotFoundError:
      pass
    return True

  def _record(self, token: str) -> dict:
    return {
        'host': self.host,
        'pid': os.getpid(),
        'process_start': process_start(os.getpid()),
        'start_time': datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec='seconds'
        ),
        'token': token,
    }

  def _try_create(self, token: str) -> bool:
    """O_EXCL-creates our lock; False if a lock file exists."""
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    try:
      data = json.dumps(self._record(token), indent=1).encode() + b'\n'
      while data:
        data = data[os.write(fd, data) :]
      os.fsync(fd)
    except BaseException:
      os.close(fd)
      os.unlink(self.path)
      raise
    os.close(fd)
    _fsync_dir(self.workdir)
    return True

  def _alive(self, record: Optional[dict], age: float) -> bool:
    if record is None:
      return age < _PARTIAL_GRACE_SECONDS
    if record['host'] != self.host:
      return age < self.stale_after_seconds
    pid = record['pid']
    if not isinstance(pid, int) or pid <= 0:
      return False
    recorded = record.get('process_start')
    if recorded is None:
      return _pid_exists(pid)  # No start times on this OS: the pid must do.
    return process_start(pid) == recorded

  def _take_over_if_stale(self, token: str) -> bool:
    """Replaces a dead holder's lock by ours.

    Returns False if the lock changed under us (retry); raises
    WorkdirInUseError if its holder is alive.
    """
    try:
      data, st = _read(self.path)
    except FileNotFoundError:
      return False  # Released meanwhile.
    record = _parse(data)
    age = time.time() - st.st_mtime
    if self._alive(record, age):
      raise WorkdirInUseError(self.path, record, age)
    # Renaming is atomic, so of several contenders that judged the same
    # record stale exactly one moves it; the others find no file.
    moved = f'{self.path}.stale.{token}'
    try:
      os.rename(self.path, moved)
    except FileNotFoundError:
      return False
    try:
      moved_data, moved_st = _read(moved)
    except FileNotFoundError:
      return False
    if moved_data != data or not _same_file(st, moved_st):
      # Between our read and rename, someone else took over, or a late
      # heartbeat proved the holder alive: give the file back. link, unlike
      # rename, will not clobber a lock created in the meantime.
      try:
        os.link(moved, self.path)
      except FileExistsError:
        logging.error(
            'Moved a live lock %s aside while another process '
            'created a new one; its holder will find its lock gone.',
            self.path,
        )
      except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
          raise
        os.rename(moved, self.path)  # No hard links on this filesystem.
        return False
      os.unlink(moved)
      return False
    os.unlink(moved)
    if record is None:
      logging.warning(
          'Took over %s: its holder died while writing it '
          '(empty or unreadable, %.0f s old).',
          self.path,
          age,
      )
    else:
      logging.warning(
          'Took over the stale lock %s of host %s, pid %s, started %s '
          '(dead; last heartbeat %.0f s ago).',
          self.path,
          record['host'],
          record['pid'],
          record.get('start_time'),
          age,
      )
    return self._try_create(token)

  def _holds_token(self) -> bool:
    try:
      data, _ = _read(self.path)
    except FileNotFoundError:
      return False
    record = _parse(data)
    return record is not None and record['token'] == self._token

  def _heartbeat(self) -> None:
    while not self._stop.wait(self.heartbeat_seconds):
      with self._mutex:
        if self._stop.is_set():
          return
        try:
          ours = self._beat()
        except (OSError, ValueError) as e:  # TensorStore raises ValueError.
          logging.warning('Heartbeat of %s failed: %s', self.path, e)
          continue  # A transient storage error; try again next beat.
      if not ours:
        logging.error(
            'Lost the workdir lock %s: it was removed or taken '
            'over. Another trainer may be writing to %s.',
            self.path,
            self.workdir,
        )
        return

  def _beat(self) -> bool:
    """Refreshes the heartbeat; False if the lock is no longer ours."""
    if not self._holds_token():
      return False
    os.utime(self.path)
    return True
