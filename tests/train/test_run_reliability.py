"""Drills for what defines a run and what a restart owes it.

- every config value is checked before anything compiles (one line naming
  the field and what is allowed);
- the folder source's root, class names and example count are part of the
  run: a restart that finds them changed is refused;
- a workdir with an earlier attempt but no checkpoints is compared, never
  silently started over;
- a run that reached its last step finishes its final evaluation and best
  save on restart, and a finished run says there is nothing to do.
"""

import errno
import json
import os
import shutil
import signal
import time

import pytest

from se_flax.train import checkpoint, loop, resume, run_record, validation

from tests.train import helpers
from tests.train.tiny_config import tiny_config


@pytest.mark.parametrize(
    'field,value,message',
    [
        ('learning_rate', -0.1, r'config.learning_rate: -0.1 must be .* > 0'),
        ('learning_rate', 0.0, r'config.learning_rate: 0.0 must be .* > 0'),
        ('weight_decay', -1e-4, r'config.weight_decay: .* >= 0'),
        ('momentum', 1.5, r'config.momentum: 1.5 .* < 1'),
        ('keep_checkpoints', 0, r'config.keep_checkpoints: 0 .* >= 1'),
        ('log_every_steps', 0, r'config.log_every_steps: 0 .* > 0'),
        ('checkpoint_every_steps', 0, r'checkpoint_every_steps: 0 .* > 0'),
        ('preemption_check_every_steps', 0, r'preemption_check_every_steps'),
        ('eval_every_epochs', 0.0, r'config.eval_every_epochs: 0.0 .* > 0'),
        ('eval_every_epochs', -1.0, r'config.eval_every_epochs'),
        ('num_train_steps', 0, r'config.num_train_steps: 0 .* or -1'),
        ('warmup_epochs', -1.0, r'config.warmup_epochs'),
        ('lr_decay_epochs', (60, 30), r'config.lr_decay_epochs'),
        ('label_smoothing', 1.0, r'config.label_smoothing'),
        ('lr_decay_factor', 5.0, r'config.lr_decay_factor: 5.0 .* \(0, 1\]'),
        ('eval_batch_size', -16, r'config.eval_batch_size: -16 .* > 0'),
        ('num_train_steps', True, r'config.num_train_steps: True'),
    ],
)
def test_values_that_cannot_be_meant_are_refused_by_name(field, value, message):
  config = tiny_config()
  config[field] = value
  with pytest.raises(ValueError, match=message):
    validation.validate_config(config)


@pytest.mark.parametrize(
    'field,value,message',
    [
        ('image_size', 0, r'data.image_size: 0 must be an int > 0'),
        ('eval_image_size', -3, r'data.eval_image_size: -3 must be'),
        ('crop_pct', 0.0, r'data.crop_pct'),
        ('min_area', 0.0, r'data.min_area'),
        ('aspect_ratio', (2.0, 1.0), r'data.aspect_ratio'),
        ('interpolation', 'foo', r"data.interpolation: 'foo' is not one of"),
        ('shuffle_buffer', -1, r'data.shuffle_buffer: -1 .* > 0'),
        ('prefetch', -5, r'data.prefetch: -5 .* or -1 \(AUTOTUNE\)'),
        ('synthetic_train_examples', 0, r'data.synthetic_train_examples'),
    ],
)
def test_data_values_that_cannot_be_meant_are_refused(field, value, message):
  config = tiny_config()
  config.data[field] = value
  with pytest.raises(ValueError, match=message):
    validation.validate_config(config)


@pytest.mark.parametrize(
    'field,value,message',
    [
        ('bn_groups', -3, r'config.model.bn_groups: -3 .* >= 0'),
        ('drop_rate', 1.5, r'config.model.drop_rate: 1.5 .* < 1'),
        ('se_reduction', 0, r'config.model.se_reduction: 0 .* > 0'),
        # A field no image size can help: named as the model's, not the size.
        ('se_gate', 'sigmoidd', r'^config.model: .*gate must be one of'),
    ],
)
def test_model_values_that_cannot_be_meant_are_refused(field, value, message):
  config = tiny_config()
  config.model[field] = value
  with pytest.raises(ValueError, match=message):
    validation.validate_config(config)


@pytest.mark.parametrize('rules', ['auto', 'off'])
def test_an_image_size_the_network_cannot_take_is_refused(rules):
  """VGG's five 2x2 poolings need 32 px: 8 px is refused, for training and
  eval sizes, with either layer set; the message names a size it takes."""
  config = tiny_config(layer_rules=rules)
  config.model.name = 'se_vgg16_bn'
  config.data.image_size = 8
  with pytest.raises(
      ValueError,
      match=r'^config.data.image_size: se_vgg16_bn cannot take 8x8 px '
      r'images \(a size it takes: 32 px\)$',
  ):
    validation.validate_config(config)
  config.data.image_size, config.data.eval_image_size = 32, 16
  with pytest.raises(ValueError, match='data.eval_image_size: .* 16x16'):
    validation.validate_config(config)
  config.data.eval_image_size = 32
  validation.validate_config(config)


def test_a_map_pooled_to_nothing_is_refused():
  """The Caffe SE-ResNet's valid-padded pooling leaves no pixel of a 1 px
  image (the logits would be NaN): refused, though no layer raises."""
  config = tiny_config(layer_rules='off')
  config.model.name = 'legacy_seresnet18'
  config.data.image_size = 1
  with pytest.raises(ValueError, match='cannot take 1x1 px .* 16 px'):
    validation.validate_config(config)


def test_a_one_pixel_resnet_is_accepted():
  """ResNets take 1 px images: strides keep one pixel (the CPU max-pool
  rule once failed on windows larger than the input)."""
  config = tiny_config()
  config.data.image_size = 1
  validation.validate_config(config)


def test_train_py_refuses_a_negative_learning_rate_in_one_line(tmp_path):
  workdir = tmp_path / 'run'
  proc = helpers.run_train(workdir, 'learning_rate=-0.1')
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert helpers.last_line(proc.stderr) == (
      'train.py: error: ValueError: config.learning_rate: -0.1 must be a '
      'finite number > 0'
  )
  assert 'Traceback' not in proc.stderr
  assert not (workdir / 'checkpoints').exists()


def _folder_config(root, **overrides):
  config = tiny_config(**overrides)
  config.data.source = 'folder'
  config.data.folder_root = root
  config.batch_size = 8
  return config


@pytest.fixture(name='folder_run')
def _folder_run(tmp_path, monkeypatch):
  """A 2-step run on a 3-class folder named by a relative path."""
  from tests.data import helpers as data_helpers  # TensorFlow from here.

  data_helpers.write_colour_folder(
      str(tmp_path / 'images'), train_per_class=8, val_per_class=2
  )
  monkeypatch.chdir(tmp_path)
  workdir = str(tmp_path / 'run')
  loop.train_and_evaluate(_folder_config('images', num_train_steps=2), workdir)
  return tmp_path, workdir


def test_folder_root_is_stored_resolved(folder_run):
  tmp_path, workdir = folder_run
  with open(os.path.join(workdir, 'config.json')) as f:
    stored = json.load(f)['data']['folder_root']
  assert stored == os.path.realpath(tmp_path / 'images')


def test_renamed_class_folders_are_refused_on_resume(folder_run):
  tmp_path, workdir = folder_run
  for split in ('train', 'val'):  # Same count, same sorted order.
    os.rename(
        tmp_path / 'images' / split / 'cat', tmp_path / 'images' / split / 'cow'
    )
  with pytest.raises(resume.ResumeMismatchError) as e:
    loop.train_and_evaluate(
        _folder_config('images', num_train_steps=4), workdir
    )
  assert "data.class_names: stored ['cat', 'dog', 'emu'], current " in str(
      e.value
  )
  with open(os.path.join(workdir, 'label_names.json')) as f:
    assert json.load(f) == ['cat', 'dog', 'emu']  # Not rewritten.


def test_a_thinned_or_moved_folder_is_refused_on_resume(folder_run):
  tmp_path, workdir = folder_run
  os.remove(tmp_path / 'images' / 'train' / 'dog' / '3.png')
  with pytest.raises(
      resume.ResumeMismatchError,
      match='data.num_train_examples: stored 24, current 23',
  ):
    loop.train_and_evaluate(
        _folder_config('images', num_train_steps=4), workdir
    )
  shutil.copytree(tmp_path / 'images', tmp_path / 'elsewhere')
  with pytest.raises(resume.ResumeMismatchError, match='data.folder_root'):
    loop.train_and_evaluate(
        _folder_config(
            'elsewhere',
            num_train_steps=4,
            resume_allow_changes='data.num_train_examples',
        ),
        workdir,
    )


def test_an_earlier_attempt_without_checkpoints_is_compared(tmp_path):
  workdir = str(tmp_path / 'run')
  loop.train_and_evaluate(tiny_config(), workdir)
  shutil.rmtree(os.path.join(workdir, 'checkpoints'))
  # Another run over it: refused, naming the change.
  with pytest.raises(
      resume.ResumeMismatchError,
      match=r'learning_rate: stored 0.1, current 0.2',
  ):
    loop.train_and_evaluate(tiny_config(learning_rate=0.2), workdir)
  # The same run starts over (with a warning), and finishes.
  result = loop.train_and_evaluate(tiny_config(), workdir)
  assert int(result.state.step) == 4
  # Nothing to compare with (only metrics.jsonl): refused unless asked.
  for name in ('checkpoints', 'best'):
    shutil.rmtree(os.path.join(workdir, name))
  for name in ('config.json', 'final.json'):
    os.remove(os.path.join(workdir, name))
  with pytest.raises(resume.NoIntactCheckpointError, match='metrics.jsonl'):
    loop.train_and_evaluate(tiny_config(), workdir)
  result = loop.train_and_evaluate(
      tiny_config(start_fresh_if_no_intact_checkpoint=True), workdir
  )
  assert int(result.state.step) == 4


def test_an_attempt_that_never_trained_is_not_a_run(tmp_path):
  """Died compiling (no metric, no best): a changed config may start."""
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'config.json').write_text(json.dumps({'learning_rate': 9.0}))
  (workdir / 'metrics.jsonl').write_text('')
  config = tiny_config()
  run = resume.fingerprint(
      config, num_classes=10, train_steps=4, process_count=1
  )
  ckpt = checkpoint.Checkpoints(str(workdir), async_save=False)
  try:
    run_record.check_earlier_attempt(config, ckpt, run)  # No refusal.
    (workdir / 'metrics.jsonl').write_text('{"step": 1, "train/loss": 2}\n')
    with pytest.raises(resume.ResumeMismatchError, match='learning_rate'):
      run_record.check_earlier_attempt(config, ckpt, run)
  finally:
    ckpt.close()


def test_a_run_stored_with_a_relative_folder_root_still_resumes():
  """Before roots were resolved, config.json kept them as typed: such a
  root is not compared (relative to what?); an absolute one is."""
  stored = {'config': {'data': {'folder_root': 'images', 'image_size': 32}}}
  assert 'data.folder_root' not in resume.stored_fingerprint(stored)
  stored['config']['data']['folder_root'] = '/data/images'
  run = resume.stored_fingerprint(stored)
  assert run['data.folder_root'] == '/data/images'


def test_an_unreadable_final_record_means_not_finished(tmp_path):
  for text in ('{"step": "4"}', '[4]', '{not json'):
    (tmp_path / 'final.json').write_text(text)
    assert run_record.read_final(str(tmp_path)) is None, text
  (tmp_path / 'final.json').write_text('{"step": 4, "eval": {}}')
  assert run_record.read_final(str(tmp_path))['step'] == 4


def test_a_full_disk_at_the_final_best_save_is_finished_on_restart(
    tmp_path, monkeypatch
):
  """A finished run started over (its checkpoints lost) whose final best
  save fails: its old final.json must not stand for the new end, and the
  restart saves the best."""
  workdir = str(tmp_path / 'run')
  loop.train_and_evaluate(tiny_config(), workdir)
  for name in ('checkpoints', 'best'):
    shutil.rmtree(os.path.join(workdir, name))

  def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, 'No space left on device')

  monkeypatch.setattr(checkpoint.Checkpoints, 'save_best', disk_full)
  with pytest.raises(OSError, match='No space left'):
    loop.train_and_evaluate(tiny_config(), workdir)
  assert not os.path.exists(os.path.join(workdir, 'final.json'))
  monkeypatch.undo()
  result = loop.train_and_evaluate(tiny_config(), workdir)
  assert result.eval_metrics['eval/num_examples'] == 20
  assert os.listdir(os.path.join(workdir, 'best')) == ['4']
  assert run_record.read_final(workdir)['step'] == 4


def _evals(workdir):
  return [r for r in helpers.read_metrics(workdir) if 'eval/top1' in r]


def _finished_step(workdir, step):
  directory = os.path.join(workdir, 'checkpoints', str(step))
  return os.path.isdir(directory) and not os.path.exists(
      os.path.join(workdir, 'final.json')
  )


def test_kill_9_during_the_final_evaluation_is_finished_on_restart(tmp_path):
  """train.py killed while evaluating the last step (its checkpoint saved):
  the restart evaluates and saves the best, then a second restart has
  nothing to do."""
  workdir = str(tmp_path / 'run')
  # A long final evaluation (4000 examples in batches of 8) to kill into.
  slow_eval = ('data.synthetic_eval_examples=4000', 'eval_batch_size=8')
  proc = helpers.start_train(workdir, *slow_eval)
  try:
    deadline = time.monotonic() + 240
    while not _finished_step(workdir, 4) and time.monotonic() < deadline:
      time.sleep(0.005)
    assert proc.poll() is None, (
        'finished before the kill: ' + proc.stderr.read()
    )
    os.kill(proc.pid, signal.SIGKILL)
  finally:
    proc.communicate()
  assert not os.path.exists(os.path.join(workdir, 'final.json'))
  assert not os.listdir(os.path.join(workdir, 'best'))
  assert not _evals(workdir)

  redo = helpers.run_train(workdir, *slow_eval)
  assert redo.returncode == 0, redo.stderr[-3000:]
  assert 'final evaluation or best save did not complete' in redo.stderr
  assert os.listdir(os.path.join(workdir, 'best')) == ['4']
  with open(os.path.join(workdir, 'final.json')) as f:
    final = json.load(f)
  assert final['step'] == 4 and final['eval']['eval/num_examples'] == 4000
  assert [r['step'] for r in _evals(workdir)] == [4]

  again = helpers.run_train(workdir, *slow_eval)
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'Nothing to do: the run finished at step 4' in again.stderr
  assert [r['step'] for r in _evals(workdir)] == [4]
