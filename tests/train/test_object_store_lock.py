"""ObjectStoreLock's conditional-write protocol, on TensorStore's file://
key-value store (which honours generations as GCS and S3 do; the GCS test
server does not: see test_gcs_workdir.py)."""

import json
import threading
import time

import pytest
import tensorstore as ts

from se_flax.train import object_store_lock, workdir_lock
from se_flax.train.object_store_lock import ObjectStoreLock

from tests.train import helpers


def _url(tmp_path):
  return f'file://{tmp_path}/run'


def _stored(tmp_path):
  store = ts.KvStore.open(_url(tmp_path) + '/').result()
  return store, store.read(workdir_lock.LOCK_NAME).result()


def test_second_lock_refused_then_free_after_release(tmp_path):
  first = ObjectStoreLock(_url(tmp_path))
  first.acquire()
  assert first.held
  with pytest.raises(workdir_lock.WorkdirInUseError, match='in use by'):
    ObjectStoreLock(_url(tmp_path)).acquire()
  first.release()
  assert _stored(tmp_path)[1].state == 'missing'
  with ObjectStoreLock(_url(tmp_path)) as again:
    assert again.held


def test_live_foreign_holder_refused_stale_one_taken_over(tmp_path):
  store, _ = _stored(tmp_path)
  live = helpers.foreign_lock_record(time.time() - 5)
  store.write(workdir_lock.LOCK_NAME, live).result()
  with pytest.raises(workdir_lock.WorkdirInUseError) as refused:
    ObjectStoreLock(_url(tmp_path)).acquire()
  assert 'other-host' in str(refused.value)
  assert _stored(tmp_path)[1].value == live  # Left to its holder.
  store.write(
      workdir_lock.LOCK_NAME, helpers.foreign_lock_record(time.time() - 301)
  ).result()
  with ObjectStoreLock(_url(tmp_path)) as lock:
    record = json.loads(_stored(tmp_path)[1].value)
    assert record['token'] == lock._token and record['host'] == lock.host


def test_dead_holder_on_this_host_is_taken_over_at_once(tmp_path):
  store, _ = _stored(tmp_path)
  record = json.loads(
      helpers.foreign_lock_record(
          time.time(), host=ObjectStoreLock(_url(tmp_path)).host
      )
  )
  record['process_start'] = 'no-such-boot:1'  # Its pid was reused or died.
  store.write(workdir_lock.LOCK_NAME, json.dumps(record).encode()).result()
  with ObjectStoreLock(_url(tmp_path)) as lock:
    assert lock.held


def test_heartbeat_refreshes_and_notices_a_takeover(tmp_path):
  lock = ObjectStoreLock(
      _url(tmp_path), heartbeat_seconds=0.05, stale_after_seconds=1.0
  )
  lock.acquire()
  first = json.loads(_stored(tmp_path)[1].value)
  time.sleep(0.3)
  beat = json.loads(_stored(tmp_path)[1].value)
  assert beat['heartbeat'] > first['heartbeat']
  assert {k: v for k, v in beat.items() if k != 'heartbeat'} == {
      k: v for k, v in first.items() if k != 'heartbeat'
  }
  store, _ = _stored(tmp_path)
  store.write(
      workdir_lock.LOCK_NAME, helpers.foreign_lock_record(time.time())
  ).result()
  time.sleep(0.3)
  assert not lock.held
  assert not lock._thread.is_alive()  # The heartbeat stopped.
  lock.release()  # Leaves the new holder's lock in place.
  assert json.loads(_stored(tmp_path)[1].value)['host'] == 'other-host'


def test_racing_contenders_exactly_one_wins(tmp_path):
  results = []
  barrier = threading.Barrier(4)

  def contend():
    lock = ObjectStoreLock(_url(tmp_path))
    barrier.wait()
    try:
      lock.acquire()
      results.append(lock)
    except workdir_lock.WorkdirInUseError:
      results.append(None)

  threads = [threading.Thread(target=contend) for _ in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  winners = [r for r in results if r is not None]
  assert len(winners) == 1 and winners[0].held
  winners[0].release()


def test_unsupported_url_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match='Cannot lock nosuch://'):
    object_store_lock.ObjectStoreLock('nosuch://bucket/run')
