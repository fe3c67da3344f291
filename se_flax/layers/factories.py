"""The `(conv, norm, se)` factories a model builds once and passes down."""

import functools
from typing import Optional

from se_flax.layers.common import Dtype, ModuleDef
from se_flax.layers.conv import Conv2d
from se_flax.layers.norm import BN_EPSILON, BN_MOMENTUM, batch_norm


def factories(
    train: bool,
    *,
    se: Optional[ModuleDef],
    dtype: Optional[Dtype],
    param_dtype: Dtype,
    bn_momentum: float = BN_MOMENTUM,
    bn_epsilon: float = BN_EPSILON,
):
  """The `(conv, norm, se)` factories a model builds once and passes down.

  Each carries the compute dtype and parameter dtype; `norm` the BN mode
  (`use_running_average=not train`), momentum and epsilon; `se` is None for
  the plain network.
  """
  conv = functools.partial(Conv2d, dtype=dtype, param_dtype=param_dtype)
  norm = batch_norm(
      train,
      momentum=bn_momentum,
      epsilon=bn_epsilon,
      dtype=dtype,
      param_dtype=param_dtype,
  )
  if se is not None:
    se = functools.partial(se, dtype=dtype, param_dtype=param_dtype)
  return conv, norm, se
