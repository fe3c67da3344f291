"""SE-ResNet-50 (timm style) with a modern recipe: cosine, warmup, label
smoothing, bf16 compute, EMA of the weights.

    python train.py --config configs/modern.py --workdir DIR
    python train.py --config configs/modern.py --config.model.se=False ...

Batch 1024, lr 0.4 per 256 (1.6 peak), 5 warmup epochs, cosine over 200
epochs, label smoothing 0.1, weight decay 5e-5 (not on BN/biases), EMA
0.9998 evaluated beside the raw weights. An untuned starting point, not a
reproduction of a published number.
"""

from se_flax.train.config import base_config


def get_config():
  config = base_config()
  config.model.name = 'seresnet50'
  config.model.dtype = 'bfloat16'
  config.lr_schedule = 'cosine'
  config.learning_rate = 0.4
  config.warmup_epochs = 5.0
  config.num_epochs = 200.0
  config.label_smoothing = 0.1
  config.weight_decay = 5e-5
  config.ema_decay = 0.9998
  return config
