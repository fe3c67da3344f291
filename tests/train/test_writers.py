"""The writer fan-out: every writer gets each call; no method is invented."""

import pytest

from se_flax.train import writers


class _Recorder:

  def __init__(self):
    self.calls = []

  def write_scalars(self, step, scalars):
    self.calls.append(('scalars', step, dict(scalars)))

  def write_hparams(self, hparams):
    self.calls.append(('hparams', dict(hparams)))

  def flush(self):
    self.calls.append(('flush',))

  def close(self):
    self.calls.append(('close',))


def test_every_writer_gets_every_call():
  a, b = _Recorder(), _Recorder()
  fan = writers.Writers([a, b])
  fan.write_scalars(3, {'loss': 1.5})
  fan.write_hparams({'lr': 0.1})
  fan.flush()
  fan.close()
  expected = [
      ('scalars', 3, {'loss': 1.5}),
      ('hparams', {'lr': 0.1}),
      ('flush',),
      ('close',),
  ]
  assert a.calls == expected and b.calls == expected


def test_a_misspelt_method_fails_even_without_writers():
  # Processes other than 0 have no writers; a typo must fail there too.
  with pytest.raises(AttributeError):
    writers.Writers([]).write_scalar(0, {})
