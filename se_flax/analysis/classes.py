"""Which classes the excitation analysis shows: names people type -> ids.

    resolve_classes(['goldfish', 'plane'], names, descriptions)  # [1, 404]
    default_classes(stats)  # Reports which, and why, with `report`.

A name is a class id ('1'), a label name (a folder's name; ImageNet's
synset id 'n01443537'), a description or one of its lemmas ('goldfish').
Where ImageNet's lemma is not what people mean, the meant class wins and
one line says which synset was chosen: the paper's "plane" (Figs. 6-8) is
an aircraft, ImageNet's 'plane' lemma the carpenter's plane (n03954731),
which stays reachable by its synset id or 'carpenter's plane'.
"""

import dataclasses
from typing import Callable, Optional, Sequence

import numpy as np

from se_flax.analysis.statistics import GateStatistics

PAPER_CLASSES = ('goldfish', 'pug', 'plane', 'cliff')  # Figs. 6-7.
NUM_DEFAULT_CLASSES = len(PAPER_CLASSES)


@dataclasses.dataclass(frozen=True)
class _Meant:
  """A name whose ImageNet lemma is not the class people mean by it."""

  label_name: str  # The synset meant.
  why: str  # Why, and how to ask for the other reading.


_AIRCRAFT = _Meant(
    'n02690373',
    "the aircraft (the paper's Fig. 7); ImageNet's 'plane' lemma is the "
    "carpenter's plane: give n03954731 for it, n04552348 for warplane",
)
_MEANT = {'plane': _AIRCRAFT, 'airplane': _AIRCRAFT, 'aeroplane': _AIRCRAFT}


def _lookup(token: str, names, descriptions) -> list[int]:
  """Ids matching `token` in the first tier that has any: label name,
  description, first lemma, any lemma (all lower case)."""
  lemmas = [[t.strip() for t in d.split(',')] for d in descriptions]
  tiers = (
      [k for k, n in enumerate(names) if n == token],
      [k for k, d in enumerate(descriptions) if d == token],
      [k for k, ls in enumerate(lemmas) if ls[0] == token],
      [k for k, ls in enumerate(lemmas) if token in ls],
  )
  return next((tier for tier in tiers if tier), [])


def _describe(k: int, label_names, label_descriptions) -> str:
  name = label_names[k] if label_names else ''
  description = label_descriptions[k] if label_descriptions else ''
  return f'{k} ({name}: {description})'


def _resolve_one(
    token: str, label_names, label_descriptions
) -> tuple[int, Optional[str]]:
  """(class id, a note saying which class a re-read name chose, or None)."""
  names = [n.lower() for n in label_names or ()]
  descriptions = [d.lower() for d in label_descriptions or ()]
  num = len(names) or len(descriptions)
  t = token.strip().lower()
  if t.isdigit() and (not num or int(t) < num):
    return int(t), None
  meant = _MEANT.get(t)
  if meant and t not in names and meant.label_name in names:
    k = names.index(meant.label_name)
    label = _describe(k, label_names, label_descriptions)
    return k, f'Class {token!r} is {label}: {meant.why}'
  found = _lookup(t, names, descriptions)
  if len(found) == 1:
    return found[0], None
  if found:
    choices = ', '.join(
        _describe(k, label_names, label_descriptions) for k in found
    )
    raise ValueError(
        f'Class {token!r} is ambiguous: {choices}; give one of these ids or '
        'label names'
    )
  known = 'no class names' if not num else f'{num} named classes'
  raise ValueError(
      f'Unknown class {token!r} (the dataset has {known}); give a class id, '
      'a label name (ImageNet: a synset id such as n01443537) or a '
      'description'
  )


def resolve_classes(
    wanted: Sequence[str],
    label_names: Optional[Sequence[str]],
    label_descriptions: Optional[Sequence[str]] = None,
    report: Callable[[str], None] = print,
) -> list[int]:
  """Class ids for names (see the module docstring).

  A lemma shared by several classes (ImageNet's 'crane') is an error that
  lists them. 'plane' (also 'airplane', 'aeroplane') is the airliner
  (n02690373) where the labels have it, and `report` gets one line saying
  so; a dataset's own class named 'plane' is taken as it is.

  Raises:
    ValueError: an unknown or ambiguous name.
  """
  ids = []
  for token in wanted:
    k, note = _resolve_one(token, label_names, label_descriptions)
    if note:
      report(note)
    ids.append(k)
  return ids


def _paper_classes_present(seen, label_names, label_descriptions):
  """(ids of the paper's classes with examples, notes on them, the paper's
  names without examples)."""
  present, notes, absent = [], [], []
  for name in PAPER_CLASSES:
    try:
      k, note = _resolve_one(name, label_names, label_descriptions)
    except ValueError:  # Not a class of this dataset at all.
      absent.append(name)
      continue
    if seen[k] > 0 and k not in present:
      present.append(k)
      notes += [note] if note else []
    else:
      absent.append(name)
  return present, notes, absent


def default_classes(
    stats: GateStatistics,
    report: Callable[[str], None] = print,
    count: int = NUM_DEFAULT_CLASSES,
) -> list[int]:
  """The classes to show without --classes: ones with examples.

  The paper's goldfish, pug, plane and cliff where `stats.seen` has
  examples of them, then the most populous other classes (ties: the lower
  id) up to `count`; `report` gets one line saying which were chosen and
  why. Fewer than `count` where fewer classes have examples.
  """
  seen = np.asarray(stats.seen)
  chosen, notes, absent = _paper_classes_present(
      seen, stats.label_names, stats.label_descriptions
  )
  by_size = sorted(np.flatnonzero(seen > 0), key=lambda k: (-seen[k], k))
  fill = [int(k) for k in by_size if k not in chosen][: count - len(chosen)]
  parts = []
  if chosen:
    parts.append(f"the paper's {_labels(stats, chosen)}")
  if fill:
    sizes = sorted({int(seen[k]) for k in fill}, reverse=True)
    images = '-'.join(str(n) for n in dict.fromkeys((sizes[-1], sizes[0])))
    plural = 'es' if len(fill) > 1 else ''
    other = ' other' if chosen else ''
    parts.append(
        f'the {len(fill)} most populous{other} class{plural} ({images} '
        f'images each): {_labels(stats, fill)}'
    )
  if not parts:
    report('No class has examples in this data: no class to show')
  else:
    verb = 'has' if len(absent) == 1 else 'have'
    why = (
        f"; the paper's {', '.join(absent)} {verb} no examples here"
        if absent
        else ''
    )
    report(f'Classes shown (no --classes): {"; ".join(parts)}{why}')
  for note in notes:
    report(note)
  return chosen + fill


def _labels(stats: GateStatistics, ids: Sequence[int]) -> str:
  return ', '.join(stats.class_label(k) for k in ids)
