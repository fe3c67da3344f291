"""The choice between plain XLA ops and the CPU derivative rules.

`Conv2d.impl` and `BatchNorm.impl`: 'auto' uses the gradient rules of
`cpu_grads` when the backend is the CPU (decided at trace time) and plain
XLA ops elsewhere; 'xla' uses plain XLA ops everywhere (forward-mode
autodiff needs it on CPU, those rules being reverse-mode only). Max
pooling's CPU rule works in both modes and has no switch.
"""

import jax

LAYER_IMPLS = ('auto', 'xla')


def check_layer_impl(impl: str) -> None:
  if impl not in LAYER_IMPLS:
    raise ValueError(f'layer_impl must be one of {LAYER_IMPLS}, got {impl!r}')


def use_cpu_rules(impl: str) -> bool:
  """Whether a layer with this `impl` uses `cpu_grads` (at trace time)."""
  return impl == 'auto' and jax.default_backend() == 'cpu'
