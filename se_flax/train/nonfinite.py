"""`config.nonfinite='stop'`: stopping soon after a non-finite step.

The train step never applies a step whose loss, gradients or new state is
not finite (see `steps.train_step`); this module only decides when the
loop learns of it, without a host round trip per step.
"""

import collections
from typing import Optional

import jax

# The most steps that run after a non-finite one before the run stops
# (flags are read as soon as they are ready, and at the latest this late).
MAX_LAG = 2


class NonFiniteStepError(FloatingPointError):
  """A step was not finite and `config.nonfinite` is 'stop'."""


class FiniteWatch:
  """Reads each step's `finite` flag without stalling the device queue.

  With `config.nonfinite='stop'` a flag is read as soon as it is ready,
  and at the latest when `max_lag` newer steps have been dispatched, so
  the run stops within `max_lag` steps of a non-finite one; `drain()`
  reads all (before anything is saved). With 'skip' nothing is read here.
  """

  def __init__(
      self, enabled: bool, max_lag: int, last_saved: Optional[int], workdir: str
  ):
    self.enabled, self.max_lag = enabled, max_lag
    self.last_saved, self.workdir = last_saved, workdir
    self._pending = collections.deque()

  def push(self, step: int, finite: jax.Array) -> None:
    if self.enabled:
      self._pending.append((step, finite))
      self._check(drain=False)

  def drain(self) -> None:
    self._check(drain=True)

  def _check(self, drain: bool) -> None:
    while self._pending and (
        drain
        or len(self._pending) > self.max_lag
        or self._pending[0][1].is_ready()
    ):
      step, finite = self._pending.popleft()
      if not bool(finite):
        self._stop(step)

  def _stop(self, step: int) -> None:
    if self.last_saved is None:
      saved = 'No checkpoint was saved by this run.'
    else:
      saved = (
          f'The newest checkpoint, step {self.last_saved} in '
          f'{self.workdir}/checkpoints, was saved before it.'
      )
    raise NonFiniteStepError(
        f'Step {step} had a non-finite loss, gradient or new state, and '
        f"config.nonfinite='stop': it was not applied, and training "
        f'stopped within {self.max_lag} steps of it, saving nothing after '
        f'it. {saved} Lower the learning rate, or set '
        "config.nonfinite='skip' to skip such steps."
    )
