"""The RSB recipes run and resume: each `configs/rsb.py` procedure through
train.py on a tiny ImageNet (TFDS's builder), every component on (LAMB,
BCE, Mixup/CutMix, RandAugment, stochastic depth, repeated augmentation),
and a stopped run resumed bitwise with all of them, for the TFDS and the
folder sources."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.train.helpers import ROOT, assert_trees_equal, read_metrics
from tests.train.helpers import train_env

RSB = os.path.join(ROOT, 'configs', 'rsb.py')
# Tiny-scale overrides; every component of the recipe stays on.
_TINY = (
    'model.name=seresnet_tiny',
    'data.source=tiny_imagenet',
    'data.tiny.num_classes=5',
    'data.tiny.train_per_class=12',
    'data.tiny.val_per_class=5',
    'data.tiny.image_size=48',
    'data.image_size=32',
    'data.eval_image_size=32',
    'data.shuffle_buffer=64',
    'data.prefetch=1',
    'batch_size=16',
    'eval_batch_size=16',
    'log_every_steps=6',
    'checkpoint_every_steps=12',
    'async_checkpoints=False',
    'eval_every_epochs=100.0',
)


@pytest.fixture(scope='module')
def tiny_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp('rsb') / 'tiny')


# A1 has every component on; A2 and A3 differ from it in numbers only (A3
# without repeats and drop path), so they run in the slow set.
@pytest.mark.parametrize(
    'procedure',
    [
        'a1',
        pytest.param('a2', marks=pytest.mark.slow),
        pytest.param('a3', marks=pytest.mark.slow),
    ],
)
def test_each_procedure_trains_through_train_py(procedure, tiny_root, tmp_path):
  workdir = str(tmp_path / procedure)
  overrides = (*_TINY, f'data.tiny.root={tiny_root}', 'num_train_steps=24')
  result = subprocess.run(
      [
          sys.executable,
          os.path.join(ROOT, 'train.py'),
          f'--config={RSB}:{procedure}',
          f'--workdir={workdir}',
          *[f'--config.{o}' for o in overrides],
      ],
      cwd=ROOT,
      env=train_env(),
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  records = read_metrics(workdir)
  train = [r for r in records if 'train/loss' in r]
  assert [r['step'] for r in train] == [6, 12, 18, 24]
  assert all(np.isfinite(r['train/loss']) for r in train)
  assert all(r.get('train/skipped_steps', 0) == 0 for r in train)
  final = [r for r in records if 'eval/top1' in r][-1]
  assert final['step'] == 24 and final['eval/num_examples'] == 25


def _all_on(root, **overrides):
  from tests.train.tiny_config import tiny_config

  config = tiny_config(**overrides)
  config.model.drop_path_rate = 0.1
  config.optimizer = 'lamb'
  config.learning_rate = 5e-3
  config.lr_schedule = 'cosine'
  config.warmup_epochs = 1.0
  config.loss = 'bce'
  config.bce_target_threshold = 0.2
  config.label_smoothing = 0.1
  config.mixup.mixup_alpha = 0.2
  config.mixup.cutmix_alpha = 1.0
  config.data.rand_augment = 'rand-m7-mstd0.5-inc1'
  config.data.repeated_augmentation = 3
  config.data.shuffle_buffer = 64
  config.data.prefetch = 1
  if root.endswith('photos'):
    config.data.source = 'folder'
    config.data.folder_root = root
  else:
    config.data.source = 'tiny_imagenet'
    config.data.tiny.root = root
    config.data.tiny.num_classes = 5
    config.data.tiny.train_per_class = 12
    config.data.tiny.val_per_class = 5
    config.data.tiny.image_size = 48
  return config


def _photo_folder(root):
  """4 classes x 12 train / 4 val JPEGs of smooth random colour fields."""
  from PIL import Image

  rng = np.random.default_rng(0)
  for split, count in (('train', 12), ('val', 4)):
    for c in range(4):
      os.makedirs(os.path.join(root, split, f'class{c}'))
      for i in range(count):
        base = rng.integers(0, 256, (6, 6, 3), np.uint8)
        image = Image.fromarray(base).resize((40 + 4 * i, 36), Image.BICUBIC)
        image.save(os.path.join(root, split, f'class{c}', f'{i}.jpg'))
  return root


@pytest.mark.parametrize('source', ['tfds', 'folder'])
def test_resume_is_bitwise_with_every_component_on(source, tmp_path):
  from se_flax.train import loop

  if source == 'folder':
    root = _photo_folder(str(tmp_path / 'photos'))
  else:
    root = str(tmp_path / 'tiny')
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  # 3-4 steps per epoch: the restart at step 2 resumes inside an epoch and
  # step 5 crosses into the next one.
  full = loop.train_and_evaluate(_all_on(root, num_train_steps=5), straight)
  loop.train_and_evaluate(_all_on(root, num_train_steps=2), resumed)
  again = loop.train_and_evaluate(_all_on(root, num_train_steps=5), resumed)
  assert_trees_equal(jax.device_get(full.state), jax.device_get(again.state))
  assert [r for r in read_metrics(resumed) if r['step'] > 2] == [
      r for r in read_metrics(straight) if r['step'] > 2
  ]
