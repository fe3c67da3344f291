"""SIGTERM and Ctrl-C as a flag that the training loop polls.

A scheduler's SIGTERM (preemption) and a first Ctrl-C both ask for a save
at the next step boundary and a clean exit; they are ignored while that
save completes, except that a second Ctrl-C aborts at once (exit 130,
nothing saved; the lock of the dead process is taken over on the next
start).
"""

import os
import signal
import threading
from typing import Optional

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _tell(message: str) -> None:
  """Writes to fd 2 from a signal handler, never raising.

  Not through sys.stderr: the handler may run while the main thread is
  inside that stream's write (a re-entrant call raises RuntimeError). And
  stderr may be a pipe whose reader the same Ctrl-C ended (`| tee log`):
  the save matters more than the message.
  """
  try:
    os.write(2, message.encode())
  except OSError:
    pass


class PreemptionWatcher:
  """Turns SIGTERM / SIGINT into a flag checked at step boundaries.

  A context manager, so the previous handlers are always put back; it must
  stay entered until the final save is on disk.
  """

  def __init__(self):
    self._event = threading.Event()
    self._previous = {}
    self.signal_name: Optional[str] = None

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self._event.is_set():
      _tell('Second Ctrl-C: aborting without saving.\n')
      os._exit(130)  # pylint: disable=protected-access
    if not self._event.is_set():
      self.signal_name = signal.Signals(signum).name
      if signum == signal.SIGINT:
        _tell(
            'Ctrl-C: saving at the next step boundary, then '
            'exiting (Ctrl-C again aborts without saving).\n'
        )
    self._event.set()

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signum in _SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  @property
  def requested(self) -> bool:
    return self._event.is_set()
