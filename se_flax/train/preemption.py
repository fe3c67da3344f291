"""SIGTERM as a flag that the training loop polls at step boundaries."""

import signal
import threading


class PreemptionWatcher:
  """Turns SIGTERM into a flag that the loop checks at step boundaries.

  A context manager, so the previous handler is always put back.
  """

  def __init__(self):
    self._event = threading.Event()
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM,
                                     lambda *_: self._event.set())
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  @property
  def requested(self) -> bool:
    return self._event.is_set()
