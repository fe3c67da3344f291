"""The TFDS pipeline on a tiny ImageNet that TFDS's real builder prepared."""

import collections
import hashlib
import itertools

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from se_flax import data
from se_flax.data import pipeline
from se_flax.data import records
from se_flax.data import tiny_imagenet
from tests.data.helpers import NUM_TRAIN
from tests.data.helpers import NUM_VAL
from tests.data.helpers import data_config
from tests.data.helpers import assert_same_batches, take


def _train(cfg, **kw):
  return pipeline.create_train_iterator(cfg, **{'seed': 0, **kw})


def test_dataset_info(tiny_dirs):
  info = pipeline.dataset_info(data_config(tiny_dirs[0]))
  synsets = tuple(tiny_imagenet.synsets())  # the ClassLabel's names
  assert info == pipeline.DatasetInfo(NUM_TRAIN, NUM_VAL, 1000, synsets)


def test_train_batch_format(tiny_dirs):
  it = _train(data_config(tiny_dirs[0]), global_batch_size=8)
  batch = next(it)
  assert set(batch) == {'image', 'label'}
  assert batch['image'].shape == (8, 32, 32, 3)
  assert batch['image'].dtype == np.uint8
  assert batch['label'].shape == (8,) and batch['label'].dtype == np.int32
  assert batch['label'].max() < 5
  assert it.num_train_examples == NUM_TRAIN and it.num_classes == 1000
  assert it.step == 1 and it.num_skipped == it.num_corrupt_records == 0


def test_train_stream_is_a_function_of_seed_and_step(tiny_dirs):
  cfg = data_config(tiny_dirs[0])
  a = take(_train(cfg, global_batch_size=8), 3)
  b = take(_train(cfg, global_batch_size=8), 3)
  c = take(_train(cfg, global_batch_size=8, seed=1), 3)
  assert_same_batches(a, b)
  assert not np.array_equal(a[0]['image'], c[0]['image'])


def test_epochs_are_permutations_reshuffled_each_epoch(tiny_dirs):
  cfg = data_config(tiny_dirs[0])
  # Batch 6 divides the 60 examples: 10 steps per epoch.
  batches = take(_train(cfg, global_batch_size=6), 20)
  labels = [
      np.concatenate([b['label'] for b in batches[e * 10 :][:10]])
      for e in range(2)
  ]
  for epoch in labels:  # each epoch holds every example once: 12 per class
    assert collections.Counter(epoch.tolist()) == {c: 12 for c in range(5)}
  assert not np.array_equal(labels[0], labels[1])


@pytest.mark.parametrize('process_count', [1, 2])
@pytest.mark.parametrize(
    'global_batch, start_step',
    [
        (16, 3),  # starts mid-epoch 0; its first batch crosses into epoch 1
        (12, 5),  # starts exactly at the start of epoch 1
        (16, 7),  # starts mid-epoch 1; its first batch crosses into epoch 2
    ],
)
def test_resume_equals_uninterrupted(
    tiny_dirs, process_count, global_batch, start_step
):
  # Process p reads n_p = 60 / P examples and takes global_batch / P per
  # step, so the epoch positions above hold for P = 1 and P = 2 alike.
  cfg = data_config(tiny_dirs[0])
  for index in range(process_count):
    kw = dict(
        global_batch_size=global_batch,
        process_index=index,
        process_count=process_count,
    )
    full = take(_train(cfg, **kw), start_step + 4)
    resumed = _train(cfg, start_step=start_step, **kw)
    assert_same_batches(full[start_step:], take(resumed, 4))
    assert resumed.step == start_step + 4


def test_train_needs_divisible_batch(tiny_dirs):
  with pytest.raises(ValueError, match='divisible'):
    _train(data_config(tiny_dirs[0]), global_batch_size=9, process_count=2)


def test_process_shards_cover_the_split_exactly_once(tiny_dirs):
  builder = tfds.builder('imagenet2012', data_dir=tiny_dirs[0])

  def raw(split, index, count):
    shard = records.process_shard(builder, split, index, count)
    got = [r.numpy() for r in records.read(shard)]
    assert len(got) == shard.num_examples
    return got

  for split, n in (('train', NUM_TRAIN), ('validation', NUM_VAL)):
    whole = collections.Counter(raw(split, 0, 1))
    assert sum(whole.values()) == n and max(whole.values()) == 1
    for count in (2, 3):
      parts = [raw(split, i, count) for i in range(count)]
      assert max(map(len, parts)) - min(map(len, parts)) <= 1
      assert collections.Counter(itertools.chain(*parts)) == whole


def _digest(image):
  return hashlib.sha1(image.tobytes()).hexdigest()


def _eval_examples(cfg, batch, index, count):
  """(image digest, label) of masked-in examples, and the iterable."""
  ev = pipeline.create_eval_iterator(
      cfg, global_batch_size=batch, process_index=index, process_count=count
  )
  kept, padded = [], 0
  for b in ev:
    assert b['image'].shape == (batch // count, 32, 32, 3)
    assert b['mask'].dtype == bool
    kept += [
        (_digest(im), int(l))
        for im, l, m in zip(b['image'], b['label'], b['mask'])
        if m
    ]
    padded += int((~b['mask']).sum())
    # Padding is blank, so it can not reach metrics even unmasked by mistake.
    assert not b['image'][~b['mask']].any()
  return kept, padded, ev


@pytest.mark.parametrize('batch', [8, 16])
def test_eval_counts_every_example_once(tiny_dirs, batch):
  cfg = data_config(tiny_dirs[0])
  kept, padded, ev = _eval_examples(cfg, batch, 0, 1)
  assert ev.num_examples == NUM_VAL == len(kept)
  assert len(ev) == -(-NUM_VAL // batch) and padded == len(ev) * batch - 25
  # The labels are exactly the split's.
  truth = tfds.builder('imagenet2012', data_dir=tiny_dirs[0]).as_dataset(
      split='validation'
  )
  assert collections.Counter(l for _, l in kept) == collections.Counter(
      int(x['label']) for x in truth
  )
  # Iterable again, identically (the loop evaluates many times).
  assert _eval_examples(cfg, batch, 0, 1)[0] == kept


def test_two_processes_cover_eval_exactly_once(tiny_dirs):
  cfg = data_config(tiny_dirs[0])
  whole, _, _ = _eval_examples(cfg, 8, 0, 1)
  parts = [_eval_examples(cfg, 8, i, 2) for i in range(2)]
  # Same number of batches everywhere, or a multi-host step would hang.
  assert len(parts[0][2]) == len(parts[1][2]) == 4  # ceil(13 / 4)
  assert [p[2].num_local_examples for p in parts] == [13, 12]
  assert all(p[2].num_examples == NUM_VAL for p in parts)
  union = parts[0][0] + parts[1][0]
  assert collections.Counter(union) == collections.Counter(whole)


def test_masked_metric_equals_unpadded_metric(tiny_dirs):
  """A fixed 'classifier' scores the same with padding+mask as without."""
  cfg = data_config(tiny_dirs[0])

  def predict(images):  # any fixed function of the pixels
    return images.reshape(len(images), -1).sum(-1) % 5

  def accuracy(batch_size):
    correct = total = 0
    for b in pipeline.create_eval_iterator(cfg, global_batch_size=batch_size):
      hit = predict(b['image']) == b['label']
      correct += int((hit & b['mask']).sum())
      total += int(b['mask'].sum())
    return correct, total

  # Batch 25 needs no padding; 8 pads 7 examples.
  assert accuracy(8) == accuracy(25) and accuracy(25)[1] == NUM_VAL


def test_images_are_learnable(tiny_dirs):
  """Nearest class-mean colour, fit on train crops, labels val crops."""
  cfg = data_config(tiny_dirs[0])
  train = take(_train(cfg, global_batch_size=20), 6)
  feats = lambda im: im.reshape(len(im), -1, 3).mean(1)
  x = np.concatenate([feats(b['image']) for b in train])
  y = np.concatenate([b['label'] for b in train])
  means = np.stack([x[y == c].mean(0) for c in range(5)])
  correct = 0
  for b in pipeline.create_eval_iterator(cfg, global_batch_size=8):
    dist = ((feats(b['image'])[:, None] - means[None]) ** 2).sum(-1)
    correct += int(((dist.argmin(1) == b['label']) & b['mask']).sum())
  assert correct / NUM_VAL > 0.9


def test_undecodable_images_are_skipped_and_counted(corrupt_dirs, caplog):
  cfg = data_config(corrupt_dirs[0], image_size=24)
  # Train: 12 examples, one undecodable; batch 12 = one epoch per step.
  it = _train(cfg, global_batch_size=12)
  batches = take(it, 2)
  assert it.num_skipped == 2  # once per epoch
  for b in batches:
    assert b['image'].shape == (12, 24, 24, 3)
    assert (b['image'].reshape(12, -1).max(1) > 0).all()  # no blank rows
  assert 'undecodable' in caplog.text
  # Eval: 4 examples, one undecodable: masked out and counted.
  ev = pipeline.create_eval_iterator(cfg, global_batch_size=3)
  masks = np.concatenate([b['mask'] for b in ev])
  assert ev.num_examples == 4 and ev.num_skipped == 1
  assert masks.sum() == 3 and masks.size == 6


def test_catching_errors_keeps_order_and_flags_failures():
  encoded = [
      tf.io.encode_jpeg(tf.fill([8, 8, 3], tf.constant(v, tf.uint8))).numpy()
      for v in (10, 20, 30, 40, 50)
  ]
  encoded[1] = b'not an image'
  encoded[4] = encoded[4][:40]
  ds = tf.data.Dataset.from_tensor_slices((tf.constant(encoded), tf.range(5)))

  def fn(image, i):
    return {'v': tf.reduce_max(tf.io.decode_jpeg(image)), 'i': i}

  out = records.map_and_batch_catching_errors(
      ds,
      fn,
      lambda image, i: {'v': tf.constant(0, tf.uint8), 'i': i},
      batch_size=2,
      num_parallel_calls=2,
  )
  got = list(out.as_numpy_iterator())
  assert len(got) == 2  # the remainder is dropped, as in training
  np.testing.assert_array_equal(got[0]['i'], [0, 1])
  np.testing.assert_array_equal(got[0]['ok'], [True, False])
  np.testing.assert_array_equal(got[1]['ok'], [True, True])
  assert got[0]['v'][0] > 0 and got[1]['v'].min() > 0
  filled = records.fill_failed(got[0])
  np.testing.assert_array_equal(filled['i'], [0, 0])
  assert int(filled['num_skipped']) == 1


def test_missing_dataset_error_names_the_expected_files(tmp_path):
  cfg = data_config(
      str(tmp_path / 'nothing'), manual_dir=str(tmp_path / 'tars')
  )
  with pytest.raises(pipeline.DataNotFoundError) as e:
    pipeline.dataset_info(cfg)
  msg = str(e.value)
  for part in (
      'ILSVRC2012_img_train.tar',
      'ILSVRC2012_img_val.tar',
      str(tmp_path / 'tars'),
      str(tmp_path / 'nothing'),
      'MISSING',
      'se_flax.data.prepare',
  ):
    assert part in msg, part
  with pytest.raises(FileNotFoundError):
    pipeline.create_train_iterator(cfg, global_batch_size=2, seed=0)


def test_hide_accelerators_is_idempotent():
  data.hide_accelerators_from_tf()
  data.hide_accelerators_from_tf()
  assert not tf.config.get_visible_devices('GPU')
