"""Checkpoint integrity in process: manifests, finiteness, best, exports."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

import se_flax
from se_flax.train import checkpoint, loop, nonfinite, resume

from tests.train import helpers
from tests.train.tiny_config import tiny_config

# A read of damaged or mismatched files fails inside Orbax's asyncio code,
# which leaves unawaited coroutines and late callbacks behind (harmless,
# but reported when garbage-collected).
pytestmark = pytest.mark.filterwarnings(
    'ignore::pytest.PytestUnraisableExceptionWarning'
)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A finished tiny run (checkpoints at steps 2 and 4, best at 4)."""
  workdir = str(tmp_path_factory.mktemp('trained') / 'run')
  result = loop.train_and_evaluate(tiny_config(ema_decay=0.9), workdir)
  return workdir, jax.device_get(result.state)


def _copy(trained, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(trained[0], workdir)
  return workdir


def _abstract(state):
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), state
  )


def test_damaged_bytes_are_detected_or_harmless(trained, tmp_path):
  """Wherever bytes are overwritten, restoring either fails with a
  `CorruptCheckpointError` or gives back exactly the saved state."""
  saved = jax.device_get(
      checkpoint.Checkpoints(trained[0], async_save=False).restore(
          _abstract(trained[1]), 4
      )[0]
  )
  outcomes = []
  for index in range(-3, 0):  # The three largest data files.
    for fraction in (0.1, 0.5, 0.9):
      workdir = _copy(trained, tmp_path / f'{index}_{fraction}')
      path = helpers.data_files(os.path.join(workdir, 'checkpoints', '4'))[
          index
      ]
      data = bytearray(open(path, 'rb').read())
      start = int(len(data) * fraction)
      data[start : start + 64] = bytes(64)
      open(path, 'wb').write(data)
      ckpt = checkpoint.Checkpoints(workdir, async_save=False)
      try:
        state, _ = ckpt.restore(_abstract(trained[1]), 4)
        helpers.assert_trees_equal(jax.device_get(state), saved)
        outcomes.append('harmless')
      except checkpoint.CorruptCheckpointError as e:
        assert os.path.join(workdir, 'checkpoints', '4') in str(e)
        outcomes.append('detected')
      finally:
        ckpt.close()
  assert 'detected' in outcomes


def test_tampered_manifest_is_refused(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  meta_file = os.path.join(workdir, 'checkpoints', '4', 'meta', 'metadata')
  meta = json.load(open(meta_file))
  name = 'opt_state/1/0/trace/fc/kernel'
  assert name in meta['checksums']
  meta['checksums'][name] = '0' * 64
  json.dump(meta, open(meta_file, 'w'))
  ckpt = checkpoint.Checkpoints(workdir, async_save=False)
  with pytest.raises(
      checkpoint.CorruptCheckpointError, match=f'{name}: checksum differs'
  ):
    ckpt.restore(_abstract(trained[1]), 4)
  ckpt.close()
  # params were not touched, so the notebook loader still verifies them.
  helpers.assert_trees_equal(
      se_flax.load_variables(workdir, step=4),
      jax.device_get(trained[1].variables()),
  )


def test_a_nonfinite_state_is_never_saved(trained, tmp_path):
  workdir = str(tmp_path / 'run')
  state = trained[1]
  bad = state.replace(
      batch_stats=jax.tree_util.tree_map(
          lambda x: np.full_like(x, np.nan), state.batch_stats
      )
  )
  ckpt = checkpoint.Checkpoints(workdir, async_save=True)
  with pytest.raises(
      checkpoint.NonFiniteStateError,
      match='Refused to save step 9.*batch_stats',
  ):
    ckpt.save(9, bad, {'step': 9})
  with pytest.raises(checkpoint.NonFiniteStateError):
    ckpt.save_best(9, bad, {'step': 9}, top1=1.0)
  ckpt.wait()
  assert ckpt.steps() == [] and ckpt.best.all_steps() == []
  assert ckpt.best_top1() is None  # The refused best did not count.
  ckpt.close()


def test_best_is_kept_by_top1_across_restarts(trained, tmp_path):
  workdir = str(tmp_path / 'run')
  state = trained[1]
  first = checkpoint.Checkpoints(workdir, async_save=False)
  assert first.save_best(2, state, {'step': 2}, top1=0.5)
  first.close()
  again = checkpoint.Checkpoints(workdir, async_save=False)  # A restart.
  assert again.best_top1() == 0.5
  assert not again.save_best(4, state, {'step': 4}, top1=0.3)
  assert not again.save_best(5, state, {'step': 5}, top1=0.5)  # A tie.
  assert list(again.best.all_steps()) == [2]
  assert again.save_best(6, state, {'step': 6}, top1=0.7)
  again.wait()
  assert list(again.best.all_steps()) == [6]
  assert again.meta(6, best=True)['metrics'] == {'top1': 0.7}
  again.close()


def test_loaders_verify_and_name_the_path(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  # A damaged params leaf in the newest checkpoint: the loaders fall back
  # to step 2 when no step is named, and refuse step 4 when it is.
  meta_file = os.path.join(workdir, 'checkpoints', '4', 'meta', 'metadata')
  meta = json.load(open(meta_file))
  meta['checksums']['params/fc/bias'] = 'f' * 64
  json.dump(meta, open(meta_file, 'w'))
  with pytest.raises(
      checkpoint.CorruptCheckpointError, match='checkpoints/4.*params/fc/bias'
  ):
    se_flax.load_variables(workdir, step=4)
  fallback = se_flax.load_variables(workdir)
  helpers.assert_trees_equal(fallback, se_flax.load_variables(workdir, step=2))
  with pytest.raises(SystemExit, match='params/fc/bias'):
    checkpoint.main(
        [
            '--workdir',
            workdir,
            '--step',
            '4',
            '--output',
            str(tmp_path / 'w.npz'),
        ]
    )
  assert not os.path.exists(tmp_path / 'w.npz')
  # Metadata gone: a clear error, not an AttributeError.
  os.remove(os.path.join(workdir, 'checkpoints', '2', 'state', '_METADATA'))
  with pytest.raises(checkpoint.CorruptCheckpointError, match='_METADATA'):
    se_flax.load_variables(workdir, step=2)


def test_truncated_export_names_its_path(trained, tmp_path):
  out = str(tmp_path / 'weights.npz')
  checkpoint.export_variables(trained[0], out)
  data = open(out, 'rb').read()
  open(out, 'wb').write(data[: len(data) // 2])
  with pytest.raises(checkpoint.CorruptCheckpointError, match=out):
    checkpoint.load_exported(out)


def test_resume_differences():
  stored = {
      'batch_size': 16,
      'seed': 0,
      'num_train_steps': 10,
      'num_epochs': 1.0,
      'model.name': 'a',
  }
  same = dict(stored)
  assert resume.check_compatible(stored, same, set(), 'w') == []
  longer = dict(stored, num_train_steps=20, num_epochs=2.0)
  notes = resume.check_compatible(stored, longer, set(), 'w')
  assert any('num_train_steps 10 -> 20' in n for n in notes)
  shorter = dict(stored, num_train_steps=5)
  with pytest.raises(
      resume.ResumeMismatchError, match='num_train_steps: stored 10, current 5'
  ):
    resume.check_compatible(stored, shorter, set(), 'w')
  changed = dict(stored, batch_size=32, seed=1)
  with pytest.raises(
      resume.ResumeMismatchError, match='resume_allow_changes=batch_size,seed$'
  ):
    resume.check_compatible(stored, changed, set(), 'w')
  with pytest.raises(
      resume.ResumeMismatchError,
      match='changed seed:.*resume_allow_changes=seed$',
  ):
    resume.check_compatible(stored, changed, {'batch_size'}, 'w')
  notes = resume.check_compatible(stored, changed, {'batch_size', 'seed'}, 'w')
  assert len(notes) == 2
  assert resume.check_compatible(stored, changed, {'all'}, 'w')
  # A field the stored run did not record is not compared.
  assert resume.differences(stored, dict(stored, new_field=1)) == []


def test_nonfinite_stop_stops_and_saves_nothing_after(tmp_path):
  workdir = str(tmp_path / 'run')
  # Diverges within a few steps; the first step's update still has squared
  # norms within float32 (the guard counts an overflowing one as a
  # non-finite step), so some steps are saved before it.
  config = tiny_config(
      num_train_steps=8,
      checkpoint_every_steps=1,
      learning_rate=1e17,
      nonfinite='stop',
      log_every_steps=100,
  )
  with pytest.raises(nonfinite.NonFiniteStepError) as error:
    loop.train_and_evaluate(config, workdir)
  message = str(error.value)
  bad_step = int(message.split('Step ')[1].split(' ')[0])
  ckpt = checkpoint.Checkpoints(workdir, async_save=False)
  saved = ckpt.steps()
  ckpt.close()
  assert saved and max(saved) < bad_step
  assert f'step {max(saved)} in' in message
  for step in saved:  # Verified: every saved state is finite.
    variables = se_flax.load_variables(workdir, step=step)
    assert all(
        np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(variables)
    )
  assert not os.path.exists(os.path.join(workdir, 'lock.json'))


def test_a_new_checkpoint_without_its_manifest_is_refused(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  meta_file = os.path.join(workdir, 'checkpoints', '4', 'meta', 'metadata')
  meta = json.load(open(meta_file))
  del meta['checksums']  # A stripped manifest is damage, not an old format.
  json.dump(meta, open(meta_file, 'w'))
  with pytest.raises(
      checkpoint.CorruptCheckpointError, match='checksum manifest is missing'
  ):
    se_flax.load_variables(workdir, step=4)


def _damage_largest(step_dir):
  path = helpers.data_files(step_dir)[-1]
  open(path, 'wb').close()  # Zero bytes.


def test_damaged_best_is_set_aside_and_replaced(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  _damage_largest(os.path.join(workdir, 'best', '4'))
  loop.train_and_evaluate(
      tiny_config(ema_decay=0.9, num_train_steps=6), workdir
  )
  moved = os.listdir(os.path.join(workdir, 'corrupt'))
  assert len(moved) == 1 and moved[0].startswith('best-4-')
  assert os.listdir(os.path.join(workdir, 'best')) == ['6']
  se_flax.load_variables(workdir, best=True)  # Intact.


def test_start_fresh_sets_everything_aside(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  for step in ('2', '4'):
    _damage_largest(os.path.join(workdir, 'checkpoints', step))
  with pytest.raises(resume.NoIntactCheckpointError, match='step 4:'):
    loop.train_and_evaluate(tiny_config(ema_decay=0.9), workdir)
  assert not os.path.exists(os.path.join(workdir, 'corrupt'))
  result = loop.train_and_evaluate(
      tiny_config(ema_decay=0.9, start_fresh_if_no_intact_checkpoint=True),
      workdir,
  )
  assert int(result.state.step) == 4
  moved = sorted(
      n.rsplit('-', 1)[0] for n in os.listdir(os.path.join(workdir, 'corrupt'))
  )
  assert moved == ['best-4', 'checkpoints-2', 'checkpoints-4']
  assert os.listdir(os.path.join(workdir, 'best')) == ['4']  # The new run's.


def test_an_accepted_shape_change_is_refused_not_called_damage(
    trained, tmp_path
):
  workdir = _copy(trained, tmp_path)
  config = tiny_config(
      ema_decay=0.9,
      resume_allow_changes='model.se_reduction',
      start_fresh_if_no_intact_checkpoint=True,
  )
  config.model.se_reduction = 8
  with pytest.raises(
      checkpoint.IncompatibleCheckpointError,
      match='checkpoints/4 is intact but holds another state'
      '.*stored .*wanted',
  ):
    loop.train_and_evaluate(config, workdir)
  assert not os.path.exists(os.path.join(workdir, 'corrupt'))
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']


def test_nan_evaluations_never_become_best(tmp_path):
  workdir = str(tmp_path / 'run')
  result = loop.train_and_evaluate(
      tiny_config(learning_rate=1e17, nonfinite='skip'), workdir
  )
  assert not np.isfinite(result.eval_metrics['eval/loss'])
  assert int(result.state.skipped_steps) > 0
  assert not os.listdir(os.path.join(workdir, 'best'))
