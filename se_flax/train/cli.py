"""What the command-line entry points share: one-message failures.

An expected failure (bad config, damaged checkpoint or data, busy workdir)
prints one message whose last line names the cause and the path, and the
process exits without the shutdown noise of Orbax's and TensorStore's
background threads (late asyncio callbacks, never-awaited coroutines),
which would otherwise print tracebacks after it.
"""

import logging as std_logging
import os
import sys
import warnings

from absl import logging


def quiet_late_async_errors(unraisable) -> None:
  """`sys.unraisablehook`: drops callbacks that reach a closed event loop."""
  if (isinstance(unraisable.exc_value, RuntimeError)
      and 'Event loop is closed' in str(unraisable.exc_value)):
    logging.debug('Ignored after shutdown: %s', unraisable.exc_value)
    return
  sys.__unraisablehook__(unraisable)


def install_quiet_shutdown() -> None:
  """For a CLI's main(): no late-callback tracebacks, no asyncio chatter."""
  sys.unraisablehook = quiet_late_async_errors
  std_logging.getLogger('asyncio').setLevel(std_logging.CRITICAL)
  warnings.filterwarnings('ignore', message='coroutine .* was never awaited')


def fail(prog: str, error: BaseException, code: int = 1) -> None:
  """Prints `prog: error: Type: message` last, and exits at once."""
  for stream in (sys.stdout, sys.stderr):
    stream.flush()
  sys.stderr.write(f'{prog}: error: {type(error).__name__}: {error}\n')
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access
