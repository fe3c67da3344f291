"""The paper's mobile pairs (Table 3): SE-MobileNet and SE-ShuffleNet.

    python train.py --config configs/mobile.py:se_mobilenetv1_100 --workdir D
    python train.py --config configs/mobile.py:se_mobilenetv1_100 \\
        --config.model.se=False --workdir D        # plain 1.0 MobileNet-224
    python train.py --config configs/mobile.py:se_shufflenet_g3 --workdir D

Protocol (docs/paper_notes.md, Mobile models): batch 256, SGD momentum 0.9,
lr 0.1, ~400 epochs, weight decay 4e-5 (v3). The paper divides the lr by 10
on validation-loss plateaus; this config uses a fixed x0.1 at epochs 200,
300 and 350 instead (plateau schedules are not implemented). Paper top-1
error, plain -> SE: MobileNet 28.4 -> 25.3, ShuffleNet 1x (g=3) 32.6 ->
31.0.
"""

from se_flax.train.config import base_config


def get_config(arg: str = 'se_mobilenetv1_100'):
  config = base_config()
  config.model.name = arg
  config.batch_size = 256
  config.learning_rate = 0.1
  config.num_epochs = 400.0
  config.lr_decay_epochs = (200, 300, 350)
  config.weight_decay = 4e-5
  return config
