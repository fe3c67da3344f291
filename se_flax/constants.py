"""Constants that every part of se_flax shares, with no dependencies.

ImageNet's per-channel RGB mean and standard deviation, in [0, 1] pixel
units (timm's IMAGENET_DEFAULT_MEAN / _STD): the normalisation of every
model here and of timm's weights.
"""

MEAN_RGB = (0.485, 0.456, 0.406)
STDDEV_RGB = (0.229, 0.224, 0.225)
