"""RandAugment (se_flax.data.rand_augment) against committed timm outputs.

tests/fixtures/rand_augment/ holds timm 1.0.31 / Pillow 13's op outputs on
photographs, its op arguments on a grid of magnitudes and statistics of its
policy (tools/make_rand_augment_fixtures.py); the live comparison with fresh
inputs is test_rand_augment_timm_live.py.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from se_flax.data import ops
from se_flax.data import rand_augment

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
FIXTURES = os.path.join(ROOT, 'tests', 'fixtures', 'rand_augment')


def _load_tool():
  path = os.path.join(ROOT, 'tools', 'make_rand_augment_fixtures.py')
  spec = importlib.util.spec_from_file_location('make_ra_fixtures', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


tool = _load_tool()

TRAIN_KW = dict(  # as test_data_ops's
    image_size=24,
    min_area=0.08,
    aspect_ratio=(3 / 4, 4 / 3),
    max_attempts=10,
    interpolation='bilinear',
    antialias=False,
    random_rotation=0.0,
    pixel_jitter=0.0,
)

with open(os.path.join(FIXTURES, 'cases.json')) as _f:
  META = json.load(_f)
OPS = np.load(os.path.join(FIXTURES, 'ops.npz'))


def test_op_lists_and_fill_are_timms():
  assert list(rand_augment.INCREASING_OPS) == META['op_lists']['inc1']
  assert list(rand_augment.ORIGINAL_OPS) == META['op_lists']['inc0']
  assert list(rand_augment.FILL) == META['fill']


def _ours(name, magnitude, negate):
  return np.stack(
      [
          rand_augment.apply_op(name, tf.constant(im), magnitude, negate)
          for im in OPS['images']
      ]
  )


@pytest.mark.parametrize(
    'name', [n for n in rand_augment.INCREASING_OPS if n not in tool.GEOMETRIC]
)
def test_pixel_op_equals_timm(name):
  """Colour and lookup-table ops: equal to Pillow's, pixel for pixel."""
  for k, (magnitude, negate) in enumerate(META['cases']):
    np.testing.assert_array_equal(
        _ours(name, magnitude, negate), OPS[f'{name}/{k}'], err_msg=str(k)
    )


@pytest.mark.parametrize('name', tool.GEOMETRIC)
def test_geometric_op_matches_timm(name):
  """Bilinear warps: float32 weights in TF, float64 in Pillow, so a rare
  pixel truncates one level apart (measured mean <= 0.03)."""
  for k, (magnitude, negate) in enumerate(META['cases']):
    diff = np.abs(
        _ours(name, magnitude, negate).astype(int)
        - OPS[f'{name}/{k}'].astype(int)
    )
    assert diff.max() <= 1 and diff.mean() < 0.05, (k, diff.mean())


def test_level_args_equal_timm():
  for name, rows in META['level_args'].items():
    rows = np.asarray(rows, np.float64)
    ours = rand_augment.op_argument(name, rows[:, 0], rows[:, 1] > 0)
    np.testing.assert_array_equal(ours.numpy(), rows[:, 2], err_msg=name)


@pytest.mark.parametrize('config_str', tool.POLICIES)
def test_policy_statistics_match_timm(config_str):
  """Op frequencies (uniform, with replacement, times p), argument means,
  spreads and signs: within 5 standard errors of timm's."""
  ours = tool.tf_policy(config_str, META['policy_count'], seed=2024)
  problems = tool.policy_mismatches(ours, META['policy'][config_str])
  assert not problems, '\n'.join(problems)


def test_policy_check_sees_a_wrong_magnitude():
  """The statistics tell a magnitude one step off (positive control)."""
  ours = tool.tf_policy('rand-m6-mstd0.5-inc1', 4000, seed=1)
  timm_a1 = META['policy']['rand-m7-mstd0.5-inc1']
  assert tool.policy_mismatches(ours, timm_a1)


@pytest.mark.parametrize(
    'config_str, expected',
    [
        ('rand-m7-mstd0.5-inc1', dict(magnitude=7, magnitude_std=0.5)),
        ('rand-m6-mstd0.5-inc1', dict(magnitude=6, magnitude_std=0.5)),
        ('rand-inc1-m9-n3-p0.7', dict(magnitude=9, num_layers=3, prob=0.7)),
        ('rand-mstd101-mmax15', dict(magnitude_std=np.inf, magnitude_max=15)),
    ],
)
def test_parse(config_str, expected):
  policy = rand_augment.parse(config_str)
  for key, value in expected.items():
    assert getattr(policy, key) == value, key
  assert policy.increasing == ('inc1' in config_str)


@pytest.mark.parametrize(
    'bad',
    [
        'rand-',
        'augmix-m5',
        'rand-m7.5',
        'rand-x3',
        'rand-tweights',
        'rand-m7-n0',
        'rand-m7-p1.5',
        'rand-m7-inc',
    ],
)
def test_parse_rejects_in_one_line(bad):
  with pytest.raises(ValueError) as info:
    rand_augment.parse(bad)
  message = str(info.value)
  assert '\n' not in message
  assert f'config.data.rand_augment={bad!r}' in message
  assert 'rand-m7-mstd0.5-inc1' in message


def _photo():
  return tf.constant(OPS['images'][0])


def test_parse_does_not_import_tensorflow():
  # Config validation parses where TensorFlow may be absent.
  code = (
      'import sys; from se_flax.data import rand_augment_config as c; '
      "c.parse('rand-m7-mstd0.5-inc1'); "
      "assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
  )
  subprocess.run([sys.executable, '-c', code], check=True, cwd=ROOT)


def test_augment_is_the_composition_of_its_draws():
  """augment == the drawn ops applied in order, skipped ones left out."""
  policy = rand_augment.parse('rand-m9-n3-mstd0.5-inc1')
  seen = set()
  for i in range(12):
    seed = tf.constant([7, i], tf.int64)
    draws = {k: v.numpy() for k, v in rand_augment.sample(policy, seed).items()}
    expected = _photo()
    for layer in range(policy.num_layers):
      if draws['apply'][layer]:
        name = policy.op_names[draws['op'][layer]]
        seen.add(name)
        expected = rand_augment.apply_op(
            name,
            expected,
            draws['magnitude'][layer],
            draws['negate'][layer],
        )
    np.testing.assert_array_equal(
        rand_augment.augment(_photo(), seed, policy), expected
    )
  assert len(seen) >= 5  # several different ops were exercised


def test_train_preprocess_with_rand_augment():
  """Deterministic in the seed; '' leaves the output as it was."""
  data = tf.io.encode_jpeg(_photo())
  kw = dict(TRAIN_KW, rand_augment='rand-m7-mstd0.5-inc1')
  outs = [
      ops.train_preprocess(data, tf.constant([3, i]), **kw).numpy()
      for i in (0, 0, 1)
  ]
  np.testing.assert_array_equal(outs[0], outs[1])
  assert not np.array_equal(outs[0], outs[2])
  changed = 0
  for i in range(4):
    seed = tf.constant([5, i])
    plain = ops.train_preprocess(data, seed, **TRAIN_KW)
    augmented = ops.train_preprocess(data, seed, **kw)
    assert augmented.shape == plain.shape and augmented.dtype == tf.uint8
    changed += not np.array_equal(plain, augmented)
  assert changed  # p(no op applied) = 1/4 per image


def test_augment_in_tf_data_equals_eager():
  """In tf.data (branches as function calls) as eagerly."""
  policy = rand_augment.parse('rand-m9-mstd0.5-inc1')
  seeds = tf.constant([[11, i] for i in range(6)], tf.int64)
  ds = tf.data.Dataset.from_tensor_slices(seeds).map(
      lambda s: rand_augment.augment(_photo(), s, policy)
  )
  for seed, out in zip(seeds, ds):
    np.testing.assert_array_equal(
        out, rand_augment.augment(_photo(), seed, policy)
    )
