"""The excitation analysis (paper §7.2): statistics, names, figures, CLI."""

import os
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest

from se_flax.analysis import gates as gates_lib
from se_flax.analysis import statistics
from se_flax.analysis.classes import default_classes, resolve_classes
from se_flax.analysis.excitation import main
from se_flax.data.normalize import normalize_images
from se_flax.models import create_model
from se_flax.pretrained import labels
from tests.data import helpers as data_helpers

SIZE = 16
NUM_CLASSES = 5  # Class 4 never occurs.


def _random_variables(model, rng):
  """Random weights of `model`'s shapes (no init to run): the init zeroes
  the last BN scales, which would make every gate sigmoid(bias)."""
  x = np.zeros((1, SIZE, SIZE, 3), np.float32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))

  def draw(path, x):
    if 'var' in jax.tree_util.keystr(path):  # BN variances stay positive.
      return rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
    return rng.normal(0, 0.2, x.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope='module')
def tiny():
  model = create_model('seresnet_tiny', num_classes=NUM_CLASSES)
  return model, _random_variables(model, np.random.default_rng(1))


def _real_batches(seed=0, sizes=(16, 16, 16, 5)):
  rng = np.random.default_rng(seed)
  return [
      dict(
          image=rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8),
          label=rng.integers(0, NUM_CLASSES - 1, (n,)).astype(np.int32),
      )
      for n in sizes
  ]


def _padded(batches, size=16):
  """The eval stream's format: 'mask' False on padding, which holds
  real-looking pixels and labels (they must not count)."""
  out, rng = [], np.random.default_rng(9)
  for b in batches:
    n = len(b['label'])
    pad = size - n
    out.append(
        dict(
            image=np.concatenate(
                [b['image'], rng.integers(0, 256, (pad, SIZE, SIZE, 3), 'u1')]
            ),
            label=np.concatenate([b['label'], np.zeros(pad, np.int32)]),
            mask=np.arange(size) < n,
        )
    )
  return out


def _direct_gates(model, variables, batches):
  """layer name -> (N, C) gates of the real examples, and the labels."""
  images = np.concatenate([b['image'] for b in batches])
  labels_ = np.concatenate([b['label'] for b in batches])
  _, state = model.apply(
      variables,
      normalize_images(images),
      train=False,
      mutable=['intermediates'],
  )
  inter = state['intermediates']
  out = {
      f'SE_{i + 1}_1': np.asarray(inter[f'stage{i}_block0']['se']['gate'][0])
      for i in range(1, 5)
  }
  return out, labels_


def test_statistics_equal_numpy_over_a_padded_sharded_stream(tiny):
  model, variables = tiny
  assert jax.device_count() == 8  # conftest: the sharded path runs.
  real = _real_batches()
  direct, labels_ = _direct_gates(model, variables, real)
  with warnings.catch_warnings():
    warnings.simplefilter('error', RuntimeWarning)  # No 0/0 anywhere.
    stats = gates_lib.excitation_statistics(
        model, variables, _padded(real), histogram_bins=40
    )
    pooled = {n: s.pooled() for n, s in stats.layers.items()}
  assert list(stats.layers) == ['SE_2_1', 'SE_3_1', 'SE_4_1', 'SE_5_1']
  assert stats.paths['SE_2_1'] == 'stage1_block0/se'
  expected_count = np.bincount(labels_, minlength=NUM_CLASSES)
  np.testing.assert_array_equal(stats.count, expected_count)
  np.testing.assert_array_equal(stats.seen, expected_count)
  assert stats.empty_classes() == [NUM_CLASSES - 1]
  for name, g in direct.items():
    s = stats.layers[name]
    assert g.std() > 1e-3  # The comparison means something.
    for k in range(NUM_CLASSES - 1):
      gk = g[labels_ == k].astype(np.float64)
      np.testing.assert_allclose(s.mean[k], gk.mean(0), rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(s.std()[k], gk.std(0), rtol=1e-4, atol=1e-6)
      np.testing.assert_allclose(
          s.std(ddof=1)[k], gk.std(0, ddof=1), rtol=1e-4, atol=1e-6
      )
      np.testing.assert_allclose(s.min[k], gk.min(0), rtol=1e-6)
      np.testing.assert_allclose(s.max[k], gk.max(0), rtol=1e-6)
      q = (0.1, 0.5, 0.9)
      exact = np.quantile(gk, q, axis=0, method='inverted_cdf').T
      np.testing.assert_allclose(
          s.quantiles(q)[k], exact, rtol=0, atol=s.bin_width / 2 + 1e-6
      )
    empty = NUM_CLASSES - 1
    assert np.isnan(s.mean[empty]).all() and np.isnan(s.std()[empty]).all()
    assert np.isnan(s.quantiles([0.5])[empty]).all()
    np.testing.assert_allclose(pooled[name].mean[0], g.mean(0), 1e-5, 1e-6)
    np.testing.assert_allclose(pooled[name].std()[0], g.std(0), 1e-4, 1e-6)


def test_sample_cap_counts_the_first_examples_of_each_class(tiny, tmp_path):
  model, variables = tiny
  cap = 3
  # A plain iterator: no mask, a shorter last batch (padded inside).
  real = _real_batches(seed=2, sizes=(8, 8, 3))
  direct, labels_ = _direct_gates(model, variables, real)
  stats = gates_lib.excitation_statistics(
      model,
      variables,
      iter(real),
      layers=['SE_3_1', 'stage4_block0/se'],
      sample_cap=cap,
      label_names=[f'c{k}' for k in range(NUM_CLASSES)],
  )
  assert list(stats.layers) == ['SE_3_1', 'SE_5_1']
  seen = np.bincount(labels_, minlength=NUM_CLASSES)
  np.testing.assert_array_equal(stats.seen, seen)
  np.testing.assert_array_equal(stats.count, np.minimum(seen, cap))
  for name in stats.layers:
    for k in range(NUM_CLASSES - 1):
      first = direct[name][labels_ == k][:cap].astype(np.float64)
      np.testing.assert_allclose(
          stats.layers[name].mean[k], first.mean(0), rtol=1e-5, atol=1e-6
      )
      np.testing.assert_allclose(
          stats.layers[name].std()[k], first.std(0), rtol=1e-4, atol=1e-6
      )
  path = str(tmp_path / 'stats.npz')
  stats.save(path)
  loaded = statistics.GateStatistics.load(path)
  assert loaded.label_names == stats.label_names and loaded.sample_cap == cap
  np.testing.assert_array_equal(
      loaded.layers['SE_5_1'].mean, stats.layers['SE_5_1'].mean
  )
  with pytest.raises(ValueError, match='Unknown SE layers'):
    gates_lib.excitation_statistics(
        model, variables, iter(real), layers=['SE_6_1']
    )
  with pytest.raises(ValueError, match='outside'):
    bad = [dict(real[0], label=np.full(8, NUM_CLASSES, np.int32))]
    gates_lib.excitation_statistics(model, variables, bad, layers=['SE_2_1'])


def test_plain_model_has_no_se_layers():
  model = create_model('resnet_tiny', num_classes=3)
  variables = _random_variables(model, np.random.default_rng(0))
  with pytest.raises(gates_lib.NoSEBlocksError, match='plain network'):
    gates_lib.se_layers(model, variables, (SIZE, SIZE, 3))


def _layer(means, within_std, n=10):
  k, c = means.shape
  count = np.full(k, n)
  return statistics.LayerStatistics(
      count=count,
      mean=means,
      m2=np.full((k, c), within_std**2 * n),
      min=means - within_std,
      max=means + within_std,
  )


def test_class_specificity_separates_agnostic_from_specific_layers():
  rng = np.random.default_rng(0)
  profile = rng.uniform(0.2, 0.8, 64)
  per_class = rng.uniform(0.0, 1.0, (4, 64))
  layers = {
      'agnostic': _layer(np.tile(profile, (4, 1)), 0.1),
      'specific': _layer(per_class, 1e-4),
      'scaled': _layer(profile * np.array([[0.6], [0.8], [1.0], [1.2]]), 1e-3),
  }
  stats = statistics.GateStatistics(
      layers=layers, paths={n: n for n in layers}, seen=np.full(4, 10)
  )
  rows = {r['layer']: r for r in statistics.class_specificity(stats)}
  assert rows['agnostic']['eta2'] < 1e-12
  assert rows['agnostic']['profile_corr'] == pytest.approx(1.0)
  assert rows['specific']['eta2'] > 0.99
  assert abs(rows['specific']['profile_corr']) < 0.5
  # SE_5_3's pattern: the classes differ, but only in scale.
  assert rows['scaled']['eta2'] > 0.9
  assert rows['scaled']['profile_corr'] == pytest.approx(1.0)
  assert rows['agnostic']['eta2_chance'] == pytest.approx(3 / 39)
  md = statistics.specificity_markdown(list(rows.values()))
  assert md.count('\n') == 4 and '| specific |' in md
  # A class subset without examples: reported as NaN, not divided by 0.
  layers['agnostic'] = _layer(np.tile(profile, (4, 1)), 0.1, n=0)
  empty = statistics.class_specificity(
      statistics.GateStatistics(layers, {}, np.zeros(4, int)), classes=[0]
  )
  assert empty[0]['classes'] == 0 and np.isnan(empty[0]['eta2'])


def test_figure_layers_are_the_papers_panels():
  resnet50 = [
      f'SE_{s}_{b}'
      for s, n in zip((2, 3, 4, 5), (3, 4, 6, 3))
      for b in range(1, n + 1)
  ]
  assert gates_lib.figure_layers(resnet50) == [
      'SE_2_3',
      'SE_3_4',
      'SE_4_6',
      'SE_5_1',
      'SE_5_2',
      'SE_5_3',
  ]
  assert gates_lib.figure_layers(['a/se', 'b/se']) == ['a/se', 'b/se']


def test_imagenet_names_resolve_to_the_class_meant():
  names, desc = labels.imagenet_label_names(), labels.imagenet_descriptions()
  notes = []
  got = resolve_classes(
      ['goldfish', 'pug', 'plane', 'cliff'], names, desc, notes.append
  )
  # The paper's plane is the aircraft, not ImageNet's 'plane' lemma (726,
  # the carpenter's plane); one line says which synset was chosen.
  assert got == [1, 254, 404, 972]
  assert len(notes) == 1
  assert "'plane' is 404 (n02690373: airliner)" in notes[0]
  assert 'n03954731' in notes[0]  # How to ask for the carpenter's plane.
  carpenters = ['n03954731', '726', "Carpenter's plane"]
  assert resolve_classes(carpenters, names, desc, notes.append) == [726] * 3
  assert resolve_classes(['n02690373', '404', 'Airliner'], names, desc) == [
      404,
      404,
      404,
  ]
  assert len(notes) == 1  # No note where nothing was re-read.
  with pytest.raises(ValueError, match='ambiguous.*134.*517'):
    resolve_classes(['crane'], names, desc)
  with pytest.raises(ValueError, match='Unknown class'):
    resolve_classes(['goldfsh'], names, desc)
  # A dataset's own class named 'plane' is the one meant.
  assert resolve_classes(['plane'], ['car', 'plane'], None, notes.append) == [1]
  assert len(notes) == 1


def _seen(stats_seen, names=None, descriptions=None):
  """GateStatistics with only what the class choice reads."""
  return statistics.GateStatistics(
      layers={},
      paths={},
      seen=np.asarray(stats_seen),
      label_names=names,
      label_descriptions=descriptions,
  )


def test_default_classes_are_the_papers_where_present():
  names, desc = labels.imagenet_label_names(), labels.imagenet_descriptions()
  seen = np.zeros(1000, int)
  seen[[1, 254, 404, 726, 972]] = 50
  seen[0] = 60  # More populous, but the paper's four are all present.
  notes = []
  stats = _seen(seen, names, desc)
  assert default_classes(stats, notes.append) == [1, 254, 404, 972]
  assert notes[0] == (
      "Classes shown (no --classes): the paper's goldfish (n01443537), pug "
      '(n02110958), airliner (n02690373), cliff (n09246464)'
  )
  assert 'n02690373' in notes[1] and len(notes) == 2


def test_default_classes_fill_up_with_the_most_populous():
  """The quickstart's tiny ImageNet: 1000 labels, examples in 0-9 only;
  of the paper's four only goldfish (1) is there."""
  names, desc = labels.imagenet_label_names(), labels.imagenet_descriptions()
  seen = np.zeros(1000, int)
  seen[:10] = 17
  seen[[6, 4]] = 20
  notes = []
  assert default_classes(_seen(seen, names, desc), notes.append) == [1, 4, 6, 0]
  assert notes == [
      "Classes shown (no --classes): the paper's goldfish (n01443537); the 3 "
      'most populous other classes (17-20 images each): hammerhead '
      "(n01494475), stingray (n01498041), tench (n01440764); the paper's pug, "
      'plane, cliff have no examples here'
  ]
  # A folder's own names: none of the paper's; fewer than four classes
  # with examples gives fewer classes.
  notes = []
  stats = _seen([0, 3, 7], ('cat', 'dog', 'emu'))
  assert default_classes(stats, notes.append) == [2, 1]
  assert notes[0].startswith(
      'Classes shown (no --classes): the 2 most populous classes (3-7 '
      'images each): emu, dog;'
  )
  # No names at all (synthetic data): ties go to the lower id.
  assert default_classes(_seen([2, 5, 5, 0, 2, 1]), notes.append) == [
      1,
      2,
      0,
      4,
  ]
  assert 'the 4 most populous classes (2-5 images each)' in notes[-1]


def test_se_blocks_off_removes_only_those_blocks():
  with_se = create_model('seresnet_tiny', num_classes=3)
  without = with_se.clone(se_blocks_off=('SE_5_1', 'SE_3_1'))
  x = np.zeros((1, SIZE, SIZE, 3), np.float32)
  init = lambda m: jax.eval_shape(
      lambda: m.init(jax.random.key(0), x, train=False)
  )
  params, full = init(without), init(with_se)
  has_se = lambda p: sorted(k for k, v in p['params'].items() if 'se' in v)
  assert has_se(full) == [f'stage{i}_block0' for i in (1, 2, 3, 4)]
  assert has_se(params) == ['stage1_block0', 'stage3_block0']
  with pytest.raises(ValueError, match='SE_stage_block'):
    with_se.clone(se_blocks_off=('SE_6_1',))


def test_command_writes_statistics_figures_and_table(tiny_se_workdir, tmp_path):
  se_workdir = tiny_se_workdir
  out = tmp_path / 'out'
  result = subprocess.run(
      [
          sys.executable,
          '-m',
          'se_flax.analysis.excitation',
          '--workdir',
          se_workdir,
          '--classes',
          '0,3',
          '--output',
          str(out),
          '--sample-cap',
          '5',
          '--batch-size',
          '8',
          '--histogram-bins',
          '10',
      ],
      capture_output=True,
      text=True,
      timeout=300,
      cwd=os.path.dirname(os.path.dirname(__file__)),
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert '| SE_5_1 |' in result.stdout
  stats = statistics.GateStatistics.load(str(out / 'excitation.npz'))
  assert int(stats.seen.sum()) == 20  # tiny_config's eval split, once.
  assert stats.count.max() <= 5
  for name in (
      'fig6_class_means.png',
      'fig7_class_0.png',
      'class_specificity.csv',
      'class_specificity.md',
      'quantiles.npz',
  ):
    assert (out / name).stat().st_size > 1000 or name.endswith(('md', 'csv'))
  assert (out / 'fig6_class_means.png').read_bytes()[:4] == b'\x89PNG'
  csv = (out / 'class_specificity.csv').read_text().splitlines()
  assert csv[0].startswith('layer,channels') and len(csv) == 5


def test_pretrained_weights_on_a_folder_count_the_folders_classes(
    tiny_se_workdir, tmp_path, capsys
):
  """Labels are the dataset's (3 folders), not the 10-class head's; with no
  --classes and none of the paper's four, the most populous are shown."""
  root = data_helpers.write_colour_folder(
      str(tmp_path / 'images'), train_per_class=1, val_per_class=3
  )
  os.remove(os.path.join(root, 'val', 'cat', '0.png'))  # cat: 2, the others 3.
  out = tmp_path / 'out'
  args = ['--pretrained', tiny_se_workdir, '--folder', root]
  assert main(args + ['--output', str(out), '--batch-size', '4']) == 0
  stats = statistics.GateStatistics.load(str(out / 'excitation.npz'))
  assert stats.num_classes == 3
  assert list(stats.label_names) == list(data_helpers.COLOUR_CLASSES)
  assert stats.count.tolist() == [2, 3, 3]
  assert not stats.empty_classes()
  for name in data_helpers.COLOUR_CLASSES:
    assert (out / f'fig7_{name}.png').exists()
  printed = capsys.readouterr().out
  assert 'classes have no examples' not in printed
  assert (
      'Classes shown (no --classes): the 3 most populous classes (2-3 images '
      "each): dog, emu, cat; the paper's goldfish, pug, plane, cliff have no "
      'examples here'
  ) in printed


@pytest.mark.slow  # Trains a second run (~8 s); the API's error is default.
def test_command_error_for_a_workdir_without_se(tmp_path):
  from se_flax.train.loop import train_and_evaluate
  from tests.train.tiny_config import tiny_config

  workdir = str(tmp_path / 'plain')
  config = tiny_config(num_train_steps=1)
  config.model.se = False
  train_and_evaluate(config, workdir)
  out = tmp_path / 'out'
  result = subprocess.run(
      [sys.executable, '-m', 'se_flax.analysis.excitation']
      + ['--workdir', workdir, '--output', str(out)],
      capture_output=True,
      text=True,
      timeout=300,
      cwd=os.path.dirname(os.path.dirname(__file__)),
  )
  assert result.returncode == 2
  assert 'Traceback' not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert 'has no SE blocks' in last and workdir in last
  assert not out.exists()
