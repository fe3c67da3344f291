"""ImageNet-1k class names, shipped with the package (no download)."""

import functools
import importlib.resources


@functools.cache
def _imagenet() -> tuple[tuple[str, ...], tuple[str, ...]]:
  text = (
      importlib.resources.files('se_flax.pretrained')
      .joinpath('imagenet_classes.tsv')
      .read_text(encoding='utf-8')
  )
  rows = [line.split('\t') for line in text.splitlines() if line]
  return tuple(r[0] for r in rows), tuple(r[1] for r in rows)


def imagenet_label_names() -> tuple[str, ...]:
  """The 1000 synset ids in classifier order ('n01440764', ...)."""
  return _imagenet()[0]


def imagenet_descriptions() -> tuple[str, ...]:
  """The 1000 WordNet lemmas in classifier order ('tench, Tinca tinca')."""
  return _imagenet()[1]
