"""The tiny synthetic training config the train tests share.

Also a config file for the real CLI:
    python train.py --config tests/train/tiny_config.py --workdir DIR
"""

from se_flax.train import config as config_lib


def tiny_config(**overrides):
  """seresnet_tiny, 32 px, 10 classes, batch 16, 4 steps, sync saves."""
  c = config_lib.base_config()
  c.model.name = 'seresnet_tiny'
  c.data.source = 'synthetic'
  c.data.image_size = 32
  c.data.synthetic_num_classes = 10
  c.data.synthetic_train_examples = 64
  c.data.synthetic_eval_examples = 20  # Not a multiple of the batch.
  c.batch_size = 16
  c.learning_rate = 0.1
  c.num_train_steps = 4
  c.log_every_steps = 2
  c.eval_every_epochs = 100.0  # Only at the end.
  c.checkpoint_every_steps = 2
  c.async_checkpoints = False
  for k, v in overrides.items():
    c[k] = v
  return c


def get_config():
  return tiny_config()
