"""The default log's filter: libraries' chatter out, their real problems and
everything of se_flax's in."""

import logging

from se_flax.train import cli


def _record(path, level, message='message'):
  return logging.LogRecord('absl', level, path, 1, message, None, None)


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
