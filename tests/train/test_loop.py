"""train_and_evaluate end to end on synthetic data (no TensorFlow needed)."""

import json
import os
import signal
import time

import jax
import numpy as np
import pytest
from jax.experimental import io_callback
from jax.sharding import Mesh

import se_flax
from se_flax.train import checkpoint, inputs, loop, sharding, steps
from se_flax.train import validation

from tests.train.helpers import assert_trees_equal, read_metrics
from tests.train.tiny_config import tiny_config


def test_resume_is_bitwise_identical(tmp_path):
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  full = loop.train_and_evaluate(tiny_config(), straight)
  loop.train_and_evaluate(tiny_config(num_train_steps=2), resumed)
  again = loop.train_and_evaluate(tiny_config(), resumed)
  assert int(full.state.step) == int(again.state.step) == 4
  assert_trees_equal(jax.device_get(full.state), jax.device_get(again.state))
  # The resumed run logs the same metrics at the same steps (its first
  # half once more, from the first start, plus a step-2 eval there).
  logged = [r for r in read_metrics(resumed) if r['step'] > 2]
  assert logged == [r for r in read_metrics(straight) if r['step'] > 2]
  assert full.eval_metrics['eval/num_examples'] == 20
  assert full.eval_metrics == again.eval_metrics
  assert_trees_equal(
      se_flax.load_variables(straight), se_flax.load_variables(resumed)
  )


def test_sigterm_saves_and_next_start_resumes(tmp_path, monkeypatch):
  workdir = str(tmp_path / 'run')
  config = tiny_config(num_train_steps=50, checkpoint_every_steps=1000)
  real = inputs.create_inputs

  def preempting_inputs(cfg):
    made = real(cfg)
    train = made.train

    def train_then_sigterm(start_step):
      for i, batch in enumerate(train(start_step)):
        if i == 3:
          os.kill(os.getpid(), signal.SIGTERM)
        yield batch

    made.train = train_then_sigterm
    return made

  monkeypatch.setattr(loop, 'create_inputs', preempting_inputs)
  result = loop.train_and_evaluate(config, workdir)
  assert result.preempted
  stopped = int(result.state.step)
  assert 2 <= stopped < 10
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == [str(stopped)]
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # Restored.

  monkeypatch.setattr(loop, 'create_inputs', real)
  config.num_train_steps = stopped + 2  # Shorter than stored: say so.
  config.resume_allow_changes = 'num_train_steps'
  resumed = loop.train_and_evaluate(config, workdir)
  assert not resumed.preempted and int(resumed.state.step) == stopped + 2
  first_logged = min(
      r['step'] for r in read_metrics(workdir) if r['step'] > stopped
  )
  assert first_logged > stopped


def test_checkpoints_move_between_8_and_1_devices(tmp_path):
  workdir = str(tmp_path / 'run')
  result = loop.train_and_evaluate(tiny_config(num_train_steps=2), workdir)
  state8 = result.state
  assert len(jax.tree_util.tree_leaves(state8)[0].sharding.device_set) == 8
  one = Mesh(np.asarray(jax.devices()[:1]), ('data',))
  on_one = sharding.replicated(one)
  abstract = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=on_one), state8
  )
  ckpt = checkpoint.Checkpoints(workdir, async_save=False)
  restored, meta = ckpt.restore(abstract)
  assert meta['step'] == 2
  leaf = jax.tree_util.tree_leaves(restored)[0]
  assert leaf.sharding.device_set == {jax.devices()[0]}
  assert_trees_equal(jax.device_get(state8), jax.device_get(restored))
  # And back: a 1-device checkpoint restored onto all 8 devices.
  ckpt.save(7, restored, meta)
  ckpt.wait()
  eight = sharding.replicated(sharding.create_mesh())
  back, _ = ckpt.restore(
      jax.tree_util.tree_map(
          lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=eight),
          state8,
      ),
      step=7,
  )
  assert len(jax.tree_util.tree_leaves(back)[0].sharding.device_set) == 8
  assert_trees_equal(jax.device_get(state8), jax.device_get(back))
  ckpt.close()


def test_export_and_notebook_loading(tmp_path):
  workdir = str(tmp_path / 'run')
  config = tiny_config(num_train_steps=2, ema_decay=0.9)
  result = loop.train_and_evaluate(config, workdir)
  variables = se_flax.load_variables(workdir)
  assert_trees_equal(variables, jax.device_get(result.state.variables()))
  ema = se_flax.load_variables(workdir, ema=True)
  assert_trees_equal(ema, jax.device_get(result.state.variables(ema=True)))
  assert 'eval_ema/top1' in result.eval_metrics
  out = str(tmp_path / 'weights.npz')
  checkpoint.main(['--workdir', workdir, '--output', out])
  exported = checkpoint.load_exported(out)
  assert_trees_equal(exported, variables)
  model = se_flax.create_model('seresnet_tiny', num_classes=10)
  x = np.zeros((1, 32, 32, 3), np.float32)
  np.testing.assert_array_equal(
      model.apply(exported, x, train=False),
      model.apply(variables, x, train=False),
  )
  with pytest.raises(FileNotFoundError, match='step 5'):
    se_flax.load_variables(workdir, step=5)
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['model']['name'] == 'seresnet_tiny'


@pytest.mark.parametrize(
    'field,value,message',
    [
        ('batch_size', 12, 'batch_size.*multiple of the 8 devices'),
        ('eval_batch_size', 4, 'eval_batch_size'),
        ('lr_schedule', 'linear', 'lr_schedule'),
        ('nonfinite', 'ignore', 'nonfinite'),
        ('ema_decay', 1.0, 'ema_decay'),
    ],
)
def test_misconfiguration_fails_before_compiling(
    tmp_path, field, value, message
):
  config = tiny_config()
  config[field] = value
  with pytest.raises(ValueError, match=message):
    loop.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / 'checkpoints')


@pytest.mark.parametrize(
    'field,value,message',
    [
        ('name', 'seresnet5', 'model.name'),
        ('se_position', 'middle', 'se_position'),
        ('bn_groups', 3, 'bn_groups'),
        ('dtype', 'int8', 'model.dtype'),
    ],
)
def test_model_misconfiguration_is_named(field, value, message):
  config = tiny_config()
  config.model[field] = value
  with pytest.raises(ValueError, match=message):
    validation.validate_config(config)


def test_se_fields_on_a_plain_model_are_refused():
  config = tiny_config()
  config.model.se = False
  config.model.se_reduction = 8
  with pytest.raises(ValueError, match='se is False'):
    validation.validate_config(config)


def test_locked_config_rejects_misspelt_fields():
  config = tiny_config()
  config.lock()
  with pytest.raises(AttributeError):
    config.learning_rat = 0.1


def test_logged_step_time_is_wall_clock_time(tmp_path, monkeypatch):
  """Each step sleeps 0.25 s on the device side (an ordered host callback
  inside the jitted step, so dispatch returns at once): the logged step
  time, throughput and progress rate must still match a stopwatch."""
  sleep = 0.25
  real_step = steps.train_step

  def slow_step(state, batch, **kwargs):
    token = io_callback(
        lambda: (time.sleep(sleep), np.int32(0))[1],
        jax.ShapeDtypeStruct((), np.int32),
        ordered=True,
    )
    state, metrics = real_step(state, batch, **kwargs)
    return state, dict(metrics, loss=metrics['loss'] + 0.0 * token)

  monkeypatch.setattr(steps, 'train_step', slow_step)
  workdir = str(tmp_path / 'run')
  start = time.perf_counter()
  loop.train_and_evaluate(
      tiny_config(
          num_train_steps=9, log_every_steps=4, checkpoint_every_steps=100
      ),
      workdir,
  )
  wall = time.perf_counter() - start
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  logged = [r for r in records if 'train/step_time_ms' in r]
  assert [r['step'] for r in logged] == [4, 8, 9]
  for r in logged:
    assert 1e3 * sleep <= r['train/step_time_ms'] < 1e3 * (sleep + 0.5), r
    assert r['train/images_per_sec'] <= 16 / sleep
  rate = [r['steps_per_sec'] for r in records if 'steps_per_sec' in r]
  assert rate and rate[-1] <= 1 / sleep
  assert 8 * sleep < wall


def _signal_at(step_index, signum, stage='train'):
  """create_inputs whose train stream sends `signum` to this process."""
  real = inputs.create_inputs

  def signalling_inputs(cfg):
    made = real(cfg)
    if stage == 'setup':
      os.kill(os.getpid(), signum)
      return made
    train = made.train

    def train_then_signal(start_step):
      for i, batch in enumerate(train(start_step)):
        if i == step_index:
          os.kill(os.getpid(), signum)
        yield batch

    made.train = train_then_signal
    return made

  return signalling_inputs


def test_ctrl_c_saves_and_a_signal_in_setup_stops_before_compiling(
    tmp_path, monkeypatch
):
  workdir = str(tmp_path / 'run')
  config = tiny_config(
      num_train_steps=50, checkpoint_every_steps=1000, async_checkpoints=True
  )
  monkeypatch.setattr(loop, 'create_inputs', _signal_at(3, signal.SIGINT))
  # The handler before the run comes back (default_int_handler in a plain
  # process; a test worker may have another, e.g. SIG_IGN).
  before = signal.getsignal(signal.SIGINT)
  result = loop.train_and_evaluate(config, workdir)
  assert result.preempted and result.stop_signal == 'SIGINT'
  stopped = int(result.state.step)
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == [str(stopped)]
  assert signal.getsignal(signal.SIGINT) is before

  monkeypatch.setattr(
      loop, 'create_inputs', _signal_at(0, signal.SIGTERM, stage='setup')
  )
  result = loop.train_and_evaluate(config, workdir)
  assert result.preempted and result.stop_signal == 'SIGTERM'
  assert int(result.state.step) == stopped  # Not one step more.
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == [str(stopped)]
  compiles = [
      r
      for r in map(json.loads, open(os.path.join(workdir, 'metrics.jsonl')))
      if 'compile_seconds' in r
  ]
  assert len(compiles) == 1  # The first run's only.
