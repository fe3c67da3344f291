"""What every se_flax network shares: its common fields and its classifier.

Each family (resnet.py, inception.py, vgg.py, mobilenet.py, shufflenet.py)
subclasses `Network`, adds its own architecture fields and builds its
layers with `self.layer_factories(train)`.
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from se_flax import layers
from se_flax.layers import ModuleDef


class Network(nn.Module, kw_only=True):
  """Fields every network has (keyword-only: each family's own come first).

  Attributes:
    num_classes: classifier width.
    se: SqueezeExcite factory, or None for the plain network.
    drop_rate: dropout before the classifier (training only).
    bn_momentum, bn_epsilon: BatchNorm settings (Flax convention: PyTorch's
      momentum 0.1 is 0.9 here).
    dtype: compute dtype (e.g. bfloat16); params stay `param_dtype` and the
      logits are float32.
    param_dtype: parameter dtype.
  """

  num_classes: int = 1000
  se: Optional[ModuleDef] = None
  drop_rate: float = 0.0
  bn_momentum: float = layers.BN_MOMENTUM
  bn_epsilon: float = layers.BN_EPSILON
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def layer_factories(self, train: bool):
    """`(conv, norm, se)` with this network's dtypes and BN settings."""
    return layers.factories(
        train,
        se=self.se,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        bn_momentum=self.bn_momentum,
        bn_epsilon=self.bn_epsilon,
    )

  def classify(
      self, features: jax.Array, *, train: bool, dropout: bool = True
  ) -> jax.Array:
    """Dropout (`drop_rate`), then `fc`: (N, C) -> (N, classes) float32.

    Call it from the compact `__call__`: `fc` is then a direct child of the
    network, the flat name the timm converters map.
    """
    x = features
    if dropout:
      x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
    x = nn.Dense(
        self.num_classes,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name='fc',
    )(x)
    return x.astype(jnp.float32)
