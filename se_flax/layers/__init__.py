"""Building blocks shared by every se_flax network (all NHWC).

`SqueezeExcite` (squeeze_excite.py) is the paper's SE unit. The other
layers exist because Flax's defaults differ from the reference networks:
symmetric-padding convolution (conv.py), Caffe/PyTorch pooling
(pooling.py), BatchNorm with PyTorch's defaults (norm.py). rules.py holds
the one switch between plain Flax/XLA layers and the CPU derivative rules
of `se_flax.cpu_grads` (`layer_rules`).
"""

from se_flax.layers.common import (
    Dtype,
    ModuleDef,
    check_nhwc,
    he_normal,
    make_divisible,
)
from se_flax.layers.conv import Conv2d, Padding
from se_flax.layers.drop_path import DropPath, block_rates
from se_flax.layers.factories import factories
from se_flax.layers.norm import BN_EPSILON, BN_MOMENTUM, BatchNorm, batch_norm
from se_flax.layers.pooling import (
    adaptive_avg_pool,
    avg_pool,
    global_avg_pool,
    max_pool_ceil,
    max_pool_padded,
)
from se_flax.layers.rules import (
    LAYER_RULES,
    check_layer_rules,
    current_layer_rules,
    layer_rules,
    use_cpu_rules,
)
from se_flax.layers.squeeze_excite import SqueezeExcite, excite_after_norm

__all__ = [
    'BN_EPSILON',
    'BN_MOMENTUM',
    'BatchNorm',
    'Conv2d',
    'DropPath',
    'Dtype',
    'LAYER_RULES',
    'ModuleDef',
    'Padding',
    'SqueezeExcite',
    'adaptive_avg_pool',
    'avg_pool',
    'batch_norm',
    'block_rates',
    'check_layer_rules',
    'check_nhwc',
    'current_layer_rules',
    'excite_after_norm',
    'factories',
    'global_avg_pool',
    'he_normal',
    'layer_rules',
    'make_divisible',
    'max_pool_ceil',
    'max_pool_padded',
    'use_cpu_rules',
]
