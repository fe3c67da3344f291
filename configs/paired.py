"""A paper Table 2 pair: the SE network and its baseline differ by one flag.

    python train.py --config configs/paired.py:se_resnet50 --workdir DIR
    python train.py --config configs/paired.py:se_resnet50 \\
        --config.model.se=False --workdir DIR      # the plain ResNet-50

The argument is any registered SE model: se_resnet50/101/152,
se_resnext50_32x4d/101_32x4d (Caffe networks, the paper's), their timm
counterparts (seresnet50, seresnext50_32x4d, ...), and the other backbones
with SE. Both runs use the identical recipe (paper: "identical optimisation
schemes"): that of configs/default.py. Paper top-1 error, plain -> SE:
ResNet-50 24.80 -> 23.29, ResNet-101 23.17 -> 22.38, ResNeXt-50 22.11 ->
21.10 (Table 2).
"""

from se_flax.train.config import base_config


def get_config(arg: str = 'se_resnet50'):
  config = base_config()
  config.model.name = arg
  return config
