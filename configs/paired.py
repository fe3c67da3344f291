"""A paper Table 2 pair: the SE network and its baseline differ by one flag.

    python train.py --config configs/paired.py:se_resnet50 --workdir DIR
    python train.py --config configs/paired.py:se_resnet50 \\
        --config.model.se=False --workdir DIR      # the plain ResNet-50

The argument is any registered SE model. Table 2 rows: se_resnet50/101/152,
se_resnext50_32x4d, se_resnext101_32x4d (the paper's Caffe networks),
se_vgg16_bn, se_bn_inception, se_inception_resnet_v2; timm's counterparts
(seresnet50, seresnext50_32x4d, ...) work too. Both runs of a pair use the
identical recipe (paper: "identical optimisation schemes"): that of
configs/default.py, with 299 px crops for Inception-ResNet-v2 (eval:
shorter side 352, centre 299). Paper top-1 error, plain -> SE: ResNet-50
24.80 -> 23.29, ResNet-101 23.17 -> 22.38, ResNet-152 22.42 -> 21.57,
ResNeXt-50 22.11 -> 21.10, ResNeXt-101 21.18 -> 20.70, VGG-16 27.02 ->
25.22, BN-Inception 25.38 -> 24.23, Inception-ResNet-v2 20.37 -> 19.80.
The mobile pairs (Table 3) have their own recipe: configs/mobile.py.
"""

from se_flax.train.config import base_config


def get_config(arg: str = 'se_resnet50'):
  config = base_config()
  config.model.name = arg
  if 'inception_resnet' in arg:
    config.data.image_size = 299
    config.data.crop_pct = 299 / 352
  return config
