"""What the command-line entry points share: one-message failures and a
readable log.

An expected failure (bad config, damaged checkpoint or data, busy workdir)
prints one message whose last line names the cause and the path, and the
process exits without the shutdown noise of Orbax's and TensorStore's
background threads (late asyncio callbacks, never-awaited coroutines),
which would otherwise print tracebacks after it.

The log shows what a person running the command needs (layout, progress,
eval, saves, real problems); libraries' INFO chatter (TensorFlow's C++
start-up lines, JAX's backend probing, TFDS's dataset-info loads, Orbax's
per-save steps) appears from `--verbosity=1` (`-v 1`) on; so do the
tracebacks of Orbax's background threads, whose errors reach the caller
anyway.

Output may outlive its reader: behind `cmd 2>&1 | tee log`, Ctrl-C to the
terminal's process group ends `tee` too. `guard_output_streams` makes
stdout and stderr go to /dev/null from then on, so that neither a log line
nor Python's flush at exit can change how the command ends.
"""

import contextlib
import io
import logging as std_logging
import os
import sys
import tempfile
import warnings

from absl import logging


def quiet_late_async_errors(unraisable) -> None:
  """`sys.unraisablehook`: drops callbacks that reach a closed event loop."""
  if isinstance(
      unraisable.exc_value, RuntimeError
  ) and 'Event loop is closed' in str(unraisable.exc_value):
    logging.debug('Ignored after shutdown: %s', unraisable.exc_value)
    return
  sys.__unraisablehook__(unraisable)


def install_quiet_shutdown() -> None:
  """For a CLI's main(): no late-callback tracebacks, no asyncio chatter,
  no BrokenPipeError once the reader of its output has gone."""
  guard_output_streams()
  sys.unraisablehook = quiet_late_async_errors
  std_logging.getLogger('asyncio').setLevel(std_logging.CRITICAL)
  warnings.filterwarnings('ignore', message='coroutine .* was never awaited')


# Where (by file: absl routes several libraries' records through one
# logger) records are chatter at the default verbosity, and the level from
# which they are shown: Orbax's per-save steps, JAX's backend probing and
# gcsfs's cache notes are INFO; TFDS's are INFO and expected warnings
# (a manual-dir build without a test split, a variant without info yet).
_CHATTY_SOURCES = {
    '/orbax/': std_logging.WARNING,
    '/jax/_src/xla_bridge': std_logging.WARNING,
    '/gcsfs/': std_logging.WARNING,
    '/tensorflow_datasets/': std_logging.ERROR,
}


# Warnings that are expected, not problems: Orbax reads each item's
# optional metadata file on restore and warns where it never wrote one.
_EXPECTED_WARNINGS = (('/orbax/', 'Metadata file does not exist'),)


# Where errors come with a traceback that says nothing more to a user:
# Orbax logs each failing background thread's (a full disk: 300+ lines),
# and the error itself reaches the caller, which names the cause and path.
_TRACEBACKS_HIDDEN = ('/orbax/',)


def _is_expected_warning(record) -> bool:
  # std logging levels: absl's constants (WARNING == -1) are another scale.
  return record.levelno < std_logging.ERROR and any(
      source in record.pathname and str(record.msg).startswith(message)
      for source, message in _EXPECTED_WARNINGS
  )


class _ExpectedWarnings(std_logging.Filter):

  def filter(self, record):
    return not _is_expected_warning(record)


class _QuietLibraries(std_logging.Filter):

  def filter(self, record):
    if _is_expected_warning(record):
      return False
    if record.exc_info and any(
        source in record.pathname for source in _TRACEBACKS_HIDDEN
    ):
      # The record is shared by every handler: all show it as one line.
      record.exc_info, record.exc_text = None, None
    for source, shown_from in _CHATTY_SOURCES.items():
      if source in record.pathname:
        return record.levelno >= shown_from
    return True


def quiet_library_logs(verbosity: int) -> None:
  """Below `verbosity` 1, drops the chatter of `_CHATTY_SOURCES` and the
  `_EXPECTED_WARNINGS`; everything else, se_flax's own INFO included, stays."""
  if verbosity < 1:
    # Commands without absl.app (argparse: predict, the analysis) log
    # through the std 'absl' logger but not through absl's handler.
    for where in (logging.get_absl_handler(), std_logging.getLogger('absl')):
      if not any(isinstance(f, _QuietLibraries) for f in where.filters):
        where.addFilter(_QuietLibraries())


@contextlib.contextmanager
def expected_warnings_hidden():
  """Within the block, drops the `_EXPECTED_WARNINGS` (for library calls
  such as `se_flax.load_variables`); the filter goes when the block ends."""
  # Orbax logs through absl's logger: a filter there sees each record once,
  # whatever handlers a notebook or an application has installed.
  absl_logger = std_logging.getLogger('absl')
  expected = _ExpectedWarnings()
  absl_logger.addFilter(expected)
  try:
    yield
  finally:
    absl_logger.removeFilter(expected)


def import_tensorflow(verbosity: int):
  """Imports TensorFlow; below `verbosity` 1 without its start-up lines.

  TensorFlow's C++ library prints them to fd 2 before its log level is
  read (TF_CPP_MIN_LOG_LEVEL does not hide them), so fd 2 is held aside
  during the import and replayed only if the import fails.
  """
  if verbosity >= 1 or 'tensorflow' in sys.modules:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    return tf
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as held:
    os.dup2(held.fileno(), 2)
    try:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
    except BaseException:
      os.dup2(saved, 2)
      held.seek(0)
      sys.stderr.buffer.write(held.read())
      raise
    finally:
      os.dup2(saved, 2)
      os.close(saved)
  return tf


class _ReaderGoneToDevNull(io.FileIO):
  """The file of stdout or stderr; /dev/null once its reader has gone.

  Python ignores SIGPIPE, so a write to a pipe without a reader raises
  BrokenPipeError, from wherever it happens to be: a log line in the
  middle of the final save, the last message, the flush at exit (which
  then turns the exit code into 120). Here the descriptor itself is
  pointed at /dev/null, for this and every later write (C++ libraries'
  too); what was written is dropped, as it would have been anyway.
  """

  def write(self, data):
    try:
      return super().write(data)
    except BrokenPipeError:
      discard_output(self.fileno())
      return memoryview(data).nbytes


def discard_output(fd: int) -> None:
  """Points `fd` at /dev/null: later writes, the flush at exit included,
  go nowhere instead of failing on a pipe whose reader has gone."""
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, fd)
  os.close(devnull)


def guard_output_streams() -> None:
  """For a CLI's main(), first: writes to stdout or stderr never raise
  because the reader of the pipe behind them has gone."""
  for name in ('stdout', 'stderr'):
    stream = getattr(sys, name)
    # Only the interpreter's own streams: a test's capture or a notebook's
    # replacement is left alone (and a second call changes nothing).
    if stream is None or stream is not getattr(sys, f'__{name}__'):
      continue
    try:
      stream.flush()
    except BrokenPipeError:
      pass  # The new stream's first write finds it again.
    guarded = io.TextIOWrapper(
        io.BufferedWriter(
            _ReaderGoneToDevNull(stream.fileno(), 'w', closefd=False)
        ),
        encoding=stream.encoding,
        errors=stream.errors,
        line_buffering=stream.line_buffering,
        write_through=stream.write_through,
    )
    setattr(sys, name, guarded)
    absl_handler = logging.get_absl_handler().python_handler
    if absl_handler.stream is stream:  # absl took sys.stderr at import.
      absl_handler.stream = guarded


def fail(prog: str, error: BaseException, code: int = 1) -> None:
  """Prints `prog: error: Type: message` last, and exits at once with
  `code`, whether or not anyone still reads stderr."""
  try:
    for stream in (sys.stdout, sys.stderr):
      stream.flush()
    sys.stderr.write(f'{prog}: error: {type(error).__name__}: {error}\n')
    sys.stderr.flush()
  except OSError:
    pass  # The reader of the pipe has gone: the exit code still tells.
  os._exit(code)  # pylint: disable=protected-access
