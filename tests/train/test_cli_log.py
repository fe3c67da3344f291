"""The default log's filter: libraries' chatter out, their real problems and
everything of se_flax's in."""

import logging
import os
import shlex
import subprocess
import sys

import pytest
from etils import epath

import se_flax
from se_flax.train import checkpoint, cli

from tests.train import helpers

_SITE = '/venv/lib/python3.11/site-packages'
_NO_METADATA = 'Metadata file does not exist'


def _record(path, level, message='message', exc_info=None):
  return logging.LogRecord('absl', level, path, 1, message, None, exc_info)


def test_library_chatter_is_dropped_and_problems_are_kept():
  keep = cli._QuietLibraries().filter
  site = '/venv/lib/python3.11/site-packages'
  assert not keep(_record(f'{site}/orbax/checkpoint/manager.py', logging.INFO))
  assert keep(_record(f'{site}/orbax/checkpoint/manager.py', logging.WARNING))
  assert not keep(
      _record(
          f'{site}/orbax/checkpoint/_src/path/format_utils.py',
          logging.WARNING,
          'Metadata file does not exist: /run/checkpoints/2/state/x',
      )
  )
  assert not keep(_record(f'{site}/jax/_src/xla_bridge.py', logging.INFO))
  assert not keep(
      _record(f'{site}/tensorflow_datasets/core/file_utils.py', logging.WARNING)
  )
  assert keep(
      _record(f'{site}/tensorflow_datasets/core/file_utils.py', logging.ERROR)
  )
  assert keep(_record('/work/se_flax/train/loop.py', logging.INFO))
  assert keep(_record('/work/se_flax/train/loop.py', logging.DEBUG))


def _exc_info():
  try:
    raise ValueError('RESOURCE_EXHAUSTED: No space left on device')
  except ValueError:
    return sys.exc_info()


def test_orbax_thread_tracebacks_become_one_line_and_others_stay_whole():
  keep = cli._QuietLibraries().filter
  orbax = _record(
      f'{_SITE}/orbax/checkpoint/_src/futures/future.py',
      logging.ERROR,
      '_SignalingThread.run() raised an exception',
      _exc_info(),
  )
  assert keep(orbax)  # The error is shown...
  shown = logging.Formatter().format(orbax)
  assert 'Traceback' not in shown and len(shown.splitlines()) == 1  # ...alone.
  ours = _record('/work/se_flax/train/loop.py', logging.ERROR, 'x', _exc_info())
  assert keep(ours)
  assert 'Traceback' in logging.Formatter().format(ours)


def _orbax_record(message):
  return _record(
      f'{_SITE}/orbax/checkpoint/_src/metadata/checkpoint.py',
      logging.WARNING,
      message,
  )


def test_expected_warnings_are_hidden_within_the_block_only(
    caplog, monkeypatch
):
  absl_logger = logging.getLogger('absl')
  # Without the filters an in-process CLI test (quiet_library_logs) may
  # have left on this worker's shared logger.
  monkeypatch.setattr(absl_logger, 'filters', [])
  filters = list(absl_logger.filters)
  expected = f'{_NO_METADATA}: /run/checkpoints/2/state/_CHECKPOINT_METADATA'
  with caplog.at_level(logging.WARNING, logger='absl'):
    with pytest.raises(KeyError):
      with cli.expected_warnings_hidden():
        absl_logger.handle(_orbax_record(expected))
        absl_logger.handle(_orbax_record('A real Orbax problem'))
        raise KeyError('an error leaves the block')
    absl_logger.handle(_orbax_record(expected))  # After: no filter left.
  assert [r.getMessage() for r in caplog.records] == [
      'A real Orbax problem',
      expected,
  ]
  assert absl_logger.filters == filters


def test_load_variables_keeps_orbax_expected_warnings_out(
    tiny_se_workdir, caplog, monkeypatch
):
  # Without the filters an in-process CLI test may have left.
  monkeypatch.setattr(logging.getLogger('absl'), 'filters', [])
  filters = list(logging.getLogger('absl').filters)
  with caplog.at_level(logging.WARNING):
    variables = se_flax.load_variables(tiny_se_workdir)
    se_flax.load_variables(tiny_se_workdir, best=True)
    # A real error still surfaces, from inside the hidden block.
    with pytest.raises(ValueError, match='has no EMA weights'):
      se_flax.load_variables(tiny_se_workdir, ema=True)
  assert set(variables) == {'params', 'batch_stats'}
  assert not [r for r in caplog.records if _NO_METADATA in r.getMessage()]
  assert logging.getLogger('absl').filters == filters
  # The control: the same read outside the block does warn (else this test
  # would pass for an Orbax that stopped warning).
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    checkpoint.read_meta(_newest_step_dir(tiny_se_workdir))
    checkpoint._read_numpy(  # pylint: disable=protected-access
        _newest_step_dir(tiny_se_workdir) / 'state', ('params',)
    )
  assert [r for r in caplog.records if _NO_METADATA in r.getMessage()]


def _newest_step_dir(workdir):
  directory = epath.Path(workdir) / 'checkpoints'
  return directory / str(max(int(d.name) for d in directory.iterdir()))


# A file-size limit stands in for a full disk: the checkpoint's data files
# (about 1 MB) fail the way they do on a full one (EFBIG for ENOSPC), in
# Orbax's background threads; the small files (config, metrics, XLA's
# cache entries of ~300 kB) still fit.
_FILE_LIMIT_KB = 512


def test_a_full_disk_during_a_save_is_one_line_without_orbax_tracebacks(
    tmp_path,
):
  workdir = str(tmp_path / 'run')
  command = helpers.train_command(
      workdir,
      'num_train_steps=2',
      'checkpoint_every_steps=1',
      'async_checkpoints=True',  # Where Orbax's threads fail (300+ lines).
  )
  failed = subprocess.run(
      ['bash', '-c', f'ulimit -f {_FILE_LIMIT_KB}; exec {shlex.join(command)}'],
      cwd=helpers.ROOT,
      env=dict(helpers.train_env(), XLA_FLAGS=''),  # One device: faster.
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert failed.returncode == 1, failed.stderr[-3000:]
  last = helpers.last_line(failed.stderr)
  assert last.startswith('train.py: error: ') and 'File too large' in last
  assert os.path.join(workdir, 'checkpoints', '1') in last
  lines = failed.stderr.splitlines()
  assert not [l for l in lines if l.startswith(('Traceback', '  File "'))]
  assert len(lines) < 40, failed.stderr  # Was 355.
