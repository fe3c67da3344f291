"""WorkdirLock: exclusion, stale-lock takeover and races, in real processes."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import warnings

import pytest

from se_flax.train import workdir_lock
from se_flax.train.workdir_lock import WorkdirInUseError, WorkdirLock

# Children load the module by path: `import se_flax` would import JAX,
# seconds per process on a small machine.
_PRELUDE = textwrap.dedent(f"""
    import importlib.util, os, sys, time
    spec = importlib.util.spec_from_file_location(
        'workdir_lock', {workdir_lock.__file__!r})
    wl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wl)
""")

# Holds the lock until killed.
_HOLD = _PRELUDE + textwrap.dedent("""
    lock = wl.WorkdirLock(sys.argv[1])
    lock.acquire()
    print('HELD', flush=True)
    time.sleep(60)
""")

# Acquires or fails; exits non-zero with the error if the lock is busy.
_TRY = _PRELUDE + textwrap.dedent("""
    with wl.WorkdirLock(sys.argv[1]):
      print('OK', flush=True)
""")

# Signals readiness, waits for the go file, then contends. The winner holds
# the lock for at least 1 s and until every loser has reported, so a child
# the scheduler left behind cannot come in after the release.
_RACE = _PRELUDE + textwrap.dedent("""
    workdir, signals, index, n = sys.argv[1:4] + [int(sys.argv[4])]
    open(os.path.join(signals, 'ready' + index), 'w').close()
    while not os.path.exists(os.path.join(signals, 'go')):
      time.sleep(0.002)
    try:
      with wl.WorkdirLock(workdir):
        print('OK', flush=True)
        time.sleep(1.0)
        deadline = time.time() + 20
        while (sum(f.startswith('busy') for f in os.listdir(signals)) < n - 1
               and time.time() < deadline):
          time.sleep(0.01)
    except wl.WorkdirInUseError:
      print('BUSY', flush=True)
      open(os.path.join(signals, 'busy' + index), 'w').close()
""")


def _python(code, *args, **kwargs):
  return subprocess.Popen(
      [sys.executable, '-c', code, *map(str, args)],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      **kwargs,
  )


def _write_record(workdir, **fields):
  record = {
      'host': socket.gethostname(),
      'pid': os.getpid(),
      'process_start': workdir_lock.process_start(os.getpid()),
      'start_time': '2000-01-01T00:00:00+00:00',
      'token': 'theirs',
  }
  record.update(fields)
  path = os.path.join(workdir, 'lock.json')
  with open(path, 'w') as f:
    json.dump(record, f)
  return path


def _age(path, seconds):
  past = time.time() - seconds
  os.utime(path, (past, past))


def _dead_pid():
  child = subprocess.Popen(['true'])
  child.wait()
  return child.pid


def test_second_lock_in_the_same_process_fails_until_release(tmp_path):
  workdir = str(tmp_path / 'new' / 'run')  # Created by acquire.
  first = WorkdirLock(workdir)
  first.acquire()
  assert first.held
  with open(first.path) as f:
    record = json.load(f)
  assert record['host'] == socket.gethostname()
  assert record['pid'] == os.getpid()
  assert record['start_time'].endswith('+00:00')

  with pytest.raises(WorkdirInUseError) as e:
    WorkdirLock(workdir).acquire()
  message = str(e.value)
  for part in (
      socket.gethostname(),
      str(os.getpid()),
      record['start_time'],
      first.path,
      'delete',
  ):
    assert part in message

  first.release()
  first.release()  # Idempotent.
  assert not os.path.exists(first.path)
  with WorkdirLock(workdir) as second:
    assert second.held
  assert not os.path.exists(first.path)


def test_second_process_fails_while_the_first_holds(tmp_path):
  with WorkdirLock(str(tmp_path)) as lock:
    with open(lock.path) as f:
      start_time = json.load(f)['start_time']
    out, err = _python(_TRY, tmp_path).communicate(timeout=30)
  assert 'OK' not in out
  assert 'WorkdirInUseError' in err
  for part in (
      socket.gethostname(),
      f'pid {os.getpid()}',
      start_time,
      lock.path,
  ):
    assert part in err

  child = _python(_TRY, tmp_path)  # Free again.
  assert child.communicate(timeout=30)[0] == 'OK\n'
  assert child.returncode == 0


def test_second_process_exits_non_zero(tmp_path):
  with WorkdirLock(str(tmp_path)):
    child = _python(_TRY, tmp_path)
    child.communicate(timeout=30)
  assert child.returncode != 0


def test_lock_of_a_killed_process_is_taken_over(tmp_path, caplog):
  holder = _python(_HOLD, tmp_path)
  try:
    assert holder.stdout.readline() == 'HELD\n'
    with pytest.raises(WorkdirInUseError, match=f'pid {holder.pid}'):
      WorkdirLock(str(tmp_path)).acquire()
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.communicate(timeout=30)
  assert os.path.exists(tmp_path / 'lock.json')  # Left behind.

  with caplog.at_level(logging.WARNING):
    with WorkdirLock(str(tmp_path)) as lock:
      assert lock.held
  assert f'pid {holder.pid}' in caplog.text
  assert 'Took over' in caplog.text
  assert sorted(os.listdir(tmp_path)) == []


def test_reused_pid_with_another_start_time_is_stale(tmp_path):
  _write_record(str(tmp_path))  # Our own pid and start time: alive.
  with pytest.raises(WorkdirInUseError):
    WorkdirLock(str(tmp_path)).acquire()

  _write_record(str(tmp_path), process_start='some-boot:12345')
  with WorkdirLock(str(tmp_path)) as lock:
    assert lock.held


def test_dead_pid_is_stale(tmp_path):
  _write_record(str(tmp_path), pid=_dead_pid())
  with WorkdirLock(str(tmp_path)) as lock:
    assert lock.held


def test_other_host_is_judged_by_its_heartbeat(tmp_path):
  path = _write_record(
      str(tmp_path), host='another-host.example', pid=1, process_start='x:1'
  )
  _age(path, 100)
  with pytest.raises(WorkdirInUseError, match='another-host.example'):
    WorkdirLock(str(tmp_path), stale_after_seconds=300).acquire()
  _age(path, 400)
  with WorkdirLock(str(tmp_path), stale_after_seconds=300) as lock:
    assert lock.held


def test_empty_lock_is_stale_only_after_a_grace_period(tmp_path):
  path = tmp_path / 'lock.json'
  path.write_bytes(b'')  # A holder between create and write, or dead there.
  with pytest.raises(WorkdirInUseError, match='empty or unreadable'):
    WorkdirLock(str(tmp_path)).acquire()
  _age(path, 60)
  with WorkdirLock(str(tmp_path)) as lock:
    assert lock.held


def test_exactly_one_of_racing_processes_takes_over(tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  _write_record(str(workdir), pid=_dead_pid())
  signals = tmp_path / 'signals'
  signals.mkdir()
  n = 6
  children = [_python(_RACE, workdir, signals, i, n) for i in range(n)]
  deadline = time.time() + 30
  while not all((signals / f'ready{i}').exists() for i in range(n)):
    assert time.time() < deadline, 'children did not start'
    time.sleep(0.01)
  (signals / 'go').touch()
  results = [c.communicate(timeout=30) for c in children]
  outs = sorted(out.strip() for out, _ in results)
  assert outs == ['BUSY'] * (n - 1) + ['OK'], results
  assert all(c.returncode == 0 for c in children), results
  assert os.listdir(workdir) == []  # No lock, no stale leftovers.


def test_lock_replaced_after_judging_is_put_back(tmp_path, monkeypatch):
  path = _write_record(str(tmp_path), pid=_dead_pid())
  real_read, calls = workdir_lock._read, []

  def read_then_replace(name):
    result = real_read(name)
    if not calls:  # Another contender takes over right after our read.
      calls.append(name)
      os.unlink(path)
      _write_record(str(tmp_path), token='winner')  # Alive: our pid.
    return result

  monkeypatch.setattr(workdir_lock, '_read', read_then_replace)
  with pytest.raises(WorkdirInUseError):
    WorkdirLock(str(tmp_path)).acquire()
  with open(path) as f:
    assert json.load(f)['token'] == 'winner'
  assert os.listdir(tmp_path) == ['lock.json']


def test_release_leaves_another_holders_lock(tmp_path):
  lock = WorkdirLock(str(tmp_path))
  lock.acquire()
  path = _write_record(str(tmp_path), token='someone-else')
  with open(path) as f:
    before = f.read()
  assert not lock.held
  lock.release()
  with open(path) as f:
    assert f.read() == before


def test_forked_child_does_not_release_its_parents_lock(tmp_path):
  with WorkdirLock(str(tmp_path)) as lock:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')  # JAX warns of forking its threads.
      pid = os.fork()
    if pid == 0:  # A data-loader worker, say, that cleans up and exits.
      lock.release()
      os._exit(0)
    os.waitpid(pid, 0)
    assert lock.held


def test_heartbeat_never_touches_another_holders_lock(tmp_path, caplog):
  with caplog.at_level(logging.WARNING):
    with WorkdirLock(
        str(tmp_path), heartbeat_seconds=0.05, stale_after_seconds=1.0
    ):
      path = _write_record(str(tmp_path), token='someone-else')
      _age(path, 100)
      deadline = time.time() + 5
      while 'Lost the workdir lock' not in caplog.text:
        assert time.time() < deadline, 'loss not noticed'
        time.sleep(0.05)
      assert os.stat(path).st_mtime < time.time() - 50
  assert os.path.exists(path)


def test_heartbeat_refreshes_the_mtime(tmp_path):
  with WorkdirLock(
      str(tmp_path), heartbeat_seconds=0.1, stale_after_seconds=1.0
  ) as lock:
    _age(lock.path, 100)
    deadline = time.time() + 5
    while os.stat(lock.path).st_mtime < time.time() - 50:
      assert time.time() < deadline, 'no heartbeat'
      time.sleep(0.05)


def test_bad_timings_are_refused(tmp_path):
  with pytest.raises(ValueError):
    WorkdirLock(str(tmp_path), heartbeat_seconds=0)
  with pytest.raises(ValueError):
    WorkdirLock(str(tmp_path), heartbeat_seconds=10, stale_after_seconds=5)


def test_odd_lock_files_fail_clearly_or_count_as_stale(tmp_path):
  """From the fault drill: an impossible pid is a dead holder; a lock that
  is a directory names its path; a heartbeat from a host whose clock runs
  ahead is reported as clock skew, not as a negative age."""
  _write_record(str(tmp_path), pid=2**70, process_start=None)
  with WorkdirLock(str(tmp_path)) as lock:
    assert lock.held
  os.mkdir(os.path.join(tmp_path, 'lock.json'))
  with pytest.raises(IsADirectoryError, match='lock.json is a directory'):
    WorkdirLock(str(tmp_path)).acquire()
  os.rmdir(os.path.join(tmp_path, 'lock.json'))
  path = _write_record(
      str(tmp_path), host='ahead.example', pid=1, process_start='x:1'
  )
  _age(path, -86400)
  with pytest.raises(
      WorkdirInUseError, match=r'\d+ s in the future \(the hosts\' clocks'
  ):
    WorkdirLock(str(tmp_path)).acquire()
