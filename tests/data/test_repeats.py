"""Repeated augmentation (se_flax.data.repeats) and the streams that use it.

tests/fixtures/repeats/ holds timm 1.0.31's `RepeatAugSampler` epochs
(tools/make_repeat_fixtures.py); `repeated_indices` on timm's permutation
must give them exactly. The rest checks the two sources: the folder stream
is timm's sampler over a permutation shared by the processes, the TFDS
stream repeats within the process; both resume exactly.
"""

import collections
import functools
import hashlib
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from se_flax.data import epoch_order
from se_flax.data import folder
from se_flax.data import pipeline
from se_flax.data import repeats
from tests.data.helpers import assert_same_batches
from tests.data.helpers import data_config
from tests.data.helpers import take
from tests.data.helpers import write_colour_folder

FIXTURES = os.path.join(
    os.path.dirname(os.path.dirname(__file__)), 'fixtures', 'repeats'
)


@functools.lru_cache(maxsize=None)
def _fixture():
  with open(os.path.join(FIXTURES, 'cases.json')) as f:
    meta = json.load(f)
  with np.load(os.path.join(FIXTURES, 'cases.npz')) as z:
    arrays = dict(z)
  return meta, arrays


_CASES = _fixture()[0]['cases']


def _args(case):
  return case['num_repeats'], case['num_replicas'], case['selected_round']


@pytest.mark.parametrize('case', _CASES, ids=[c['name'] for c in _CASES])
def test_repeated_indices_are_timms(case):
  _, arrays = _fixture()
  r, w, selected_round = _args(case)
  perm = arrays[f'{case["name"]}/perm']
  for rank in range(w):
    want = arrays[f'{case["name"]}/rank{rank}']
    got = repeats.repeated_indices(perm, r, rank, w, selected_round)
    np.testing.assert_array_equal(got, want)
    assert repeats.num_selected(case['n'], r, w, selected_round) == len(want)


def test_examples_per_epoch():
  # ImageNet on 8 ranks: floor(1281167 / 256) 256 = 1281024, / 8 exactly.
  assert repeats.examples_per_epoch(1_281_167, 3, 8) == 1_281_024
  assert repeats.examples_per_epoch(1_281_167, 3, 3) == 1_281_024 // 3 * 3
  assert repeats.examples_per_epoch(1_281_167, 1, 8) == 1_281_167
  assert repeats.examples_per_epoch(1_281_167, 0, 8) == 1_281_167
  assert repeats.examples_per_epoch(100, 3, 8) == 13 * 8  # ceil(100 / 8)
  assert not repeats.is_on(0) and not repeats.is_on(1) and repeats.is_on(3)


def test_an_epoch_is_about_n_over_r_distinct_examples_r_times_each():
  n, r, w = 3000, 3, 4
  perm = np.random.default_rng(0).permutation(n)
  ranks = [repeats.repeated_indices(perm, r, k, w) for k in range(w)]
  counts = collections.Counter(np.concatenate(ranks).tolist())
  assert sum(counts.values()) == 2816  # floor(3000 / 256) 256
  assert len(counts) == -(-2816 // r)  # the first of perm, in its order
  assert set(counts) == set(perm[: len(counts)].tolist())
  assert sorted(collections.Counter(counts.values()).items()) == [
      (2, 1),  # the last one cut short by the rounding
      (3, 938),
  ]
  # Copy c of slot j goes to rank (j R + c) % W: consecutive ranks.
  first = perm[0]
  assert [k for k in range(w) if first in ranks[k][:1]] == [0, 1, 2]


# The folder source's order: timm's sampler, processes as ranks.


def _order(n, *, first_position=0, count, **kw):
  """int64 [count, 2]: (position, file index) rows of `folder_order`."""
  ds = epoch_order.folder_order(n, first_position=first_position, **kw)
  positions, indices = next(iter(ds.take(count).batch(count)))
  return np.stack([positions.numpy(), indices.numpy()], 1)


def _shared_perm(n, seed, epoch):
  root = epoch_order.shared_order_root(seed)
  # As in the stream: an int64 epoch (an int32 one folds differently).
  epoch = tf.constant(epoch, tf.int64)
  epoch_seed = tf.random.experimental.stateless_fold_in(root, epoch)
  return epoch_order.permutation(n, epoch_seed).numpy()


@pytest.mark.parametrize('n, r, count', [(1000, 3, 3), (300, 2, 2), (23, 3, 3)])
def test_folder_epochs_are_timms_over_a_shared_permutation(n, r, count):
  m = repeats.num_selected(n, r, count)
  for index in range(count):
    got = _order(
        n,
        num_repeats=r,
        seed=5,
        process_index=index,
        process_count=count,
        count=2 * m,
    )
    np.testing.assert_array_equal(got[:, 0], np.arange(2 * m))
    for e in range(2):  # a new permutation each epoch, the same everywhere
      want = repeats.repeated_indices(_shared_perm(n, 5, e), r, index, count)
      np.testing.assert_array_equal(got[e * m : (e + 1) * m, 1], want)
  assert not np.array_equal(_shared_perm(n, 5, 0), _shared_perm(n, 5, 1))
  assert not np.array_equal(_shared_perm(n, 5, 0), _shared_perm(n, 6, 0))


def test_folder_copies_go_to_different_processes():
  n, r = 900, 3
  parts = [
      _order(
          n, num_repeats=r, seed=0, process_index=p, process_count=3, count=256
      )[:, 1]
      for p in range(3)
  ]
  # P = R: each process holds one copy of each file, in the same order.
  np.testing.assert_array_equal(parts[0], parts[1])
  np.testing.assert_array_equal(parts[0], parts[2])
  # 768 samples (floor(900 / 256) 256) of 256 distinct files.
  assert len(set(parts[0].tolist())) == 256


@pytest.mark.parametrize('r', [0, 1])
def test_folder_order_without_repeats_is_each_processes_part(r):
  n = 22
  for index in range(2):
    got = _order(
        n, num_repeats=r, seed=1, process_index=index, process_count=2, count=33
    )
    assert sorted(got[:11, 1]) == list(range(index, n, 2))
    assert sorted(got[11:22, 1]) == list(range(index, n, 2))


@pytest.mark.parametrize('count', [1, 2])
def test_folder_order_resumes_exactly(count):
  n = 301  # m = 256 // P: epochs end at 128 (P = 2), 256 (P = 1)
  for index in range(count):
    kw = dict(num_repeats=3, seed=2, process_index=index, process_count=count)
    full = _order(n, count=700, **kw)
    np.testing.assert_array_equal(full[:, 0], np.arange(700))
    for start in (1, 128, 300):  # mid-epoch, at an epoch's start
      np.testing.assert_array_equal(
          _order(n, first_position=start, count=700 - start, **kw),
          full[start:],
      )


@pytest.fixture(scope='module')
def colour_folder(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('repeat_folder'))
  return write_colour_folder(root, train_per_class=7, val_per_class=1)


def test_folder_stream_with_repeats(colour_folder):
  """Decoded batches: folder_order's files, resumable mid-epoch."""
  index, count = 1, 2  # (P = 1 differs only in folder_order, tested above)
  cfg = data_config(None, folder_root=colour_folder, repeated_augmentation=3)
  scan = folder.scan_folder(colour_folder)
  kw = dict(
      global_batch_size=4,
      seed=3,
      process_index=index,
      process_count=count,
      scan=scan,
  )
  # 21 files: epochs of 11 positions (ceil(21 / 2)); step 5 starts
  # mid-epoch and its batch crosses into the next.
  full = take(folder.create_train_iterator(cfg, **kw), 8)
  resumed = folder.create_train_iterator(cfg, start_step=5, **kw)
  assert_same_batches(full[5:], take(resumed, 3))
  local = 4 // count
  order = _order(
      21,
      num_repeats=3,
      seed=3,
      process_index=index,
      process_count=count,
      count=8 * local,
  )[:, 1]
  labels = np.concatenate([b['label'] for b in full])
  np.testing.assert_array_equal(labels, scan.train.labels[order])


# The TFDS source: repeats within the process.


def _canonical(image):
  """Digest up to a left-right flip: with a whole-image crop, the file."""
  return hashlib.sha1(
      min(image.tobytes(), image[:, ::-1].tobytes())
  ).hexdigest()


def _tfds_train(data_dir, **kw):
  return pipeline.create_train_iterator(
      data_config(data_dir, **kw.pop('cfg', {})), **{'seed': 0, **kw}
  )


def _tfds_epochs(data_dir, r, index, count):
  """Two epochs of flip-invariant digests of process `index` of `count`."""
  # Crop = the whole image (resized): only the flip is random.
  cfg = dict(repeated_augmentation=r, min_area=1.0, aspect_ratio=(1.0, 1.0))
  n = 60 // count  # TFDS's even split of the 60
  it = _tfds_train(
      data_dir,
      cfg=cfg,
      global_batch_size=6,
      process_index=index,
      process_count=count,
  )
  digests = [
      _canonical(x) for b in take(it, 2 * n // (6 // count)) for x in b['image']
  ]
  return digests[:n], digests[n:]


@pytest.mark.parametrize('r, count', [(3, 1), (4, 2)])
def test_tfds_epoch_is_its_first_records_r_times_each(tiny_dirs, r, count):
  n = 60 // count  # R = 4 does not divide 30: the last copies cut short
  chosen = []
  for index in range(count):
    epochs = _tfds_epochs(tiny_dirs[0], r, index, count)
    for epoch in epochs:
      groups = [epoch[i : i + r] for i in range(0, n, r)]
      assert all(len(set(g)) == 1 for g in groups)  # R copies in a row
      assert len({g[0] for g in groups}) == -(-n // r)  # all distinct
    assert epochs[0] != epochs[1]  # reshuffled
    chosen.append(set(epochs[0]))
  # Processes: disjoint shards, so n / R distinct examples each.
  assert len(set().union(*chosen)) == count * -(-n // r)


@pytest.mark.parametrize('index, count, cache', [(0, 1, False), (1, 2, True)])
def test_tfds_stream_with_repeats_resumes_exactly(
    tiny_dirs, index, count, cache
):
  # Local batch 8 (4): epochs of 60 (30) positions; step 7 starts mid-epoch
  # and its batch crosses into the next. Cached, an epoch reads its whole
  # shard (in one fixed file order), uncached it stops early.
  kw = dict(
      cfg=dict(repeated_augmentation=3, cache=cache),
      global_batch_size=8,
      process_index=index,
      process_count=count,
  )
  full = take(_tfds_train(tiny_dirs[0], **kw), 10)
  resumed = _tfds_train(tiny_dirs[0], start_step=7, **kw)
  assert_same_batches(full[7:], take(resumed, 3))
  images = np.concatenate([b['image'] for b in full])
  labels = np.concatenate([b['label'] for b in full])
  for c in (1, 2):  # copies of one example, each augmented its own way
    np.testing.assert_array_equal(
        labels[c::3], labels[::3][: len(labels[c::3])]
    )
    assert not any(
        np.array_equal(a, b) for a, b in zip(images[::3], images[c::3])
    )
