"""Trains an SE network: python train.py --config configs/X.py --workdir DIR.

Overrides go on the command line (`--config.batch_size=512`); the config
is locked, so a misspelt field is an error. Restarting with the same
workdir resumes from its newest intact checkpoint.

Exit status, for schedulers:
  0   finished (num_train_steps reached)
  1   failed; the last line of stderr names the cause and the path
  75  preempted (SIGTERM): the state was saved, run the same command again
  130 Ctrl-C: the state was saved (a second Ctrl-C aborts without saving)
They hold behind a pipe too (`train.py ... 2>&1 | tee log`), whose reader
the same signal to the process group ends: output then goes nowhere.
"""

import importlib.util
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Training config file.', lock_config=True
)
flags.DEFINE_string('workdir', None, 'Checkpoints, summaries, config.json.')
flags.DEFINE_bool(
    'tune_runtime',
    True,
    'se_flax.runtime.configure(): on CPU, glibc keeps freed '
    'memory and XLA keeps its own convolutions '
    '(PERFORMANCE.md). --notune_runtime leaves both as they '
    'are.',
)
flags.mark_flags_as_required(['config', 'workdir'])

EXIT_FAILED = 1
EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL: "try again later".
EXIT_INTERRUPTED = 130  # The shell's code for Ctrl-C.


def _expected_errors() -> tuple:
  """Failures with a message meant for the user: no traceback for these."""
  from se_flax.train import checkpoint, nonfinite, workdir_lock
  # ValueError covers config errors and resume.ResumeMismatchError;
  # CheckpointError every checkpoint failure, NoIntactCheckpointError too.
  errors = [
      ValueError,
      OSError,
      checkpoint.CheckpointError,
      workdir_lock.WorkdirInUseError,
      nonfinite.NonFiniteStepError,
  ]
  if 'se_flax.data.records' in sys.modules:
    errors.append(sys.modules['se_flax.data.records'].CorruptRecordError)
  return tuple(errors)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from se_flax import runtime
  from se_flax.train import cli
  # Before anything is written: output piped to a reader that goes away
  # (Ctrl-C to `train.py | tee log` ends tee too) must not decide the exit.
  cli.guard_output_streams()
  # First: the allocator and XLA_FLAGS must be set before any thread of
  # JAX or TensorFlow allocates.
  settings = runtime.configure() if FLAGS.tune_runtime else None
  cli.quiet_library_logs(FLAGS.verbosity)
  cli.install_quiet_shutdown()
  config = FLAGS.config
  # TensorFlow is only the input pipeline (and CLU's summary writer, which
  # imports it on every data source): keep it off the accelerators before
  # it runs a single op.
  if importlib.util.find_spec('tensorflow') is not None:
    cli.import_tensorflow(FLAGS.verbosity)
    from se_flax.data.tf_setup import hide_accelerators_from_tf

    hide_accelerators_from_tf()
  from se_flax.train import loop, multihost

  try:
    # Before anything asks JAX about devices: that starts the backend.
    multihost.initialize_distributed(config)
    logging.info(
        'JAX %s; %s',
        multihost.layout(),
        settings.describe() if settings else 'runtime not tuned',
    )
    result = loop.train_and_evaluate(config, FLAGS.workdir)
  except _expected_errors() as e:
    cli.fail('train.py', e, EXIT_FAILED)
  if not result.preempted:
    return 0
  # Decided before anything is printed: the message may have no reader.
  code = EXIT_INTERRUPTED if result.stop_signal == 'SIGINT' else EXIT_PREEMPTED
  print(
      f'train.py: {result.stop_signal}: stopped at step '
      f'{int(result.state.step)}, state saved in {FLAGS.workdir}. Exit '
      f'{code}: run the same command to resume.',
      file=sys.stderr,
      flush=True,
  )
  return code


if __name__ == '__main__':
  app.run(main)
