"""timm / PyTorch state dicts <-> Flax variables.

Layouts: conv OIHW <-> HWIO; linear (out, in) <-> Dense (in, out); the SE
FCs are 1x1 convs `(out, in, 1, 1)` in timm and Dense layers here; BN
weight/bias/running_mean/running_var <-> params scale/bias and batch_stats
mean/var (`num_batches_tracked` is dropped and re-created as zeros).

timm has two key layouts for the same ResNet shapes: `senet.py`
(`layer0.*`, `se_module`, `last_linear`; the Caffe networks, `legacy_*`)
and `resnet.py` (`conv1`, `se`, `fc`). The two compute different functions
(stride placement, max pooling), so a checkpoint of one layout is refused
for a model of the other rather than renamed.

The other timm-backed families have one layout each (`KeyLayout`):
`inception_resnet_v2` (`conv2d_1a.conv`, `repeat_1.3.branch1.0.bn`,
`classif`), `vgg16_bn` (`features.N`, `pre_logits.fc1`, `head.fc`) and
`mobilenetv1_100` (`conv_stem`, `blocks.S.B.conv_dw`, `classifier`).
"""

import dataclasses
import functools
import re
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from se_flax import state_files
from se_flax.models import registry
from se_flax.models.inception import InceptionResNetV2
from se_flax.models.mobilenet import MobileNetV1
from se_flax.models.resnet import ResNet
from se_flax.models.vgg import VGG

# Reading timm/torch files lives in `state_files`; kept here by its old name.
load_state_dict = state_files.load_state_dict

_PARAM_SUFFIX = {
    'kernel': 'weight',
    'scale': 'weight',
    'bias': 'bias',
    'mean': 'running_mean',
    'var': 'running_var',
}
_LEGACY_MARKERS = ('layer0.', '.se_module.', 'last_linear.')
# Parameter shapes do not depend on the image size; this one is valid for
# every family (Inception-ResNet-v2's VALID reductions need >= 75 px).
_INIT_SIZE = 128


@dataclasses.dataclass(frozen=True)
class KeyLayout:
  """How one family names its modules in timm.

  Attributes:
    module_key: Flax module path (without the leaf) -> timm module name.
    classifier: timm module of the classifier (the Flax `fc` Dense).
    hint: optional `keys -> str`, an explanation appended to load errors.
  """

  module_key: Callable[[tuple[str, ...]], str]
  classifier: str
  hint: Optional[Callable[[Any], str]] = None


def _is_legacy_layout(name: str) -> bool:
  """Caffe-style ResNets (ceil-mode stem pool) use timm's senet.py keys."""
  return registry.model_fields(name).get('stem_pool') == 'ceil'


def _resnet_module_key(path: tuple[str, ...], legacy: bool) -> str:
  """Flax module path of a ResNet -> timm module name."""
  head, rest = path[0], path[1:]
  if head == 'stem':
    module = rest[0]
    if legacy:
      return f'layer0.{module}'
    if module == 'conv1' or module == 'bn1':
      return module  # 7x7 stem; the deep stem has conv2/conv3 as well.
    raise KeyError(module)
  if head == 'fc':
    return 'last_linear' if legacy else 'fc'
  stage, block = head[len('stage') :].split('_block')
  names = {
      'downsample_conv': 'downsample.0',
      'downsample_bn': 'downsample.1',
      'se': 'se_module' if legacy else 'se',
  }
  return '.'.join(
      [f'layer{stage}', block] + [names.get(rest[0], rest[0])] + list(rest[1:])
  )


def _resnet_deep_stem_key(path, legacy):
  # timm resnet.py's deep stem is one Sequential (conv, bn, relu) x 3 whose
  # last BN is the top-level `bn1`.
  if not legacy and path[0] == 'stem':
    return {
        'conv1': 'conv1.0',
        'bn1': 'conv1.1',
        'conv2': 'conv1.3',
        'bn2': 'conv1.4',
        'conv3': 'conv1.6',
        'bn3': 'bn1',
    }[path[1]]
  return _resnet_module_key(path, legacy)


def _resnet_layout_hint(name: str, keys) -> str:
  """Explains a legacy (senet.py) vs resnet.py key mismatch."""
  has_legacy = any(
      m in k or k.startswith(m) for k in keys for m in _LEGACY_MARKERS
  )
  if has_legacy and not _is_legacy_layout(name):
    return (
        f'\nThese are timm senet.py (legacy/Caffe) keys, but {name!r} is '
        'a torchvision-style network (stride on the 3x3, padded max '
        'pool): the weights would load and compute a different function. '
        'Use the matching legacy_* model.'
    )
  if not has_legacy and _is_legacy_layout(name):
    return (
        f'\nThese look like timm resnet.py keys, but {name!r} is a '
        'Caffe-style (legacy) network: use the matching timm-style model '
        '(e.g. seresnet50 instead of legacy_seresnet50).'
    )
  return ''


def _resnet_layout(model: ResNet, name: str) -> KeyLayout:
  legacy = _is_legacy_layout(name)
  key = _resnet_deep_stem_key if model.stem == 'deep' else _resnet_module_key
  return KeyLayout(
      functools.partial(key, legacy=legacy),
      'last_linear' if legacy else 'fc',
      functools.partial(_resnet_layout_hint, name),
  )


# timm's Sequential names of the repeated Inception-ResNet blocks.
_IRV2_REPEATS = {
    'block35': 'repeat',
    'block17': 'repeat_1',
    'block8': 'repeat_2',
}


def _irv2_module_key(path: tuple[str, ...]) -> str:
  """`block17_3/branch1_0/conv` -> `repeat_1.3.branch1.0.conv`."""
  head, rest = path[0], path[1:]
  kind, _, index = head.rpartition('_')
  if kind in _IRV2_REPEATS and index.isdigit():
    head = f'{_IRV2_REPEATS[kind]}.{index}'
  rest = [re.sub(r'^(branch\d)_(\d)$', r'\1.\2', part) for part in rest]
  return '.'.join([head] + rest)


def _irv2_layout(model: InceptionResNetV2, name: str) -> KeyLayout:
  del model, name
  return KeyLayout(_irv2_module_key, 'classif')


def _vgg_layout(model: VGG, name: str) -> KeyLayout:
  """timm's `features` Sequential: conv, bn, relu per unit, a pool per stage."""
  del name
  index, first = 0, {}
  for i, widths in enumerate(model.stages, start=1):
    for j in range(1, len(widths) + 1):
      first[f'conv{i}_{j}'] = index
      index += 3
    index += 1

  def module_key(path):
    if path[0] in ('fc1', 'fc2'):
      return f'pre_logits.{path[0]}'
    return f'features.{first[path[0]] + (path[1] == "bn")}'

  return KeyLayout(module_key, 'head.fc')


def _mobilenet_module_key(path: tuple[str, ...]) -> str:
  """`stage3_block2/conv_dw` -> `blocks.3.2.conv_dw`."""
  match = re.fullmatch(r'stage(\d+)_block(\d+)', path[0])
  if match:
    return '.'.join(['blocks', *match.groups(), *path[1:]])
  return '.'.join(path)


def _mobilenet_layout(model: MobileNetV1, name: str) -> KeyLayout:
  del model, name
  return KeyLayout(_mobilenet_module_key, 'classifier')


# Families whose architecture timm has, and how to name their keys. timm
# has no SE variant of VGG, MobileNet v1 or Inception-ResNet-v2 (nor any
# BN-Inception or ShuffleNet v1): those models have no timm layout.
_LAYOUTS = {
    ResNet: _resnet_layout,
    InceptionResNetV2: _irv2_layout,
    VGG: _vgg_layout,
    MobileNetV1: _mobilenet_layout,
}
_SE_IN_TIMM = (ResNet,)


def key_layout(name: str) -> KeyLayout:
  """The timm key layout of the registered model `name`.

  Raises:
    NotImplementedError: timm has no model with this architecture.
  """
  model = registry.create_model(name)
  family = type(model)
  if family not in _LAYOUTS:
    raise NotImplementedError(
        f'{name!r}: timm has no {family.__name__}, so there is no timm key '
        'layout to convert from or to'
    )
  if getattr(model, 'se', None) is not None and family not in _SE_IN_TIMM:
    raise NotImplementedError(
        f'{name!r}: timm has no SE variant of {family.__name__}; convert '
        f'the plain network (se=None) instead'
    )
  return _LAYOUTS[family](model, name)


def _in_se(names: tuple[str, ...]) -> bool:
  # The same rule as stats: an SE module is named `se` or `se_*`.
  return any(n == 'se' or n.startswith('se_') for n in names)


@dataclasses.dataclass(frozen=True)
class _Leaf:
  collection: str
  path: tuple[str, ...]
  flax_shape: tuple[int, ...]
  kind: str  # 'conv', 'se_fc', 'linear' or 'vector'.

  def to_torch(self, x: np.ndarray) -> np.ndarray:
    if self.kind == 'conv':
      return x.transpose(3, 2, 0, 1)
    if self.kind == 'se_fc':
      return x.T[:, :, None, None]
    if self.kind == 'linear':
      return x.T
    return x

  def from_torch(self, x: np.ndarray) -> np.ndarray:
    if self.kind == 'conv':
      return x.transpose(2, 3, 1, 0)
    if self.kind == 'se_fc':
      return x[:, :, 0, 0].T
    if self.kind == 'linear':
      return x.T
    return x

  @property
  def torch_shape(self):
    return self.to_torch(np.empty(self.flax_shape, np.int8)).shape


def timm_layout(name: str, num_classes: int = 1000) -> dict[str, _Leaf]:
  """timm key -> Flax leaf description for the registered model `name`."""
  layout = key_layout(name)
  model = registry.create_model(name, num_classes=num_classes)
  shapes = jax.eval_shape(
      lambda: model.init(
          jax.random.key(0),
          jnp.zeros((1, _INIT_SIZE, _INIT_SIZE, 3)),
          train=False,
      )
  )
  leaves = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(dict(shapes))[0]:
    collection, *names = [k.key for k in path]
    names = tuple(names)
    # Every conv (IRv2's biased 1x1 `conv2d`, VGG's 7x7 `fc1` and 1x1 `fc2`
    # included) is a 4-D Conv2d kernel here; only Dense kernels are 2-D, and
    # those of an SE unit are 1x1 convs in timm.
    if len(leaf.shape) == 4:
      kind = 'conv'
    elif len(leaf.shape) == 2:
      kind = 'se_fc' if _in_se(names) else 'linear'
    else:
      kind = 'vector'
    if names[:-1] == ('fc',):
      module = layout.classifier
    else:
      module = layout.module_key(names[:-1])
    key = f'{module}.{_PARAM_SUFFIX[names[-1]]}'
    leaves[key] = _Leaf(collection, names, tuple(leaf.shape), kind)
  return leaves


def from_timm(state_dict: Mapping[str, Any], name: str) -> dict[str, Any]:
  """Converts a timm state dict of model `name` to Flax variables.

  Args:
    state_dict: timm key -> array (numpy, or torch tensors).
    name: the registered se_flax name (= the timm name for timm models).

  Returns:
    `{'params': ..., 'batch_stats': ...}` as numpy float arrays, for
    `create_model(name, num_classes=N)` where N is read from the weights.

  Raises:
    ValueError: listing missing keys, unexpected keys and shape mismatches.
    NotImplementedError: `name` has no timm counterpart (`key_layout`).
  """
  state = {
      k: v
      for k, v in state_dict.items()
      if not k.endswith('num_batches_tracked')
  }
  key_names = key_layout(name)
  hint = key_names.hint(state) if key_names.hint else ''
  classifier = f'{key_names.classifier}.weight'
  if classifier not in state:
    raise ValueError(
        f'{name}: no classifier weight {classifier!r} in the '
        f'state dict.{hint}'
    )
  num_classes = int(np.shape(state[classifier])[0])
  layout = timm_layout(name, num_classes)
  missing = sorted(set(layout) - set(state))
  unexpected = sorted(set(state) - set(layout))
  mismatched = [
      f'{k}: got {tuple(np.shape(state[k]))}, expected {layout[k].torch_shape}'
      for k in layout
      if k in state and tuple(np.shape(state[k])) != layout[k].torch_shape
  ]
  if missing or unexpected or mismatched:
    parts = [f'Cannot load this state dict into {name!r}:']
    for title, items in (
        ('missing keys', missing),
        ('unexpected keys', unexpected),
        ('shape mismatches', mismatched),
    ):
      if items:
        shown = ', '.join(items[:20]) + (' ...' if len(items) > 20 else '')
        parts.append(f'  {len(items)} {title}: {shown}')
    raise ValueError('\n'.join(parts) + hint)
  variables: dict[str, Any] = {}
  for key, leaf in layout.items():
    node = variables.setdefault(leaf.collection, {})
    for part in leaf.path[:-1]:
      node = node.setdefault(part, {})
    node[leaf.path[-1]] = np.ascontiguousarray(
        leaf.from_torch(state_files.to_numpy(state[key]))
    )
  return variables


def to_timm(variables: Mapping[str, Any], name: str) -> dict[str, np.ndarray]:
  """Converts Flax variables of model `name` back to a timm state dict.

  The result loads into `timm.create_model(name)` with `strict=True`
  (including zero `num_batches_tracked` buffers).
  """
  params = variables['params']
  num_classes = (
      int(np.shape(params['fc']['kernel'])[-1]) if 'fc' in params else 1000
  )
  state = {}
  for key, leaf in timm_layout(name, num_classes).items():
    node = variables[leaf.collection]
    for part in leaf.path:
      node = node[part]
    value = np.asarray(node)
    if value.shape != leaf.flax_shape:
      raise ValueError(
          f'{name}: {leaf.collection}/{"/".join(leaf.path)} has '
          f'shape {value.shape}, expected {leaf.flax_shape}'
      )
    state[key] = np.ascontiguousarray(leaf.to_torch(value))
    if key.endswith('.running_var'):
      state[key[: -len('running_var')] + 'num_batches_tracked'] = np.array(
          0, np.int64
      )
  return state


def load_timm_checkpoint(path: str, name: str, **overrides):
  """Reads a timm checkpoint file; returns `(model, variables)`."""
  variables = from_timm(load_state_dict(path), name)
  num_classes = variables['params']['fc']['kernel'].shape[-1]
  return (
      registry.create_model(name, num_classes=num_classes, **overrides),
      variables,
  )
