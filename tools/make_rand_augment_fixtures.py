"""Generates tests/fixtures/rand_augment/: timm's RandAugment ops and policy.

Needs timm and scikit-image (its sample photographs) in one venv, no
TensorFlow::

  /work/torch-venv/bin/python tools/make_rand_augment_fixtures.py

Writes, for tests/data/test_rand_augment.py:

  ops.npz: ``images`` uint8 [N, H, W, 3], photographs; per op (timm's name)
    and case k, ``{op}/{k}`` uint8 [N, H, W, 3], timm's op
    (`NAME_TO_OP[op](img, *LEVEL_TO_ARG[op](magnitude), fillcolor=img_mean,
    resample=BILINEAR)`) at the case's fixed magnitude and sign.
  cases.json: the cases, timm's op arguments on a grid of magnitudes
    (``level_args``), and policy statistics of timm's `rand_augment_transform`
    (``policy``: per op, how often it is applied and its argument's
    moments; see `summarize`).

The same functions serve tests/data/test_rand_augment_timm_live.py, which
runs in the torch venv and reaches TensorFlow through a subprocess of the
main venv: ``python tools/make_rand_augment_fixtures.py --tf_ops IN OUT``
or ``--tf_policy CONFIG COUNT SEED OUT`` (TF only, no timm).
"""

import argparse
import contextlib
import json
import math
import os
import random
import sys

import numpy as np

OUT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    'tests',
    'fixtures',
    'rand_augment',
)
FILL = (124, 116, 104)  # timm's img_mean for ImageNet's mean
PHOTOS = ('astronaut', 'coffee', 'chelsea')
SIZE = (48, 64)  # H, W: small, and not square (a swapped axis shows)
# (magnitude, negate): a typical and a near-full magnitude, both signs.
CASES = ((7.0, False), (9.3, True))
MAGNITUDES = tuple(np.round(np.arange(0.0, 10.01, 0.25), 2)) + (
    2.2,
    3.3,
    6.7,
    7.7,
)
POLICIES = (
    'rand-m7-mstd0.5-inc1',  # RSB A1
    'rand-m10-mstd2-inc1',  # clipping at 10
    'rand-m9-n3-mstd101-p0.7-inc0',  # uniform magnitudes, the other list
)
POLICY_COUNT = 12_000
GEOMETRIC = ('Rotate', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')


def photos(size=SIZE, names=PHOTOS, rng=None) -> np.ndarray:
  """uint8 [N, H, W, 3]: scikit-image photographs, centre (or random)
  crops of the target aspect, resized (Pillow, antialiased) to `size`."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import skimage.data  # pylint: disable=g-import-not-at-top

  out = []
  h, w = size
  for name in names:
    image = getattr(skimage.data, name)()
    if image.ndim == 2:
      image = np.repeat(image[..., None], 3, axis=-1)
    ih, iw = image.shape[:2]
    scale = min(ih / h, iw / w) * (1.0 if rng is None else rng.uniform(0.5, 1))
    ch, cw = int(h * scale), int(w * scale)
    y, x = (ih - ch) // 2, (iw - cw) // 2
    if rng is not None:
      y, x = rng.integers(0, ih - ch + 1), rng.integers(0, iw - cw + 1)
    crop = Image.fromarray(image[y : y + ch, x : x + cw, :3])
    out.append(np.asarray(crop.resize((w, h), Image.BICUBIC)))
  return np.stack(out)


@contextlib.contextmanager
def _sign(aa, negate: bool):
  """timm's _randomly_negate negates when random() > 0.5: script it."""
  saved = aa.random
  value = 0.75 if negate else 0.25

  class _Random:

    def __getattr__(self, name):
      return getattr(random, name)

    def random(self):
      return value

  aa.random = _Random()
  try:
    yield
  finally:
    aa.random = saved


def timm_argument(name: str, magnitude: float, negate: bool):
  """timm's LEVEL_TO_ARG[name](magnitude) at a fixed sign; () if none."""
  import timm.data.auto_augment as aa  # pylint: disable=g-import-not-at-top

  level_fn = aa.LEVEL_TO_ARG[name]
  if level_fn is None:
    return ()
  with _sign(aa, negate):
    return level_fn(magnitude, dict(img_mean=FILL, translate_const=100))


def timm_op(name, image, magnitude, negate, resample='bilinear'):
  """uint8 [H, W, 3]: timm's op `name` on a photograph."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import timm.data.auto_augment as aa  # pylint: disable=g-import-not-at-top

  args = timm_argument(name, magnitude, negate)
  method = {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC}[resample]
  out = aa.NAME_TO_OP[name](
      Image.fromarray(image), *args, fillcolor=FILL, resample=method
  )
  return np.asarray(out)


def op_names():
  """timm's 'inc1' and 'inc0' op lists."""
  import timm.data.auto_augment as aa  # pylint: disable=g-import-not-at-top

  # pylint: disable-next=protected-access
  return aa._RAND_INCREASING_TRANSFORMS, aa._RAND_TRANSFORMS


# Signed arguments: the value timm's _randomly_negate reflects about.
_CENTRES = dict(
    {name: 0.0 for name in GEOMETRIC},
    **{
        f'{n}Increasing': 1.0
        for n in ('Color', 'Contrast', 'Brightness', 'Sharpness')
    },
)


def summarize(records, slots: int) -> dict:
  """Policy statistics from (op name, argument or None) of applied ops.

  slots: images x layers. Per op: 'n' (times applied), 'freq' (n / slots),
  and for ops with an argument its 'mean', 'std' and 'neg' (fraction
  below 0). Pooled over all ops, '*': 'n' and 'freq', and 'neg', 'n_signed':
  the fraction of signed arguments (`_CENTRES`) below their centre.
  """
  by_op = {}
  for name, arg in records:
    by_op.setdefault(name, []).append(np.nan if arg is None else float(arg))
  out = {}
  below = []
  for name, args in sorted(by_op.items()):
    args = np.asarray(args)
    row = {'n': len(args), 'freq': len(args) / slots}
    if not np.isnan(args).any():
      row.update(
          mean=float(args.mean()),
          std=float(args.std()),
          neg=float((args < 0).mean()),
      )
    if name in _CENTRES:
      below += list(args < _CENTRES[name])
    out[name] = row
  out['*'] = {
      'n': len(records),
      'freq': len(records) / slots,
      'neg': float(np.mean(below)),
      'n_signed': len(below),
  }
  return out


def policy_mismatches(mine: dict, theirs: dict, sigmas: float = 5.0):
  """Where two `summarize` results differ by more than `sigmas` standard
  errors (binomial for 'freq' and 'neg', sample moments for the rest):
  a list of lines, empty if none."""
  out = []
  if sorted(mine) != sorted(theirs):
    return [f'ops applied: {sorted(mine)} vs {sorted(theirs)}']
  for name, a in mine.items():
    b = theirs[name]
    na, nb = a['n'], b['n']
    slots_a, slots_b = na / a['freq'], nb / b['freq']
    p = (na + nb) / (slots_a + slots_b)
    checks = [('freq', math.sqrt(p * (1 - p) * (1 / slots_a + 1 / slots_b)))]
    if name == '*':
      q = (a['neg'] + b['neg']) / 2
      n_a, n_b = a['n_signed'], b['n_signed']
      checks.append(('neg', math.sqrt(q * (1 - q) * (1 / n_a + 1 / n_b))))
    elif 'mean' in a:
      var = (a['std'] ** 2 + b['std'] ** 2) / 2
      q = (a['neg'] + b['neg']) / 2
      checks += [
          ('mean', math.sqrt(var * (1 / na + 1 / nb))),
          # std's standard error, sd / sqrt(2 n), as for a normal.
          ('std', math.sqrt(var / 2 * (1 / na + 1 / nb))),
          ('neg', math.sqrt(q * (1 - q) * (1 / na + 1 / nb))),
      ]
    for key, error in checks:
      # A floor for statistics with no spread (e.g. a constant argument).
      if abs(a[key] - b[key]) > sigmas * error + 1e-9:
        out.append(
            f'{name} {key}: {a[key]:.5g} vs {b[key]:.5g} '
            f'(standard error {error:.2g})'
        )
  return out


def timm_policy(config_str: str, count: int, seed: int) -> dict:
  """Statistics of timm's RandAugment over `count` images (ops recorded,
  not run)."""
  import timm.data.auto_augment as aa  # pylint: disable=g-import-not-at-top

  transform = aa.rand_augment_transform(
      config_str, dict(img_mean=FILL, translate_const=100)
  )
  records = []
  for op in transform.ops:

    def record(img, *args, _name=op.name, **_):
      records.append((_name, args[0] if args else None))
      return img

    op.aug_fn = record
  random.seed(seed)
  np.random.seed(seed)
  for _ in range(count):
    transform(None)
  return summarize(records, count * transform.num_layers)


def tf_policy(config_str: str, count: int, seed: int) -> dict:
  """The same statistics of se_flax's sampler, `count` images' draws."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from se_flax.data import rand_augment  # pylint: disable=g-import-not-at-top

  policy = rand_augment.parse(config_str)
  draws = rand_augment.sample(policy, tf.constant([seed, 0]), (count,))
  draws = {k: tf.reshape(v, [-1]) for k, v in draws.items()}
  records = []
  applied = draws['apply'].numpy()
  ops = draws['op'].numpy()
  for index, name in enumerate(policy.op_names):
    chosen = applied & (ops == index)
    if rand_augment._LEVEL_TO_ARG[name] is None:  # pylint: disable=protected-access
      records += [(name, None)] * int(chosen.sum())
      continue
    args = rand_augment.op_argument(
        name, draws['magnitude'], draws['negate']
    ).numpy()
    records += [(name, a) for a in args[chosen]]
  return summarize(records, count * policy.num_layers)


def tf_ops(in_path: str, out_path: str):
  """Runs se_flax's ops on `in_path`'s images and cases (TF side)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from se_flax.data import rand_augment  # pylint: disable=g-import-not-at-top

  tf.config.set_visible_devices([], 'GPU')
  data = np.load(in_path)
  cases = json.loads(str(data['cases']))
  out = {}
  for key, (name, index, magnitude, negate) in cases.items():
    image = tf.constant(data['images'][index])
    out[key] = rand_augment.apply_op(name, image, magnitude, negate).numpy()
  np.savez(out_path, **out)


def make_ops(names) -> dict:
  images = photos()
  arrays = {'images': images}
  for name in names:
    for k, (magnitude, negate) in enumerate(CASES):
      arrays[f'{name}/{k}'] = np.stack(
          [timm_op(name, im, magnitude, negate) for im in images]
      )
  return arrays


def make_level_args(names) -> dict:
  out = {}
  for name in names:
    rows = []
    for magnitude in MAGNITUDES:
      for negate in (False, True):
        args = timm_argument(name, float(magnitude), negate)
        if args:
          rows.append([float(magnitude), negate, float(args[0])])
    if rows:
      out[name] = rows
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--tf_ops', nargs=2, metavar=('IN', 'OUT'))
  parser.add_argument(
      '--tf_policy', nargs=4, metavar=('CONFIG', 'COUNT', 'SEED', 'OUT')
  )
  args = parser.parse_args(argv)
  if args.tf_ops:
    return tf_ops(*args.tf_ops)
  if args.tf_policy:
    config_str, count, seed, out = args.tf_policy
    with open(out, 'w') as f:
      json.dump(tf_policy(config_str, int(count), int(seed)), f)
    return 0

  import timm  # pylint: disable=g-import-not-at-top
  import PIL  # pylint: disable=g-import-not-at-top

  increasing, original = op_names()
  os.makedirs(OUT, exist_ok=True)
  np.savez_compressed(os.path.join(OUT, 'ops.npz'), **make_ops(increasing))
  meta = {
      'timm': timm.__version__,
      'pillow': PIL.__version__,
      'fill': FILL,
      'cases': CASES,
      'op_lists': {'inc1': increasing, 'inc0': original},
      'level_args': make_level_args(sorted(set(increasing + original))),
      'policy': {
          c: timm_policy(c, POLICY_COUNT, seed)
          for seed, c in enumerate(POLICIES)
      },
      'policy_count': POLICY_COUNT,
  }
  with open(os.path.join(OUT, 'cases.json'), 'w') as f:
    json.dump(meta, f)
  return 0


if __name__ == '__main__':
  sys.exit(main())
