"""TF-free parts: config defaults, normalisation, synthetic batches."""

import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from se_flax import data
from se_flax.data import synthetic


def test_default_config_is_the_paper_recipe():
  c = data.default_data_config()
  assert c.name == 'imagenet2012' and c.data_dir is None
  assert (c.train_split, c.eval_split) == ('train', 'validation')
  assert c.image_size == 224 and c.crop_pct == 0.875
  assert c.min_area == 0.08
  np.testing.assert_allclose(c.aspect_ratio, (3 / 4, 4 / 3))
  assert c.random_rotation == 0 and c.pixel_jitter == 0
  c.data_dir = 'gs://bucket/tfds'  # placeholders accept strings
  c.eval_image_size = 256


def test_importing_the_package_and_synthetic_does_not_import_tf():
  code = (
      'import sys, se_flax.data, se_flax.data.synthetic, '
      'se_flax.data.normalize; '
      'assert "tensorflow" not in sys.modules, "TF imported"'
  )
  subprocess.run([sys.executable, '-c', code], check=True)


def test_normalize_images_matches_the_formula():
  images = np.arange(2 * 4 * 4 * 3).reshape(2, 4, 4, 3).astype(np.uint8) * 5
  mean = np.array([0.485, 0.456, 0.406])
  std = np.array([0.229, 0.224, 0.225])
  expected = (images / 255.0 - mean) / std
  out = data.normalize_images(images)
  assert out.dtype == jnp.float32 and out.shape == images.shape
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  out16 = data.normalize_images(images.astype(np.float32), jnp.bfloat16)
  assert out16.dtype == jnp.bfloat16
  np.testing.assert_allclose(out16.astype(np.float32), expected, atol=0.02)


def test_synthetic_iterator_format_and_determinism():
  kw = dict(global_batch_size=8, image_size=16, num_classes=10, seed=3)
  a = synthetic.create_synthetic_iterator(
      **kw, process_index=1, process_count=2
  )
  b = synthetic.create_synthetic_iterator(
      **kw, process_index=1, process_count=2
  )
  for _ in range(5):
    x, y = next(a), next(b)
    assert x['image'].shape == (4, 16, 16, 3) and x['image'].dtype == np.uint8
    assert x['label'].shape == (4,) and x['label'].dtype == np.int32
    assert x['label'].max() < 10
    np.testing.assert_array_equal(x['image'], y['image'])
  other = next(synthetic.create_synthetic_iterator(**kw))
  assert other['image'].shape == (8, 16, 16, 3)


def test_synthetic_rejects_indivisible_batch():
  with pytest.raises(ValueError, match='divisible'):
    synthetic.create_synthetic_iterator(
        global_batch_size=6,
        image_size=8,
        num_classes=2,
        seed=0,
        process_count=4,
    )


def test_synthetic_global_batch_is_independent_of_process_count():
  kw = dict(
      global_batch_size=8, image_size=8, num_classes=10, seed=1, start_step=5
  )
  whole = next(synthetic.create_synthetic_iterator(**kw))
  parts = [
      next(
          synthetic.create_synthetic_iterator(
              **kw, process_index=i, process_count=2
          )
      )
      for i in range(2)
  ]
  for key in ('image', 'label'):
    np.testing.assert_array_equal(
        whole[key], np.concatenate([p[key] for p in parts])
    )


def test_synthetic_eval_pads_and_masks():
  batches = list(
      synthetic.create_synthetic_eval(
          num_examples=20,
          global_batch_size=8,
          image_size=8,
          num_classes=10,
          seed=0,
      )
  )
  assert len(batches) == 3
  assert sum(int(b['mask'].sum()) for b in batches) == 20
  assert all(b['image'].shape == (8, 8, 8, 3) for b in batches)
