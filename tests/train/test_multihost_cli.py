"""train.py itself as 2 real processes on localhost (gloo, 2 CPU devices
each): train, checkpoint, resume past a damaged checkpoint together, and
match a 1-process run of the same global batch; processes that do not
see the same workdir fail together instead of hanging."""

import json
import os
import re
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

import se_flax
from se_flax.train import loop

from tests.train import helpers
from tests.train.tiny_config import tiny_config


def _start(workdirs, *overrides, slurm=False):
  """One train.py per workdir (process i gets workdirs[i]).

  `slurm`: no coordinator flags; SLURM's variables instead, as `srun`
  sets them for 2 tasks on one node, so JAX's own SLURM detection runs.
  """
  port = helpers.free_port()
  env = dict(
      helpers.train_env(), XLA_FLAGS='--xla_force_host_platform_device_count=2'
  )
  procs = []
  for i, workdir in enumerate(workdirs):
    flags = ['distributed.cpu_collectives=gloo']
    if slurm:
      task_env = dict(
          env,
          SLURM_JOB_ID='4242',
          SLURM_STEP_NODELIST='localhost',
          SLURM_NTASKS=str(len(workdirs)),
          SLURM_PROCID=str(i),
          SLURM_LOCALID=str(i),
          JAX_COORDINATOR_PORT=str(port),
      )
    else:
      task_env = env
      flags += [
          f'distributed.coordinator_address=127.0.0.1:{port}',
          f'distributed.num_processes={len(workdirs)}',
          f'distributed.process_id={i}',
      ]
    command = helpers.train_command(workdir, *overrides, *flags)
    procs.append(
        subprocess.Popen(
            command,
            cwd=helpers.ROOT,
            env=task_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    )
  return procs


def _wait(procs, timeout=600):
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=timeout)[1])
  finally:
    for p in procs:
      p.kill()
  return [p.returncode for p in procs], outs


def _launch(workdirs, *overrides, timeout=600, slurm=False):
  return _wait(_start(workdirs, *overrides, slurm=slurm), timeout)


def _wait_for_training(workdir, procs, timeout=300):
  """Until the run has logged a train step (the first log comes after it)."""
  metrics = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if os.path.exists(metrics) and 'train/loss' in open(metrics).read():
      return
    if any(p.poll() is not None for p in procs):
      break
    time.sleep(0.2)
  for p in procs:
    p.kill()
  raise AssertionError(
      'the run never trained: '
      + ''.join(p.communicate()[1][-2000:] for p in procs)
  )


def _eval_counts(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [
        r['eval/num_examples']
        for r in map(json.loads, f)
        if 'eval/num_examples' in r
    ]


def test_two_train_py_processes_resume_past_damage_and_match_one(tmp_path):
  shared = str(tmp_path / 'two')
  codes, errs = _launch([shared, shared])
  assert codes == [0, 0], errs[0][-3000:] + errs[1][-3000:]
  assert 'JAX process 1/2' in errs[1]  # Initialised before any JAX call.
  assert _eval_counts(shared) == [20]  # Every eval example once.
  assert sorted(os.listdir(os.path.join(shared, 'checkpoints'))) == ['2', '4']

  # Damage step 4; the restart extends the run: both processes resume
  # from step 2 (process 0 decides), and step 4 is moved aside once.
  path = helpers.data_files(os.path.join(shared, 'checkpoints', '4'))[-1]
  data = bytearray(open(path, 'rb').read())
  data[len(data) // 2 : len(data) // 2 + 256] = bytes(256)
  open(path, 'wb').write(data)
  codes, errs = _launch([shared, shared], 'num_train_steps=6')
  assert codes == [0, 0], errs[0][-3000:] + errs[1][-3000:]
  assert 'Checkpoint step 4 is not usable' in errs[0]
  assert 'Resumed from' in errs[1] and '/checkpoints/2 ' in errs[1]
  assert len(os.listdir(os.path.join(shared, 'corrupt'))) == 1

  single = loop.train_and_evaluate(
      tiny_config(num_train_steps=6), str(tmp_path / 'one')
  )
  two = se_flax.load_variables(shared)
  one = jax.device_get(single.state.variables())
  for a, b in zip(
      jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(two)
  ):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


def test_processes_that_see_different_workdirs_fail_together(tmp_path):
  trained = str(tmp_path / 'trained')
  loop.train_and_evaluate(tiny_config(num_train_steps=2), trained)
  local = str(tmp_path / 'node_local_disk')  # Process 1 sees no steps.
  os.makedirs(local)
  shutil.copy(os.path.join(trained, 'config.json'), local)
  codes, errs = _launch([trained, local], timeout=300)
  assert codes == [1, 1], errs[0][-3000:] + errs[1][-3000:]
  for err in errs:
    last = helpers.last_line(err)
    assert 'Processes [1] do not see checkpoint steps' in last
    assert 'shared filesystem' in last


def test_slurm_detection_one_process_per_gpu_and_sigterm(tmp_path):
  """srun's environment alone starts the run (JAX's SLURM detection, no
  distributed flags); by default each task gets the GPU of its
  SLURM_LOCALID."""
  # SIGTERM to one task (as a preempted node gets): both agree at the next
  # check, save the same step and exit 75 (requeue).
  per_gpu = str(tmp_path / 'per_gpu')
  procs = _start(
      [per_gpu, per_gpu],
      'num_train_steps=100000',
      'checkpoint_every_steps=100000',
      'log_every_steps=1',
      'preemption_check_every_steps=3',
      slurm=True,
  )
  _wait_for_training(per_gpu, procs)
  procs[1].send_signal(signal.SIGTERM)
  codes, errs = _wait(procs, timeout=300)
  assert codes == [75, 75], errs[0][-3000:] + errs[1][-3000:]
  for i, err in enumerate(errs):
    assert 'Starting jax.distributed (SLURM)' in err
    assert f'process {i}/2, 2 local of 4 devices' in err
    assert f'CUDA visible devices {i}' in err
  saved = os.listdir(os.path.join(per_gpu, 'checkpoints'))
  assert len(saved) == 1 and int(saved[0]) % 3 == 0, saved


@pytest.mark.slow
def test_slurm_one_process_per_node_and_a_peer_that_dies(tmp_path):
  """local_device_ids=all drives every local device; when a peer dies the
  survivor fails within the heartbeat timeout instead of hanging."""
  per_node = str(tmp_path / 'per_node')
  procs = _start(
      [per_node, per_node],
      'distributed.local_device_ids=all',
      'distributed.heartbeat_timeout_seconds=5',
      'num_train_steps=100000',
      'checkpoint_every_steps=100000',
      slurm=True,
  )
  try:
    _wait_for_training(per_node, procs)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    _, err = procs[0].communicate(timeout=120)
    waited = time.monotonic() - killed
  finally:
    for p in procs:
      p.kill()
  assert procs[0].returncode != 0
  assert waited < 60, waited
  assert 'process 0/2, 2 local of 4 devices' in err
  assert 'CUDA visible devices' not in err


@pytest.mark.slow
def _assert_readable_log(stderr):
  """What a person reads: no expected-but-alarming lines (parse errors
  from eval padding, TF's start-up lines, Orbax/TFDS INFO), no WARNING."""
  lines = stderr.splitlines()
  for noise in (
      'OP_REQUIRES',
      'oneDNN',
      'absl::InitializeLog',
      'Load dataset info',
      'checkpoint_manager.py',
  ):
    assert not [l for l in lines if noise in l], (noise, stderr[-3000:])
  assert not [l for l in lines if re.match(r'W\d{4} ', l)], stderr[-3000:]


# ~3 min on 2 cores; by default 2-process train.py is
# test_two_train_py_processes_resume_past_damage_and_match_one and TFDS
# resume is test_loop_tfds.
@pytest.mark.slow
def test_two_train_py_processes_through_tfds_resume_bitwise(tmp_path):
  """The TFDS pipeline, 2 processes (each reads its own half of every
  split): exact eval count, and a run stopped and resumed across an epoch
  boundary equals an uninterrupted one bit for bit."""
  root = str(tmp_path / 'tiny')
  tfds = [
      'data.source=tiny_imagenet',
      f'data.tiny.root={root}',
      'data.tiny.num_classes=5',
      'data.tiny.train_per_class=12',
      'data.tiny.val_per_class=5',
      'data.tiny.image_size=48',
      'data.shuffle_buffer=64',
      'data.prefetch=1',
  ]
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  for workdir, steps in ((straight, 4), (resumed, 2), (resumed, 4)):
    codes, errs = _launch([workdir, workdir], *tfds, f'num_train_steps={steps}')
    assert codes == [0, 0], errs[0][-3000:] + errs[1][-3000:]
    for err in errs:
      _assert_readable_log(err)
  assert _eval_counts(straight) == [25]
  assert _eval_counts(resumed) == [25, 25]
  helpers.assert_trees_equal(
      se_flax.load_variables(straight), se_flax.load_variables(resumed)
  )
