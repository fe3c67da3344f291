"""Feature extraction: timm's `features_only` maps, pre-logits and head.

The parts are methods of the one network module (`base.Network`), so they
run the same layers on the same parameter tree as the classifier:

    model = se_flax.create_model('seresnet50')
    maps = model.apply(variables, x, train=False, method='features')
    # [(N, H/2, W/2, 64), (N, H/4, W/4, 256), .., (N, H/32, W/32, 2048)]
    pooled = model.apply(variables, x, train=False, method='pre_logits')
    logits = model.apply(variables, pooled, train=False, method='head')

`features(x, train=..., out_indices=(1, 2, 3, 4))` keeps the maps at
strides 4..32 only (timm's `out_indices`). Inside another Flax module,
hold the network as a submodule and call `self.backbone.features(x,
train=train)`: its parameters sit under the submodule's name with the
classifier's tree, so a converted timm checkpoint loads unchanged.

`pre_logits` stops before the classifier's dropout, which `head` applies:
`head(pre_logits(x)) == model(x)` in training mode too (timm's
`forward_head(..., pre_logits=True)` applies the dropout first).
"""

from typing import Any, Union

import flax.linen as nn

from se_flax.models import base, registry


def feature_info(
    model: Union[str, nn.Module], **create_kwargs
) -> list[dict[str, Any]]:
  """timm's `feature_info` of a network: one dict per map of `features`.

  Args:
    model: a registered name (see `list_models()`) or a network module.
    **create_kwargs: passed to `create_model` when `model` is a name.

  Returns:
    `[{'num_chs': C, 'reduction': stride, 'module': timm module name}, ..]`
    in network order, as timm's `model.feature_info` (e.g. for
    seresnet50: act1 at 2, then layer1..layer4 at 4, 8, 16, 32).
  """
  if isinstance(model, str):
    model = registry.create_model(model, **create_kwargs)
  if not isinstance(model, base.Network):
    raise TypeError(
        'feature_info expects a model name or an se_flax network, got '
        f'{type(model).__name__}'
    )
  return model.feature_info()
