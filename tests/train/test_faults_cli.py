"""Fault drills through the real entry point: train.py in its own process.

What an operator's cluster does to a run (kill -9 mid-save, SIGTERM, a
second trainer on the same workdir, damaged checkpoint bytes, a changed
config on restart), and what the trainer must do: resume bit for bit from
intact state, exit with a code a scheduler can act on, and fail with one
message whose last line names the cause and the path.
"""

import os
import shutil
import signal
import time

import jax
import numpy as np
import pytest

import se_flax
from se_flax.train import checkpoint, loop

from tests.train import helpers
from tests.train.tiny_config import tiny_config

_STEPS = 6  # Every step saved: several chances to be killed mid-save.
_EVERY_STEP = dict(
    num_train_steps=_STEPS,
    checkpoint_every_steps=1,
    async_checkpoints=True,
    log_every_steps=3,
)
_EVERY_STEP_FLAGS = [f'{k}={v}' for k, v in _EVERY_STEP.items()]


def _restore_all(workdir):
  """The newest checkpoint's whole train state, as numpy."""
  ckpt = checkpoint.Checkpoints(workdir, async_save=False)
  try:
    step = ckpt.latest_step()
    meta = ckpt.meta(step)
    shapes = jax.tree_util.tree_map(
        np.asarray,
        ckpt.latest.restore(
            step,
            args=checkpoint.ocp.args.Composite(
                state=checkpoint.ocp.args.StandardRestore()
            ),
        ).state,
    )
    checkpoint.verify(shapes, meta, str(ckpt.step_dir(step)))
    return step, shapes
  finally:
    ckpt.close()


def _wait_for(predicate, timeout=240.0, poll=0.005):
  end = time.monotonic() + timeout
  while time.monotonic() < end:
    if predicate():
      return True
    time.sleep(poll)
  return False


def _saving(workdir):
  directory = os.path.join(workdir, 'checkpoints')
  try:
    names = os.listdir(directory)
  except FileNotFoundError:
    return False
  # Orbax writes a step into '<step>.orbax-checkpoint-tmp-*' first.
  return any('tmp' in n for n in names) and any(n.isdigit() for n in names)


# ~2 min; damaged and half-written checkpoints are also
# test_corrupt_checkpoints_are_skipped_moved_aside_or_refused.
@pytest.mark.slow
def test_kill_9_during_a_save_then_resume_is_bitwise_identical(tmp_path):
  straight = str(tmp_path / 'straight')
  loop.train_and_evaluate(tiny_config(**_EVERY_STEP), straight)

  killed = str(tmp_path / 'killed')
  proc = helpers.start_train(killed, *_EVERY_STEP_FLAGS)
  try:
    assert _wait_for(lambda: _saving(killed)), 'no save was ever seen'
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
  finally:
    proc.kill()
  assert proc.returncode == -signal.SIGKILL
  left = checkpoint.Checkpoints(killed, async_save=False)
  assert left.latest_step() is None or left.latest_step() < _STEPS
  left.close()

  again = helpers.run_train(killed, *_EVERY_STEP_FLAGS)
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'Took over the stale lock' in again.stderr  # The dead run's lock.
  step_a, state_a = _restore_all(straight)
  step_b, state_b = _restore_all(killed)
  assert step_a == step_b == _STEPS
  helpers.assert_trees_equal(state_a, state_b)
  assert not any(
      'tmp' in n for n in os.listdir(os.path.join(killed, 'checkpoints'))
  )


def test_second_trainer_is_refused_and_two_sigterms_save_and_exit_75(tmp_path):
  workdir = str(tmp_path / 'run')
  cache = str(tmp_path / 'xla_cache')
  first = helpers.start_train(
      workdir,
      'num_train_steps=100000',
      'checkpoint_every_steps=100000',
      'async_checkpoints=True',
      f'compilation_cache_dir={cache}',
  )
  try:
    assert _wait_for(
        lambda: os.path.exists(os.path.join(workdir, 'metrics.jsonl'))
    ), 'first run never trained'
    second = helpers.run_train(workdir)
    assert second.returncode == 1
    last = helpers.last_line(second.stderr)
    assert 'WorkdirInUseError' in last and f'pid {first.pid}' in last
    assert os.path.join(workdir, 'lock.json') in last
    first.send_signal(signal.SIGTERM)
    # Schedulers often signal again; the async save must still complete.
    _wait_for(lambda: _saving(workdir) or first.poll() is not None, timeout=60)
    if first.poll() is None:
      first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
  finally:
    first.kill()
  assert first.returncode == 75, err[-3000:]
  assert 'SIGTERM: stopped at step' in helpers.last_line(err)
  saved = checkpoint.Checkpoints(workdir, async_save=False)
  assert saved.latest_step() is not None  # Saved on the way out.
  saved.close()
  assert not any(
      'tmp' in n for n in os.listdir(os.path.join(workdir, 'checkpoints'))
  )
  se_flax.load_variables(workdir)  # Complete and verified.
  assert not os.path.exists(os.path.join(workdir, 'lock.json'))
  assert os.listdir(cache)  # The compiled steps, for the requeued run.


def _corrupt_middle(path, nbytes=256):
  data = bytearray(open(path, 'rb').read())
  start = len(data) // 2
  data[start : start + nbytes] = bytes(
      b ^ 0x5A for b in data[start : start + nbytes]
  )
  with open(path, 'wb') as f:
    f.write(data)


def test_corrupt_checkpoints_are_skipped_moved_aside_or_refused(tmp_path):
  reference = str(tmp_path / 'reference')
  loop.train_and_evaluate(tiny_config(), reference)  # Saves steps 2 and 4.

  # Latest damaged: resume from 2, move 4 aside, retrain 3-4 exactly.
  workdir = str(tmp_path / 'latest_damaged')
  shutil.copytree(reference, workdir)
  _corrupt_middle(
      helpers.data_files(os.path.join(workdir, 'checkpoints', '4'))[-1]
  )
  run = helpers.run_train(workdir)
  assert run.returncode == 0, run.stderr[-3000:]
  assert 'Checkpoint step 4 is not usable' in run.stderr
  moved = os.listdir(os.path.join(workdir, 'corrupt'))
  assert len(moved) == 1 and moved[0].startswith('checkpoints-4-')
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']
  helpers.assert_trees_equal(
      _restore_all(reference)[1], _restore_all(workdir)[1]
  )

  # Every checkpoint damaged: refuse, touch nothing, name each step.
  workdir = str(tmp_path / 'all_damaged')
  shutil.copytree(reference, workdir)
  for step in ('2', '4'):
    _corrupt_middle(
        helpers.data_files(os.path.join(workdir, 'checkpoints', step))[-1]
    )
  before = sorted(os.listdir(os.path.join(workdir, 'checkpoints')))
  run = helpers.run_train(workdir)
  assert run.returncode == 1
  assert 'NoIntactCheckpointError' in run.stderr
  assert 'step 2:' in run.stderr and 'step 4:' in run.stderr
  last = helpers.last_line(run.stderr)
  assert workdir in last and 'start_fresh_if_no_intact_checkpoint' in last
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == before
  assert not os.path.exists(os.path.join(workdir, 'corrupt'))
  assert 'Traceback' not in run.stderr


def test_changed_config_on_resume_is_refused_before_compiling(tmp_path):
  workdir = str(tmp_path / 'run')
  loop.train_and_evaluate(tiny_config(num_train_steps=2), workdir)
  metrics = open(os.path.join(workdir, 'metrics.jsonl')).read()
  config_json = open(os.path.join(workdir, 'config.json')).read()
  run = helpers.run_train(
      workdir, 'batch_size=32', 'seed=3', 'model.name=resnet_tiny'
  )
  assert run.returncode == 1
  assert 'batch_size: stored 16, current 32' in run.stderr
  assert 'seed: stored 0, current 3' in run.stderr
  assert "model.name: stored 'seresnet_tiny', current 'resnet_tiny'" in (
      run.stderr
  )
  last = helpers.last_line(run.stderr)
  assert 'resume_allow_changes=batch_size,model.name,seed' in last
  assert os.path.join(workdir, 'checkpoints', '2') in last
  assert 'Traceback' not in run.stderr
  # Refused before anything compiled, trained or was written.
  assert open(os.path.join(workdir, 'metrics.jsonl')).read() == metrics
  assert open(os.path.join(workdir, 'config.json')).read() == config_json
