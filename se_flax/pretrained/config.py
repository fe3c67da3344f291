"""The preprocessing a set of weights expects, as timm's `pretrained_cfg`.

Read from a Hugging Face Hub `config.json` (timm's format), from se_flax's
table of timm tags, or from a training workdir's data config.
"""

import dataclasses
from typing import Any, Mapping, Optional

from se_flax.constants import MEAN_RGB, STDDEV_RGB

# timm's defaults for a field its pretrained_cfg leaves out.
_DEFAULT_CROP_PCT = 0.875


@dataclasses.dataclass(frozen=True)
class PretrainedConfig:
  """How images must look to these weights (timm's `pretrained_cfg`).

  Attributes:
    input_size: training side, pixels (square NHWC inputs).
    test_input_size: the side timm evaluates at, if it differs.
    crop_pct / test_crop_pct: centre crop fraction of the shorter side at
      `input_size` / `test_input_size`.
    interpolation: 'bilinear' or 'bicubic' (PIL filters).
    crop_mode: 'center' (timm's eval transform; the only mode used here).
    mean, std: RGB statistics on the [0, 1] scale.
    num_classes: classifier width; 0 when the weights have no head.
    label_names: class id -> unique name (ImageNet: synset id), or None.
    label_descriptions: class id -> human-readable name, or None.
  """

  input_size: int = 224
  test_input_size: Optional[int] = None
  crop_pct: float = _DEFAULT_CROP_PCT
  test_crop_pct: Optional[float] = None
  interpolation: str = 'bilinear'
  crop_mode: str = 'center'
  mean: tuple[float, float, float] = MEAN_RGB
  std: tuple[float, float, float] = STDDEV_RGB
  num_classes: int = 1000
  label_names: Optional[tuple[str, ...]] = None
  label_descriptions: Optional[tuple[str, ...]] = None

  def eval_size(self, use_test_size: bool = True) -> int:
    """Side of the eval crop: timm's `resolve_data_config(use_test_size)`."""
    if use_test_size and self.test_input_size:
      return self.test_input_size
    return self.input_size

  def eval_crop_pct(self, use_test_size: bool = True) -> float:
    if use_test_size and self.test_crop_pct:
      return self.test_crop_pct
    return self.crop_pct

  def without_labels(self, num_classes: int) -> 'PretrainedConfig':
    """The same preprocessing for a new head of `num_classes`."""
    return dataclasses.replace(
        self, num_classes=num_classes, label_names=None, label_descriptions=None
    )

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _side(size) -> Optional[int]:
  """timm's (3, H, W) -> H; only square inputs exist among the tags."""
  if size is None:
    return None
  if isinstance(size, int):
    return size
  *_, height, width = size
  if height != width:
    raise ValueError(f'Only square inputs are supported, got {size}')
  return int(height)


def from_pretrained_cfg(cfg: Mapping[str, Any]) -> PretrainedConfig:
  """A timm `pretrained_cfg` dict (hub config.json or tag table)."""
  kwargs = dict(
      input_size=_side(cfg.get('input_size')) or 224,
      test_input_size=_side(cfg.get('test_input_size')),
      crop_pct=cfg.get('crop_pct') or _DEFAULT_CROP_PCT,
      test_crop_pct=cfg.get('test_crop_pct'),
      interpolation=cfg.get('interpolation') or 'bilinear',
      crop_mode=cfg.get('crop_mode') or 'center',
      mean=tuple(cfg.get('mean') or MEAN_RGB),
      std=tuple(cfg.get('std') or STDDEV_RGB),
      num_classes=int(cfg.get('num_classes', 1000)),
  )
  names = cfg.get('label_names')
  if isinstance(names, Mapping):  # timm allows {id: name} when ids have gaps.
    names = None
  kwargs['label_names'] = tuple(names) if names else None
  # timm: {label name: description}; here, by class id like the names.
  descriptions = cfg.get('label_descriptions')
  if isinstance(descriptions, Mapping) and names:
    kwargs['label_descriptions'] = tuple(descriptions.get(n, n) for n in names)
  return PretrainedConfig(**kwargs)


def from_hub_config(
    config_json: Mapping[str, Any],
) -> tuple[str, PretrainedConfig]:
  """Parses timm's hub `config.json`; returns `(architecture, config)`.

  Both of timm's formats: the nested one (`architecture`, `num_classes`,
  `pretrained_cfg`, `label_names`, ...) and the older flat one.
  """
  if not isinstance(config_json, Mapping):
    raise ValueError(
        f'Not a timm config.json: a JSON {type(config_json).__name__}, '
        'not an object'
    )
  if 'architecture' not in config_json:
    raise ValueError(
        'Not a timm config.json: it has no "architecture" field (keys: '
        f'{sorted(config_json)})'
    )
  cfg = dict(config_json.get('pretrained_cfg') or config_json)
  for key in ('num_classes', 'label_names', 'label_descriptions'):
    if key in config_json:
      cfg[key] = config_json[key]
  return config_json['architecture'], from_pretrained_cfg(cfg)


def from_data_config(
    data: Mapping[str, Any], num_classes: int, label_names=None
) -> PretrainedConfig:
  """The eval preprocessing of an se_flax training run's `config.data`."""
  return PretrainedConfig(
      input_size=int(data['image_size']),
      test_input_size=data.get('eval_image_size') or None,
      crop_pct=float(data.get('crop_pct') or _DEFAULT_CROP_PCT),
      interpolation=data.get('interpolation') or 'bilinear',
      num_classes=num_classes,
      label_names=tuple(label_names) if label_names else None,
  )
