"""train_and_evaluate on a tiny ImageNet through the real TFDS pipeline."""

import jax

from tests.train.helpers import assert_trees_equal, read_metrics
from tests.train.tiny_config import tiny_config


def _config(root, **overrides):
  config = tiny_config(**overrides)
  config.data.source = 'tiny_imagenet'
  config.data.tiny.root = root
  config.data.tiny.num_classes = 5
  config.data.tiny.train_per_class = 12
  config.data.tiny.val_per_class = 5  # 25 images: not a batch multiple.
  config.data.tiny.image_size = 48
  config.data.shuffle_buffer = 64
  config.data.prefetch = 1
  return config


def test_resume_and_exact_eval_on_tfds(tmp_path):
  from se_flax.train import loop  # pylint: disable=g-import-not-at-top

  root = str(tmp_path / 'tiny')
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  # 60 training images, batch 16: 3 steps per epoch, so step 4 crosses an
  # epoch boundary after the restart at step 2.
  full = loop.train_and_evaluate(_config(root), straight)
  loop.train_and_evaluate(_config(root, num_train_steps=2), resumed)
  again = loop.train_and_evaluate(_config(root), resumed)
  assert_trees_equal(jax.device_get(full.state), jax.device_get(again.state))
  assert [r for r in read_metrics(resumed) if r['step'] > 2] == [
      r for r in read_metrics(straight) if r['step'] > 2
  ]
  assert full.eval_metrics['eval/num_examples'] == 25
  assert full.eval_metrics == again.eval_metrics
