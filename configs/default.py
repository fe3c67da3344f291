"""SE-ResNet-50 on ImageNet with the paper's recipe (Hu et al., §5.1).

    python train.py --config configs/default.py --workdir /tmp/se_resnet50

Batch 1024, lr 0.6 (0.15 per 256 images), momentum 0.9, x0.1 every 30
epochs, 100 epochs, r = 16, 224 px random-resized crops + flips, single
224 crop of the 256-resized image for eval. Paper: 23.29% top-1 error
(Table 2). Weight decay is not stated in the paper: 1e-4, the Caffe
ResNet/SENet solver value. The network is the Caffe SE-ResNet-50 (stride on
the 1x1 conv, ceil-mode max pool; `se_resnet50` = timm `legacy_seresnet50`).
"""

from se_flax.train.config import base_config


def get_config():
  return base_config()
