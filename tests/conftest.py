"""Test-session settings, made before JAX starts (it reads them once).

- 8 host CPU devices, so the sharded paths run on a laptop or CI box.
- Fewer XLA optimisation passes and a per-session compilation cache: the
  suite compiles many small programs, several of them more than once
  (every `train_and_evaluate` call jits its steps anew), and compiling
  dominates its run time on 2 cores. Subprocesses inherit both.
"""

import os
import shutil
import tempfile

import pytest

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# The suite is written for (and checks) the CPU backend; pinning it keeps
# `pytest` passing on a machine that also has a GPU or TPU.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _SESSION_CACHE = tempfile.mkdtemp(prefix='se_flax_test_jax_cache_')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _SESSION_CACHE
else:
  _SESSION_CACHE = None
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '-1')


@pytest.fixture
def full_optimization():
  """Compiles with all of XLA's passes, for tests that read optimised HLO
  (the session otherwise disables most of them, for speed)."""
  import jax

  before = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', False)
  yield
  jax.config.update('jax_disable_most_optimizations', before)


def pytest_unconfigure(config):
  # The session's cache goes with it (subprocesses have all exited).
  if _SESSION_CACHE:
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


@pytest.fixture(scope='session')
def tiny_se_workdir(tmp_path_factory):
  """A 2-step run of tests/train/tiny_config.py (seresnet_tiny, 10 classes,
  32 px) with two non-default fields a loader must keep: SE reduction 1
  and eval crop_pct 0.9. Shared, so read it only (copy it to change it)."""
  from se_flax.train import loop
  from tests.train.tiny_config import tiny_config

  workdir = str(tmp_path_factory.mktemp('tiny_se_run'))
  config = tiny_config(num_train_steps=2)
  config.model.se_reduction = 1
  config.data.crop_pct = 0.9
  loop.train_and_evaluate(config, workdir)
  return workdir
