"""Checks the analysis command makes before its long pass over the data.

Each expected failure is one line naming the argument or path, the cause
and what was expected; `expected_errors` lists the exception types the
command prints that way (`train.cli.fail`) instead of a traceback.
"""

import argparse
import importlib.util
import os
import sys
from typing import Callable

from se_flax.train import paths


def int_at_least(minimum: int) -> Callable[[str], int]:
  """An argparse `type`: an integer >= `minimum`, else argparse's one-line
  usage error naming the argument and the range."""

  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      value = None
    if value is None or value < minimum:
      raise argparse.ArgumentTypeError(
          f'expected an integer >= {minimum}, got {text!r}'
      )
    return value

  return parse


def check_output_dir(path: str, argument: str) -> None:
  """Raises OSError (one line) unless `path` is, or can be made, a
  writable directory. Creates nothing that stays: a probe directory is
  made and removed where the first write will happen.
  """
  path = os.path.abspath(path)
  existing, problem = paths.first_write_problem(path)
  if isinstance(problem, NotADirectoryError):
    raise NotADirectoryError(
        f'{argument} {path}: {existing} is not a directory; expected a '
        'directory to write (or a path one can be made at)'
    )
  if problem is not None:
    raise PermissionError(
        f'{argument} {path}: cannot write in {existing} '
        f'({problem.strerror}); expected a writable directory'
    )


def data_of_config_file(path: str):
  """The `data` field of a config file's `get_config()`; one-line errors
  for a missing file and for any failure of its code."""
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'--config {path}: no such file; expected a Python config file '
        'with get_config()'
    )
  try:
    spec = importlib.util.spec_from_file_location('data_config', path)
    if spec is None:
      raise ValueError('not a Python file')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config().data
  # A user's file can fail in any way; each is a one-line error.
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise ValueError(
        f'--config {path}: cannot read its config.data '
        f'({type(e).__name__}: {e})'
    ) from None


def expected_errors() -> tuple[type[BaseException], ...]:
  """Failures with a message meant for the user: no traceback for these.

  ValueError: arguments, config, names, data (folder) errors; OSError:
  paths, the Hub, a full disk; ImportError: an optional package missing
  for a format; CheckpointError: a damaged workdir checkpoint.
  """
  from se_flax.train import checkpoint

  errors = [
      ValueError,
      OSError,
      ImportError,
      NotImplementedError,
      checkpoint.CheckpointError,
  ]
  if 'se_flax.data.records' in sys.modules:
    errors.append(sys.modules['se_flax.data.records'].CorruptRecordError)
  return tuple(errors)
