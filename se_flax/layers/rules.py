"""The one switch between plain Flax/XLA layers and the CPU derivative rules.

The rules (`se_flax.cpu_grads`: a matmul-shaped 1x1 convolution gradient,
a closed-form BatchNorm gradient, BatchNorm and SE as one layer) make the
train step on XLA's CPU backend several times faster and compute the same
function. Models, their fields, converters and checkpoints know nothing of
them: the layers read this switch when they are traced.

- 'auto' (default): the rules on the CPU backend, plain layers elsewhere.
- 'off': plain layers everywhere (`nn.BatchNorm`, `lax.dot_general` /
  `conv_general_dilated`, `lax.reduce_window`), e.g. for forward-mode
  autodiff on CPU (the rules are reverse-mode only) or for export.

This is the codebase's one piece of process state, set in one place:
`train_and_evaluate` sets it from `config.layer_rules` for its run;
notebooks use `with se_flax.layers.layer_rules('off'): ...` around the
first call (the trace) of a jitted function. Like any trace-time setting
it is not part of `jax.jit`'s cache key: a function already traced keeps
the rules it was traced with, so jit a new function after switching.
"""

import contextlib
import contextvars

import jax

LAYER_RULES = ('auto', 'off')

_current = contextvars.ContextVar('se_flax_layer_rules', default='auto')


def check_layer_rules(setting: str) -> None:
  if setting not in LAYER_RULES:
    raise ValueError(
        f'layer_rules must be one of {LAYER_RULES}, got {setting!r}'
    )


@contextlib.contextmanager
def layer_rules(setting: str):
  """Within the block, layers traced use `setting` ('auto' or 'off')."""
  check_layer_rules(setting)
  token = _current.set(setting)
  try:
    yield
  finally:
    _current.reset(token)


def current_layer_rules() -> str:
  return _current.get()


def use_cpu_rules() -> bool:
  """Whether a layer traced now uses `cpu_grads`' rules."""
  return _current.get() == 'auto' and jax.default_backend() == 'cpu'
