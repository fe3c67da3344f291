"""se_flax networks as Flax NNX modules, and their weights back to linen.

    from flax import nnx
    from se_flax import nnx as se_nnx
    module, config = se_nnx.load_pretrained('seresnet50.a1_in1k')
    logits = module(images_nhwc)                 # eval: running averages
    module.train()                               # or module(x, train=True)
    optimizer = nnx.Optimizer(module, optax.sgd(0.01), wrt=nnx.Param)
    variables = se_nnx.to_linen_variables(module)  # -> to_timm, exports

`Network` holds the linen network (static) and its weights as NNX state:
`params` (`nnx.Param`) and `batch_stats` (`nnx.BatchStat`), nested dicts
with linen's module names, so `nnx.state(module, nnx.Param)['params']` has
the same keys as linen's `variables['params']`. A call runs the linen
network's `apply`; in training mode it also writes the new BatchNorm
running averages into the `BatchStat` variables in place, which `nnx.jit`,
`nnx.grad` and `nnx.Optimizer` carry like any NNX state.

Why not `flax.nnx.bridge.ToNNX`: (1) weights enter it only through
`lazy_init`, an eager linen `init` whose random weights are then thrown
away (40 s wall for seresnet_tiny on a busy 2-core CPU; more for big
networks); (2) in training mode each call needs `mutable=['batch_stats']`
passed (without it linen refuses to update the running averages), and the
updates come back as new Variable objects; (3) it spreads each
collection's leaves over one attribute per top-level submodule, so getting
linen's variables back goes through the bridge's private converters. The
module below uses only public NNX API, keeps linen's layout, and loads
weights without running the network.

Layer rules: the linen layers read `se_flax.layers.layer_rules` when they
are traced, so wrap the first call of an `nnx.jit` function in
`with se_flax.layers.layer_rules('off'):` for the plain layers; by default
('auto') training on the CPU backend uses the CPU gradient rules. Both
compute the same function.
"""

from typing import Any, Mapping, Optional

from flax import linen as nn
from flax import nnx
from flax import traverse_util
import jax
import jax.numpy as jnp

from se_flax import pretrained as pretrained_lib
from se_flax.models import image_sizes
from se_flax.models import registry

_COLLECTIONS = {'params': nnx.Param, 'batch_stats': nnx.BatchStat}


def _is_variable(x) -> bool:
  return isinstance(x, nnx.Variable)


def _as_variables(kind, tree: Mapping[str, Any]) -> dict[str, Any]:
  """A nested dict of arrays -> the same dict of `kind` Variables."""
  return jax.tree.map(lambda a: kind(jnp.asarray(a)), dict(tree))


def _values(tree) -> dict[str, Any]:
  """A nested dict of Variables -> the same dict of their arrays."""
  return jax.tree.map(lambda v: v.get_value(), tree, is_leaf=_is_variable)


class Network(nnx.Module):
  """A linen se_flax network with its weights as NNX state (NHWC input).

  Attributes:
    model: the linen Module (static: part of `nnx.jit`'s graph key).
    params: linen's `params` tree as `nnx.Param` variables.
    batch_stats: linen's `batch_stats` tree as `nnx.BatchStat` variables.
    rngs: `nnx.Rngs` whose 'dropout' stream (or 'default') feeds dropout
      and stochastic depth in training mode; None if the network has none.
    use_running_average: linen's `not train` (eval mode) when a call does
      not say; `module.train()` / `module.eval()` set it.
  """

  def __init__(
      self,
      model: nn.Module,
      variables: Mapping[str, Any],
      *,
      rngs: Optional[nnx.Rngs] = None,
      use_running_average: bool = True,
  ):
    unknown = set(variables) - set(_COLLECTIONS)
    if unknown or 'params' not in variables:
      raise ValueError(
          f'variables has collections {sorted(variables)}; expected '
          "'params' and optionally 'batch_stats'"
      )
    self.model = model
    self.params = nnx.data(_as_variables(nnx.Param, variables['params']))
    self.batch_stats = nnx.data(
        _as_variables(nnx.BatchStat, variables.get('batch_stats', {}))
    )
    self.rngs = rngs
    self.use_running_average = use_running_average

  def __call__(self, x: jax.Array, *, train: Optional[bool] = None, **kwargs):
    """(N, H, W, 3) float images -> (N, num_classes) float32 logits.

    Args:
      x: images, NHWC, normalised as the weights expect.
      train: batch statistics (updating `batch_stats` in place) and
        dropout; None: `not self.use_running_average`.
      **kwargs: passed to the linen `__call__`, e.g. `part='features'`.
    """
    if train is None:
      train = not self.use_running_average
    variables = self.linen_variables()
    if not train:
      return self.model.apply(variables, x, train=False, **kwargs)
    out, updates = self.model.apply(
        variables,
        x,
        train=True,
        mutable=['batch_stats'],
        rngs=self._train_rngs(),
        **kwargs,
    )
    jax.tree.map(
        lambda var, new: var.set_value(new),
        self.batch_stats,
        dict(updates.get('batch_stats', {})),
        is_leaf=_is_variable,
    )
    return out

  def linen_variables(self) -> dict[str, Any]:
    """`{'params', 'batch_stats'}` of the current values (JAX arrays)."""
    return {
        'params': _values(self.params),
        'batch_stats': _values(self.batch_stats),
    }

  def _train_rngs(self) -> dict[str, jax.Array]:
    # Rngs fall back to their 'default' stream; with neither stream (or no
    # Rngs) no key is passed, and linen names the layer that wanted one.
    streams = set(self.rngs or ())
    if not streams & {'dropout', 'default'}:
      return {}
    return {'dropout': self.rngs.dropout()}


def to_nnx(
    model: nn.Module,
    variables: Mapping[str, Any],
    *,
    rngs: Optional[nnx.Rngs] = None,
) -> Network:
  """A linen network and its `{'params', 'batch_stats'}` as a `Network`.

  Arrays are copied into JAX arrays; `variables` is not changed.
  """
  return Network(model, variables, rngs=rngs)


def to_linen_variables(module: Network) -> dict[str, Any]:
  """`{'params', 'batch_stats'}` of `module`: linen's tree and keys (JAX
  arrays), for `model.apply`, `se_flax.convert.to_timm` and the exports."""
  if not isinstance(module, Network):
    raise TypeError(
        f'to_linen_variables takes an se_flax.nnx.Network, got '
        f'{type(module).__name__}'
    )
  return module.linen_variables()


def _init_variables(model: nn.Module, key: jax.Array, size: Optional[int]):
  """Fresh linen variables of `model`, initialised under `jax.jit` (an
  eager init dispatches every layer's op one by one)."""
  size = size or image_sizes.smallest_size(model)
  if size is None:
    raise ValueError(f'{type(model).__name__}: found no input size it takes')
  x = jnp.zeros((1, size, size, 3), jnp.float32)
  init = jax.jit(lambda key, x: model.init(key, x, train=False))
  return init(key, x)


def create_model(
    name: str,
    *,
    rngs: nnx.Rngs,
    num_classes: int = 1000,
    input_size: Optional[int] = None,
    **overrides,
) -> Network:
  """A freshly initialised registry network as a `Network` (eval mode).

  Args:
    name: a registry name (`se_flax.list_models()`).
    rngs: `rngs.params()` initialises the weights; the module keeps `rngs`
      for dropout in training.
    num_classes: classifier width.
    input_size: square image size used to initialise; default the
      smallest the network takes (the weights' shapes do not depend on it).
    **overrides: linen module fields, as for `se_flax.create_model`.
  """
  model = registry.create_model(name, num_classes=num_classes, **overrides)
  variables = _init_variables(model, rngs.params(), input_size)
  return Network(model, variables, rngs=rngs)


def _with_missing(model, variables, rngs) -> dict[str, Any]:
  """`variables` completed with fresh leaves (a new head) where it lacks
  some of the model's."""
  fresh = traverse_util.flatten_dict(
      _init_variables(model, rngs.params(), None)
  )
  given = traverse_util.flatten_dict(dict(variables))
  return traverse_util.unflatten_dict({**fresh, **given})


def load_pretrained(
    source: str, *, rngs: Optional[nnx.Rngs] = None, **kwargs
) -> tuple[Network, Any]:
  """`se_flax.load_pretrained(source, **kwargs)` as `(Network, config)`.

  Args:
    source: anything `se_flax.load_pretrained` takes (a timm tag, a Hub
      repository, a local file or directory, an export, a workdir).
    rngs: for dropout in training, and to initialise a new classifier
      when `num_classes` differs from the weights' (required then).
    **kwargs: `se_flax.load_pretrained`'s, e.g. `num_classes`,
      `model_name`, model field overrides.

  Returns:
    The module in eval mode and the weights' `PretrainedConfig` (mean and
    std on the [0, 1] scale, input size, labels).
  """
  pretrained = pretrained_lib.load_pretrained(source, **kwargs)
  variables = pretrained.variables
  if 'fc' not in variables['params']:
    if rngs is None:
      raise ValueError(
          f'load_pretrained({source!r}): num_classes='
          f"{kwargs.get('num_classes')} differs from the weights', so the "
          'classifier is new; pass rngs=nnx.Rngs(seed) to initialise it'
      )
    variables = _with_missing(pretrained.model, variables, rngs)
  return Network(pretrained.model, variables, rngs=rngs), pretrained.config
