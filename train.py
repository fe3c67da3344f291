"""Trains an SE network: python train.py --config configs/X.py --workdir DIR.

Overrides go on the command line (`--config.batch_size=512`); the config
is locked, so a misspelt field is an error. Restarting with the same
workdir resumes from its newest intact checkpoint.

Exit status, for schedulers:
  0   finished (num_train_steps reached)
  1   failed; the last line of stderr names the cause and the path
  75  preempted (SIGTERM): the state was saved, run the same command again
"""

import importlib.util
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training config file.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Checkpoints, summaries, config.json.')
flags.mark_flags_as_required(['config', 'workdir'])

EXIT_FAILED = 1
EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL: "try again later".


class _QuietOrbax(logging.logging.Filter):
  """Keeps Orbax's per-save INFO chatter out of the training log."""

  def filter(self, record):
    return (record.levelno >= logging.WARNING
            or '/orbax/' not in record.pathname)


def _quiet_late_async_errors(unraisable) -> None:
  """Drops TensorStore callbacks that fire after a failed restore ended.

  They reach a closed asyncio loop and would print a traceback after the
  real error, which has already been reported.
  """
  if (isinstance(unraisable.exc_value, RuntimeError)
      and 'Event loop is closed' in str(unraisable.exc_value)):
    logging.debug('Ignored after shutdown: %s', unraisable.exc_value)
    return
  sys.__unraisablehook__(unraisable)


def _expected_errors() -> tuple:
  """Failures with a message meant for the user: no traceback for these."""
  from se_flax.train import checkpoint, nonfinite, resume, workdir_lock
  errors = [ValueError, OSError, checkpoint.CheckpointError,
            resume.ResumeMismatchError, workdir_lock.WorkdirInUseError,
            nonfinite.NonFiniteStepError]
  if 'se_flax.data.records' in sys.modules:
    errors.append(sys.modules['se_flax.data.records'].CorruptRecordError)
  return tuple(errors)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietOrbax())
  sys.unraisablehook = _quiet_late_async_errors
  config = FLAGS.config
  # TensorFlow is only the input pipeline (and CLU's summary writer, which
  # imports it on every data source): keep it off the accelerators before
  # it runs a single op.
  if importlib.util.find_spec('tensorflow') is not None:
    from se_flax.data.tf_setup import hide_accelerators_from_tf
    hide_accelerators_from_tf()
  from se_flax.train import loop, multihost
  try:
    # Before anything asks JAX about devices: that starts the backend.
    multihost.initialize_distributed(config)
    logging.info('JAX %s', multihost.layout())
    result = loop.train_and_evaluate(config, FLAGS.workdir)
  except _expected_errors() as e:
    print(f'train.py: error: {type(e).__name__}: {e}', file=sys.stderr,
          flush=True)
    return EXIT_FAILED
  if result.preempted:
    print(f'train.py: preempted at step {int(result.state.step)}; state '
          f'saved in {FLAGS.workdir}. Exit {EXIT_PREEMPTED}: run the same '
          'command to resume.', file=sys.stderr, flush=True)
    return EXIT_PREEMPTED
  return 0


if __name__ == '__main__':
  app.run(main)
