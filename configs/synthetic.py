"""Throughput work on random pixels: no dataset, no TensorFlow.

    python train.py --config configs/synthetic.py --workdir /tmp/synth \\
        --config.model.name=seresnet50 --config.batch_size=256

Trains for `num_train_steps` on synthetic batches made in memory and
evaluates on a small synthetic split; the accuracy means nothing, the
images/s and step-time figures in the log are the point.
"""

from se_flax.train.config import base_config


def get_config():
  config = base_config()
  config.model.name = 'seresnet50'
  config.model.dtype = 'bfloat16'
  config.data.source = 'synthetic'
  config.data.synthetic_eval_examples = 1024
  config.batch_size = 256
  config.num_train_steps = 200
  config.log_every_steps = 20
  config.checkpoint_every_steps = 10_000
  return config
