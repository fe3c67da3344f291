"""What every se_flax network shares: its common fields and its classifier.

Each family (resnet.py, inception.py, vgg.py, mobilenet.py, shufflenet.py)
subclasses `Network`, adds its own architecture fields and builds its
layers with `self.layer_factories(train)`.

A family that defines `backbone` (and `feature_info`) inherits the compact
`__call__` below and with it the parts of the network as methods, the
same layers under the same names (one module definition, one parameter
tree):

    maps = model.apply(variables, x, train=False, method='features')
    pooled = model.apply(variables, x, train=False, method='pre_logits')
    logits = model.apply(variables, pooled, train=False, method='head')

`features` are timm's `features_only` outputs (`feature_info()` gives
their channels, strides and timm module names); `head(pre_logits(x))` is
`model(x)`.
"""

import numbers
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from se_flax import layers
from se_flax.layers import ModuleDef

PARTS = ('all', 'features', 'pre_logits', 'head')


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

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, part: str = 'all'):
    """Runs the network, or one part of it.

    Args:
      x: (N, H, W, 3) images; for `part='head'` (N, C) pre-logits.
      train: batch statistics and dropout (training) or running averages.
      part: 'all' (images -> logits), 'features' (images -> stage maps),
        'pre_logits' (images -> pooled features) or 'head' (pooled
        features -> logits).

    Returns:
      'all', 'head': (N, num_classes) float32 logits. 'features': the list
      of (N, H / r, W / r, C) maps of `feature_info()`, in `dtype`.
      'pre_logits': (N, C) in `dtype`.
    """
    if part not in PARTS:
      raise ValueError(f'part must be one of {PARTS}, got {part!r}')
    if part == 'head':
      if x.ndim != 2:
        raise ValueError(
            f'{type(self).__name__} head expects (N, C) pre-logits, got '
            f'{tuple(x.shape)}'
        )
      return self.classify(x, train=train)
    layers.check_nhwc(x, type(self).__name__)
    maps = self.backbone(x.astype(self.dtype), train=train)
    if part == 'features':
      return maps
    x = self.pool(maps[-1], train=train)
    if part == 'pre_logits':
      return x
    return self.classify(x, train=train)

  def backbone(self, x: jax.Array, *, train: bool) -> list[jax.Array]:
    """(N, H, W, 3) -> the `feature_info()` maps; the last one feeds `pool`.

    Called from `__call__`, so its layers are direct children of the
    network. Families that define their own `__call__` leave it out.
    """
    raise NotImplementedError(
        f'{type(self).__name__} does not expose its stages (no backbone)'
    )

  def pool(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Last feature map (N, h, w, C) -> pre-logits (N, C): global average."""
    del train  # Families with a pooling head (VGG's ConvMlp) use it.
    return layers.global_avg_pool(x)

  @nn.nowrap
  def feature_info(self) -> list[dict[str, Any]]:
    """timm's `feature_info`: per map `num_chs`, `reduction`, `module`."""
    raise NotImplementedError(
        f'{type(self).__name__} has no feature_info; feature extraction '
        'covers the families that define `backbone`'
    )

  def features(
      self,
      x: jax.Array,
      *,
      train: bool,
      out_indices: Optional[Sequence[int]] = None,
  ) -> list[jax.Array]:
    """Stage outputs: timm's `features_only=True` model, NHWC.

    Args:
      x: (N, H, W, 3) images.
      train: as for `__call__` (BN statistics update with
        `mutable=['batch_stats']`).
      out_indices: indices into `feature_info()`, increasing (timm's
        order); None for all of them (timm's default).

    Returns:
      One (N, H / reduction, W / reduction, num_chs) array per index. Every
      stage runs; under jit XLA drops the ones nobody reads.
    """
    self._require_backbone()
    maps = self(x, train=train, part='features')
    return [maps[i] for i in _checked_indices(out_indices, len(maps))]

  def pre_logits(self, x: jax.Array, *, train: bool) -> jax.Array:
    """(N, H, W, 3) images -> (N, C) pooled features, before dropout + fc."""
    self._require_backbone()
    return self(x, train=train, part='pre_logits')

  def head(self, x: jax.Array, *, train: bool) -> jax.Array:
    """(N, C) pre-logits -> (N, num_classes) float32: dropout, then `fc`."""
    self._require_backbone()
    return self(x, train=train, part='head')

  def _require_backbone(self):
    if type(self).backbone is Network.backbone:
      raise NotImplementedError(
          f'{type(self).__name__} has no features / pre_logits / head '
          'methods yet: it defines its own __call__, not `backbone`'
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


def _checked_indices(out_indices, count: int) -> list[int]:
  """`out_indices` (None: all) as increasing indices in [0, count)."""
  if out_indices is None:
    return list(range(count))
  if isinstance(out_indices, numbers.Integral) or not all(
      isinstance(i, numbers.Integral) and not isinstance(i, bool)
      for i in out_indices
  ):
    raise TypeError(
        f'out_indices must be a sequence of ints, got {out_indices!r}'
    )
  bad = [i for i in out_indices if not -count <= i < count]
  if bad:
    raise ValueError(
        f'out_indices {bad} out of range: the network has {count} feature '
        f'maps (0..{count - 1})'
    )
  indices = [int(i) % count for i in out_indices]
  if not indices or any(a >= b for a, b in zip(indices, indices[1:])):
    raise ValueError(
        'out_indices must be non-empty and increasing (timm returns the '
        f'maps in network order), got {tuple(out_indices)}'
    )
  return indices
