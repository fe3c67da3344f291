"""`load_pretrained`: a model, its weights and their preprocessing, from a
timm tag on the Hugging Face Hub, a Hub repository, a local file or
directory, or a training workdir."""

import dataclasses
import os
from typing import Any, Callable, Optional

import flax.linen as nn
import numpy as np

from se_flax import convert
from se_flax.models import registry
from se_flax.pretrained import config as config_lib
from se_flax.pretrained import hub
from se_flax.pretrained import labels
from se_flax.pretrained import tags
from se_flax.train import paths

# Weight files of a timm Hub repository, in the order they are tried.
_WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')
_TIMM_SUFFIXES = ('.safetensors', '.pth', '.pt', '.bin')


@dataclasses.dataclass(frozen=True)
class Pretrained:
  """What `load_pretrained` returns.

  Attributes:
    model: the linen Module (`create_model(model_name, num_classes, ...)`).
    variables: `{'params', 'batch_stats'}` as numpy arrays; without
      `params['fc']` when a new `num_classes` was asked for.
    config: the preprocessing and labels of the weights.
    source: what was loaded (a path, or 'hf-hub:repo@revision').
    model_name: the registered model name (timm's architecture name).
  """

  model: nn.Module
  variables: dict[str, Any]
  config: config_lib.PretrainedConfig
  source: str
  model_name: str

  def __iter__(self):
    # `model, variables = load_pretrained(...)` unpacks like a pair.
    return iter((self.model, self.variables))


def list_pretrained(pattern: str = '') -> list[str]:
  """timm tags that load into se_flax models (see `load_pretrained`)."""
  return tags.list_pretrained(pattern)


def load_pretrained(
    source: str,
    *,
    num_classes: Optional[int] = None,
    model_name: Optional[str] = None,
    revision: Optional[str] = None,
    cache_dir: Optional[str] = None,
    **model_overrides,
) -> Pretrained:
  """Loads weights and returns the model, the variables and their config.

  Args:
    source: one of
      - a timm tag, 'seresnet50.a1_in1k' (or 'timm/seresnet50.a1_in1k'), or
        a bare architecture ('seresnet50': timm's default tag); see
        `list_pretrained()`. From the Hugging Face Hub via its cache.
      - 'hf-hub:org/name' or 'org/name': any Hub repository in timm's
        format (model.safetensors + config.json). '@revision' may follow.
      - a local directory with timm's model.safetensors and config.json.
      - a local timm state dict (.safetensors, or .pth/.pt/.bin with torch),
        with `model_name` (an architecture or a tag, whose config is used).
      - an se_flax export (.npz, `python -m se_flax.train.checkpoint`).
      - a training workdir, a local path or an object-store URL such as
        'gs://bucket/run' (its newest intact checkpoint, its config and
        class names).
    num_classes: classifier width wanted; when it differs from the
      weights', the model gets a new head and `variables['params']` has no
      'fc' (initialise it, e.g. with `se_flax.train.finetune`).
    model_name: the architecture, for files that do not say.
    revision: Hub revision (branch, tag or commit), for Hub sources.
    cache_dir: Hub cache directory; default: huggingface_hub's (HF_HOME).
    **model_overrides: `create_model` fields, e.g. `dtype=jnp.bfloat16`.

  Raises:
    PretrainedNotAvailableError: the Hub files are not cached and cannot be
      downloaded; the message names the repository, the file and how to
      fetch them.
    ValueError: an unknown tag, weights that do not fit the model, or a
      damaged or unparsable file (weights, config.json, label_names.json);
      the message names the file.
    CheckpointError: a damaged se_flax export or workdir checkpoint.
  """
  if paths.is_url(source):  # gs://, ...: only training workdirs live there.
    if not _is_workdir(source):
      raise FileNotFoundError(
          f'{source!r} is not a training workdir (no checkpoints/ or best/ '
          'under it); from a URL se_flax loads only training workdirs'
      )
    loaded = _from_workdir(source)
  elif os.path.isdir(source):
    if _is_workdir(source):
      loaded = _from_workdir(source)
    else:
      loaded = _from_timm_directory(source, model_name)
  elif os.path.isfile(source):
    loaded = _from_file(source, model_name)
  elif source.endswith(_TIMM_SUFFIXES + ('.npz',)) or source.startswith(
      ('/', './', '../', '~')
  ):
    raise FileNotFoundError(f'No file or directory at {source!r}')
  else:
    loaded = _from_hub(source, revision, cache_dir)
  variables, cfg = loaded.variables, loaded.config
  weights_classes = _num_classes(variables)
  if num_classes is not None and num_classes != weights_classes:
    variables = dict(variables, params=dict(variables['params']))
    variables['params'].pop('fc', None)
    cfg = cfg.without_labels(num_classes)
  else:
    num_classes = weights_classes
  if loaded.build is not None:
    model = loaded.build(num_classes, model_overrides)
  else:
    model = registry.create_model(
        loaded.name, num_classes=num_classes, **model_overrides
    )
  return Pretrained(model, variables, cfg, loaded.source, loaded.name)


# -- sources ---------------------------------------------------------------


def _num_classes(variables) -> int:
  return int(np.shape(variables['params']['fc']['kernel'])[-1])


@dataclasses.dataclass(frozen=True)
class _Loaded:
  """A source's weights before the model is built.

  `build(num_classes, overrides)` makes the model; by default the registry
  model `name` (a workdir's rebuilds its run's config).
  """

  name: str
  variables: dict[str, Any]
  config: config_lib.PretrainedConfig
  source: str
  build: Optional[Callable[[int, dict], nn.Module]] = None


def _fitted_to(cfg: config_lib.PretrainedConfig, variables):
  """cfg with the weights' class count (a tag's may be another head's);
  timm's ImageNet-1k tags carry no names: the package's are theirs."""
  cfg = dataclasses.replace(cfg, num_classes=_num_classes(variables))
  if cfg.label_names is None and cfg.num_classes == 1000:
    return dataclasses.replace(
        cfg,
        label_names=labels.imagenet_label_names(),
        label_descriptions=labels.imagenet_descriptions(),
    )
  return cfg


def _split_revision(source: str, revision: Optional[str]):
  if '@' in source:
    source, _, at = source.partition('@')
    if revision and revision != at:
      raise ValueError(
          f'Two revisions given: {at!r} in {source!r} and revision={revision!r}'
      )
    revision = at
  return source, revision


def _from_hub(source: str, revision, cache_dir) -> _Loaded:
  source, revision = _split_revision(source, revision)
  source = source.removeprefix('hf-hub:')
  tag = tags.find(source.removeprefix('timm/'))
  if tag is not None:
    if tag.hf_hub_id is None:
      raise hub.PretrainedNotAvailableError(
          f'{tag.name!r} is not on the Hugging Face Hub; timm publishes it '
          f'at {tag.url}. Download that file and load it with '
          f'load_pretrained(PATH, model_name={tag.name!r}) (a .pth needs '
          'torch; or convert it to .safetensors once).'
      )
    repo_id = tag.hf_hub_id
  elif source.count('/') == 1:
    repo_id = source
  else:
    raise ValueError(tags.unknown_tag_message(source))
  config_path = hub.download(
      repo_id,
      'config.json',
      revision=revision,
      cache_dir=cache_dir,
      also=_WEIGHT_FILES[:1],
  )
  arch, cfg = _read_hub_config(config_path, repo_id)
  first_error = None
  for filename in _WEIGHT_FILES:
    try:
      weights = hub.download(
          repo_id,
          filename,
          revision=revision,
          cache_dir=cache_dir,
          also=('config.json',),
      )
      break
    except hub.NoSuchFileError as e:
      first_error = first_error or e
  else:
    raise first_error
  variables = _convert(convert.load_state_dict(weights), arch, weights)
  where = f'hf-hub:{repo_id}' + (f'@{revision}' if revision else '')
  return _Loaded(arch, variables, _fitted_to(cfg, variables), where)


def _read_hub_config(path: str, where: str):
  try:
    arch, cfg = config_lib.from_hub_config(paths.read_json(path))
  except (ValueError, TypeError) as e:
    raise ValueError(f'{where}: bad config.json ({e})') from None
  if arch not in registry.list_models():
    raise ValueError(
        f'{where} holds a timm {arch!r}, which se_flax does not define '
        '(see se_flax.list_models())'
    )
  return arch, cfg


def _convert(state, arch: str, where: str):
  try:
    return convert.from_timm(state, arch)
  except ValueError as e:
    raise ValueError(f'{where}: {e}') from None


def _resolve_model_name(model_name: Optional[str], where: str):
  """`model_name` (architecture or tag) -> (architecture, its config)."""
  if model_name is None:
    raise ValueError(
        f'{where} does not say which network it holds: pass model_name= '
        "(an architecture such as 'seresnet50', or a tag such as "
        "'seresnet50.a1_in1k' whose preprocessing then applies)"
    )
  tag = tags.find(model_name)
  arch = model_name.partition('.')[0]
  if arch not in registry.list_models():
    raise ValueError(f'Unknown model {arch!r}; see se_flax.list_models()')
  if tag is None:
    return arch, config_lib.PretrainedConfig()
  return arch, config_lib.from_pretrained_cfg(tag.pretrained_cfg)


def _from_timm_directory(path: str, model_name) -> _Loaded:
  """A directory of timm's Hub files (e.g. a `hf download --local-dir`)."""
  config_path = os.path.join(path, 'config.json')
  weights = [
      os.path.join(path, f)
      for f in _WEIGHT_FILES
      if os.path.isfile(os.path.join(path, f))
  ]
  if not weights:
    raise FileNotFoundError(
        f'{path} is neither a training workdir (no checkpoints/) nor a timm '
        f'model directory (no {" or ".join(_WEIGHT_FILES)})'
    )
  if os.path.isfile(config_path):
    arch, cfg = _read_hub_config(config_path, path)
  else:
    arch, cfg = _resolve_model_name(model_name, path)
  variables = _convert(convert.load_state_dict(weights[0]), arch, weights[0])
  return _Loaded(arch, variables, _fitted_to(cfg, variables), path)


def _from_file(path: str, model_name) -> _Loaded:
  if path.endswith('.npz'):
    return _from_export(path, model_name)
  if not path.endswith(_TIMM_SUFFIXES):
    raise ValueError(
        f'{path}: expected a timm state dict ({", ".join(_TIMM_SUFFIXES)}) '
        'or an se_flax export (.npz)'
    )
  arch, cfg = _resolve_model_name(model_name, path)
  variables = _convert(convert.load_state_dict(path), arch, path)
  return _Loaded(arch, variables, _fitted_to(cfg, variables), path)


def _from_export(path: str, model_name) -> _Loaded:
  from se_flax.train import checkpoint  # Orbax & co. only for se_flax files.
  from se_flax.train import config as train_config

  variables = checkpoint.load_exported(path)
  meta = checkpoint.read_export_meta(path)
  if 'config' not in meta:  # Written before exports carried their config.
    arch, cfg = _resolve_model_name(model_name, path)
    cfg = dataclasses.replace(cfg, num_classes=_num_classes(variables))
    return _Loaded(arch, variables, cfg, path)
  try:
    config = train_config.from_stored(meta['config'])
  except ValueError as e:
    raise ValueError(f'{path}: unusable run config ({e})') from None
  if model_name and model_name != config.model.name:
    raise ValueError(
        f'{path} holds a {config.model.name!r}, not the '
        f'model_name={model_name!r} asked for'
    )
  return _from_run(config, variables, meta.get('label_names'), path)


def _is_workdir(path: str) -> bool:
  directory = paths.workdir_path(path)
  return (directory / 'checkpoints').is_dir() or (directory / 'best').is_dir()


def _read_label_names(workdir: str) -> Optional[list]:
  from se_flax.train import checkpoint

  path = paths.workdir_path(workdir) / checkpoint.LABEL_NAMES
  if not path.is_file():
    return None
  names = paths.read_json(path)
  if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
    raise ValueError(f'{path}: class names must be a JSON list of strings')
  return names


def _from_run(config, variables, label_names, where: str) -> _Loaded:
  """Weights of an se_flax run, with its model, data config and classes."""
  from se_flax.train import config as train_config

  num_classes = _num_classes(variables)
  if label_names is not None:
    if not isinstance(label_names, list) or not all(
        isinstance(n, str) for n in label_names
    ):
      raise ValueError(f'{where}: class names must be a list of strings')
    if len(label_names) != num_classes:
      raise ValueError(
          f'{where}: {len(label_names)} class names for a '
          f'{num_classes}-class classifier'
      )
  cfg = config_lib.from_data_config(config.data, num_classes, label_names)

  def build(classes, overrides):
    return train_config.build_model(config, classes).clone(**overrides)

  return _Loaded(config.model.name, variables, cfg, where, build)


def _from_workdir(workdir: str) -> _Loaded:
  from se_flax.train import checkpoint
  from se_flax.train import config as train_config

  # The small files first: a bad one fails before the weights are read.
  config = train_config.load_stored(workdir)
  label_names = _read_label_names(workdir)
  variables = checkpoint.load_variables(workdir)
  return _from_run(config, variables, label_names, workdir)
