"""Model names (timm's and the paper's) -> configured linen Modules."""

import dataclasses
import difflib
import functools
from typing import Any, Callable, Mapping, Optional, Union

import flax.linen as nn

from se_flax.layers import SqueezeExcite
from se_flax.models import inception, mobilenet, resnet, shufflenet, vgg

# name -> (module class, its fields). `se` is a dict of SqueezeExcite fields.
_FAMILIES = (
    (resnet.ResNet, resnet.CONFIGS),
    (inception.BNInception, inception.BN_INCEPTION_CONFIGS),
    (inception.InceptionResNetV2, inception.INCEPTION_RESNET_V2_CONFIGS),
    (vgg.VGG, vgg.CONFIGS),
    (mobilenet.MobileNetV1, mobilenet.CONFIGS),
    (shufflenet.ShuffleNetV1, shufflenet.CONFIGS),
)
_MODELS = {
    name: (cls, fields)
    for cls, configs in _FAMILIES
    for name, fields in configs.items()
}
if len(_MODELS) != sum(len(configs) for _, configs in _FAMILIES):
  raise ValueError('Two families register the same model name')

SESpec = Union[None, bool, Mapping[str, Any], Callable[..., nn.Module]]


def list_models() -> list[str]:
  """All registered names, sorted."""
  return sorted(_MODELS)


def model_fields(name: str) -> dict[str, Any]:
  """The registered fields of `name` (a copy), `se` as a dict or None."""
  return dict(_lookup(name)[1])


def _lookup(name: str):
  if name not in _MODELS:
    close = difflib.get_close_matches(name, _MODELS, n=3)
    hint = f' Did you mean {close}?' if close else ''
    raise ValueError(f'Unknown model {name!r}.{hint} See list_models().')
  return _MODELS[name]


def _se_factory(default: Optional[Mapping[str, Any]], se: SESpec):
  """Resolves an `se` override against the model's registered SE fields."""
  if se is None or se is False:
    return None
  if se is True:
    se = {}
  if callable(se):
    return se
  if not isinstance(se, Mapping):
    raise TypeError(
        'se must be None, a bool, a dict of SqueezeExcite fields '
        f'or a module factory, got {type(se).__name__}'
    )
  known = {f.name for f in dataclasses.fields(SqueezeExcite)}
  unknown = set(se) - known
  if unknown:
    raise ValueError(
        f'Unknown SqueezeExcite fields {sorted(unknown)}; '
        f'expected some of {sorted(known - {"parent", "name"})}'
    )
  return functools.partial(SqueezeExcite, **{**(default or {}), **se})


def _check_drop_path(name, cls, known, overrides) -> None:
  """Drops a zero `drop_path_rate` the family lacks; rejects a non-zero one.

  So a config may pass rate 0 to any network, while a non-zero rate fails
  on a family that has no stochastic depth (only `ResNet` has it).
  """
  if 'drop_path_rate' not in overrides or 'drop_path_rate' in known:
    return
  if not overrides['drop_path_rate']:
    del overrides['drop_path_rate']
    return
  raise ValueError(
      f'{name}: drop_path_rate={overrides["drop_path_rate"]!r}, but '
      f'{cls.__name__} has no stochastic depth; only the ResNet family '
      '(resnet*, resnext*, seresnet*, seresnext*, senet154, legacy_* and '
      'the se_* paper names) supports drop_path_rate > 0'
  )


def create_model(name: str, num_classes: int = 1000, **overrides) -> nn.Module:
  """Returns the linen Module registered as `name`.

  Args:
    name: a timm name (`seresnet50`, `legacy_seresnet50`, ...) or a paper
      alias (`se_resnet50` = the Caffe network); see `list_models()`.
    num_classes: classifier width.
    **overrides: module fields to change, e.g. `dtype=jnp.bfloat16`,
      `drop_rate=0.2`, `se_stages=(4,)`. `se` takes None/False (the plain
      baseline), True (the model's SE), a dict of SqueezeExcite fields merged
      onto the model's SE (e.g. `{'reduction': 8, 'use_bias': False}`), or a
      module factory.

  Example: `create_model('se_resnet50', se=None)` is the paper's ResNet-50.
  """
  cls, fields = _lookup(name)
  fields = dict(fields, num_classes=num_classes)
  known = {f.name for f in dataclasses.fields(cls)} - {'parent', 'name'}
  _check_drop_path(name, cls, known, overrides)
  unknown = set(overrides) - known
  if unknown:
    raise ValueError(
        f'{name}: unknown fields {sorted(unknown)}; '
        f'{cls.__name__} has {sorted(known)}'
    )
  se = overrides.pop('se', fields.get('se'))
  if 'se' in known:
    fields['se'] = _se_factory(fields.get('se'), se)
  fields.update(overrides)
  return cls(**fields)
