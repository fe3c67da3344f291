"""Quickstart: a tiny SE-ResNet on a tiny ImageNet, on a CPU, in minutes.

    python train.py --config configs/quickstart.py --workdir /tmp/quickstart

Makes (or reuses) a 10-class ImageNet in ImageNet's own archive format under
/tmp/se_flax_tiny_imagenet, prepares it with TFDS's imagenet2012 builder,
trains `seresnet_tiny` at 64 px, evaluates on all 170 validation images
and checkpoints. No network, no dataset download. The accuracy it reaches
is stated in the README (a benchmark figure, not a test).
"""

from se_flax.train.config import base_config


def get_config():
  config = base_config()
  config.model.name = 'seresnet_tiny'
  config.data.source = 'tiny_imagenet'
  config.data.image_size = 64
  config.data.shuffle_buffer = 1024
  config.data.cache = True
  config.batch_size = 64
  config.learning_rate = 0.1
  config.lr_schedule = 'cosine'
  config.warmup_epochs = 1.0
  config.num_epochs = 30.0
  config.weight_decay = 5e-5
  config.label_smoothing = 0.1
  config.log_every_steps = 20
  config.eval_every_epochs = 10.0
  config.checkpoint_every_steps = 100
  return config
