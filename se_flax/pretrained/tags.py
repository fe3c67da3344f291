"""timm's pretrained tags that load into se_flax models (`timm_tags.json`).

The table is generated from timm by `tools/make_pretrained_tags.py`: where
timm publishes each tag (a Hugging Face Hub repository, or only a URL), its
pretrained config, and timm's published ImageNet top-1 by eval size.
"""

import dataclasses
import difflib
import functools
import importlib.resources
import json
from typing import Any, Optional


@dataclasses.dataclass(frozen=True)
class Tag:
  """One timm tag, e.g. `seresnet50.a1_in1k`.

  Attributes:
    name: 'architecture.tag'.
    architecture: the timm (= se_flax) model name.
    hf_hub_id: Hub repository, e.g. 'timm/seresnet50.a1_in1k', or None.
    url: where timm downloads it when it is not on the Hub.
    pretrained_cfg: timm's pretrained_cfg fields.
    top1: timm's published ImageNet top-1 (%) by eval image size.
    default: the tag timm loads for the bare architecture name.
  """

  name: str
  architecture: str
  hf_hub_id: Optional[str]
  url: Optional[str]
  pretrained_cfg: dict[str, Any]
  top1: dict[int, float]
  default: bool


@functools.cache
def _table() -> dict[str, Tag]:
  text = (
      importlib.resources.files('se_flax.pretrained')
      .joinpath('timm_tags.json')
      .read_text(encoding='utf-8')
  )
  tags = {}
  for name, entry in json.loads(text)['tags'].items():
    entry = dict(entry)
    tags[name] = Tag(
        name=name,
        architecture=name.partition('.')[0],
        hf_hub_id=entry.pop('hf_hub_id'),
        url=entry.pop('url'),
        top1={int(k): v for k, v in entry.pop('top1').items()},
        default=entry.pop('default'),
        pretrained_cfg=entry,
    )
  return tags


def list_pretrained(pattern: str = '') -> list[str]:
  """Tags that load into a registered model, sorted; `pattern` filters
  by substring (e.g. 'seresnet')."""
  return sorted(n for n in _table() if pattern in n)


def default_tag(architecture: str) -> Optional[Tag]:
  """The tag timm means by the bare architecture name, if any."""
  for tag in _table().values():
    if tag.architecture == architecture and tag.default:
      return tag
  return None


def find(name: str) -> Optional[Tag]:
  """`'seresnet50.a1_in1k'` or a bare `'seresnet50'` (timm's default tag)."""
  table = _table()
  if name in table:
    return table[name]
  return default_tag(name) if '.' not in name else None


def unknown_tag_message(name: str) -> str:
  close = difflib.get_close_matches(name, list(_table()), n=3, cutoff=0.6)
  hint = f' Did you mean {close}?' if close else ''
  return (
      f'{name!r} is not a pretrained tag se_flax knows, a Hub repository '
      '(org/name), a local file or a training workdir.'
      f'{hint} See se_flax.list_pretrained().'
  )
