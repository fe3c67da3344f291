"""Which square image sizes a network takes, found by tracing it (nothing
is computed): a layer that refuses its input, or a feature map pooled or
strided down to nothing (which would still give NaN logits)."""

from typing import Optional

import jax
import jax.numpy as jnp


def init_shapes(model, size: int):
  """The shapes of `model.init` on one size x size RGB image (NHWC)."""
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return jax.eval_shape(
      lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x
  )


# Sizes tried, smallest first, to name one the network does take.
_PROBE_SIZES = (16, 32, 64, 75, 96, 128, 160, 224, 299)


def _inner_jaxprs(param):
  """The jaxprs a primitive's parameter holds (`cond` holds a tuple)."""
  for item in param if isinstance(param, (tuple, list)) else (param,):
    inner = getattr(item, 'jaxpr', item)  # A ClosedJaxpr or a Jaxpr.
    if hasattr(inner, 'eqns'):
      yield inner


def _has_empty_array(jaxpr) -> bool:
  """Whether any value computed in `jaxpr` (or a jaxpr inside) is empty."""
  for eqn in jaxpr.eqns:
    if any(0 in getattr(v.aval, 'shape', ()) for v in eqn.outvars):
      return True
    for param in eqn.params.values():
      if any(_has_empty_array(inner) for inner in _inner_jaxprs(param)):
        return True
  return False


def trace_problem(model, size: int) -> Optional[Exception]:
  """Why `model` cannot map a size x size image to logits through feature
  maps of at least one pixel, or None (traced only: nothing computed)."""
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  forward = lambda x: model.init_with_output(
      jax.random.PRNGKey(0), x, train=False
  )[0]
  try:
    traced = jax.make_jaxpr(forward)(x)
  except Exception as e:  # pylint: disable=broad-except
    # A layer's refusal (a window larger than its input), or a model field
    # no size can satisfy: told apart by the probe sizes.
    return e
  if _has_empty_array(traced.jaxpr):
    # A map pooled or strided down to nothing still gives (NaN) logits.
    return ValueError('a feature map has no pixel left')
  return None


def smallest_size(model) -> Optional[int]:
  """The smallest of `_PROBE_SIZES` the model takes, or None."""
  return next(
      (s for s in _PROBE_SIZES if trace_problem(model, s) is None), None
  )
