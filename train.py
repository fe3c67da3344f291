"""Trains an SE network: python train.py --config configs/X.py --workdir DIR.

Overrides go on the command line (`--config.batch_size=512`); the config
is locked, so a misspelt field is an error. Restarting with the same
workdir resumes from its latest checkpoint.
"""

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training config file.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Checkpoints, summaries, config.json.')
flags.mark_flags_as_required(['config', 'workdir'])


class _QuietOrbax(logging.logging.Filter):
  """Keeps Orbax's per-save INFO chatter out of the training log."""

  def filter(self, record):
    return (record.levelno >= logging.WARNING
            or '/orbax/' not in record.pathname)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietOrbax())
  # TensorFlow is only the input pipeline: keep it off the accelerators
  # before it runs a single op.
  if FLAGS.config.data.source != 'synthetic':
    from se_flax.data.tf_setup import hide_accelerators_from_tf
    hide_accelerators_from_tf()
  import jax
  from se_flax.train import loop
  logging.info('JAX process %d/%d, local devices: %s', jax.process_index(),
               jax.process_count(), jax.local_devices())
  loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
