"""Two real JAX processes (jax.distributed, gloo CPU collectives) train
together and match a single-process run of the same global batch."""

import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np

import se_flax
from se_flax.train import loop

from tests.train.tiny_config import tiny_config

_WORKER = textwrap.dedent('''
    import sys
    from se_flax.train import loop
    from tests.train.tiny_config import tiny_config
    port, pid, workdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    config = tiny_config(num_train_steps=3)
    config.distributed.enabled = True
    config.distributed.coordinator_address = f'127.0.0.1:{port}'
    config.distributed.num_processes = 2
    config.distributed.process_id = pid
    config.distributed.cpu_collectives = 'gloo'
    result = loop.train_and_evaluate(config, workdir)
    print('EVAL', result.eval_metrics['eval/num_examples'], flush=True)
''')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
  env = dict(os.environ,
             XLA_FLAGS='--xla_force_host_platform_device_count=4',
             PYTHONPATH=root + os.pathsep + os.environ.get('PYTHONPATH', ''))
  port = _free_port()
  shared = str(tmp_path / 'two')
  workers = [subprocess.Popen(
      [sys.executable, '-c', _WORKER, str(port), str(i), shared],
      env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True) for i in range(2)]
  outputs = [w.communicate(timeout=600)[0] for w in workers]
  for w, out in zip(workers, outputs):
    assert w.returncode == 0, out[-3000:]
    assert 'EVAL 20' in out  # Every eval example once, over both processes.

  single = loop.train_and_evaluate(tiny_config(num_train_steps=3),
                                   str(tmp_path / 'one'))
  two = se_flax.load_variables(shared)
  one = jax.device_get(single.state.variables())
  for a, b in zip(jax.tree_util.tree_leaves(one),
                  jax.tree_util.tree_leaves(two)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
