"""load_pretrained and predict through a real huggingface_hub client,
offline, over a Hub cache the tests write (tests/hub_cache.py)."""

import json
import os
import subprocess
import sys

from huggingface_hub import constants as hub_constants
import jax
import numpy as np
import pytest

import se_flax
from se_flax import convert
from se_flax import predict as predict_lib
from se_flax import testing
from se_flax.pretrained import labels
from se_flax.pretrained import preprocess
from tests import hub_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timm_state(name, num_classes=1000, seed=0):
  """Seeded random weights in timm's format (what a Hub file holds)."""
  layout = convert.timm_layout(name, num_classes)
  key_shapes = [(k, leaf.torch_shape, 'float32') for k, leaf in layout.items()]
  key_shapes += [
      (k[: -len('running_var')] + 'num_batches_tracked', (), 'int64')
      for k in layout
      if k.endswith('.running_var')
  ]
  return testing.random_state_dict(key_shapes, seed)


def photo(path, size=(120, 90), seed=0):
  """A smooth random RGB image (JPEG-friendly), saved as PNG."""
  import PIL.Image

  rng = np.random.default_rng(seed)
  small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
  image = PIL.Image.fromarray(small).resize(size, PIL.Image.Resampling.BICUBIC)
  image.save(path)
  return str(path)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
  """An empty Hub cache; huggingface_hub offline (as HF_HUB_OFFLINE=1)."""
  cache = tmp_path / 'hub'
  cache.mkdir()
  monkeypatch.setattr(hub_constants, 'HF_HUB_OFFLINE', True)
  monkeypatch.setattr(hub_constants, 'HF_HUB_CACHE', str(cache))
  return str(cache)


TINY_CFG = {
    'input_size': [3, 48, 48],
    'test_input_size': [3, 56, 56],
    'crop_pct': 0.9,
    'test_crop_pct': 1.0,
    'interpolation': 'bicubic',
    'mean': [0.5, 0.4, 0.3],
    'std': [0.2, 0.25, 0.3],
    'num_classes': 5,
}


def test_hub_repository_loads_offline_with_its_config(offline_hub, tmp_path):
  state = timm_state('seresnet_tiny', num_classes=5)
  names = ['ant', 'bee', 'cat', 'dog', 'eel']
  hub_cache.add_to_cache(
      offline_hub,
      'someone/seresnet_tiny.test',
      hub_cache.timm_hub_files(
          state, 'seresnet_tiny', TINY_CFG, label_names=names
      ),
  )
  pretrained = se_flax.load_pretrained('hf-hub:someone/seresnet_tiny.test')
  assert pretrained.model_name == 'seresnet_tiny'
  assert pretrained.source == 'hf-hub:someone/seresnet_tiny.test'
  cfg = pretrained.config
  assert (cfg.input_size, cfg.test_input_size) == (48, 56)
  assert (cfg.eval_size(), cfg.eval_crop_pct()) == (56, 1.0)
  assert (cfg.eval_size(False), cfg.eval_crop_pct(False)) == (48, 0.9)
  assert cfg.interpolation == 'bicubic' and cfg.mean == (0.5, 0.4, 0.3)
  assert cfg.label_names == tuple(names)
  # The logits are those of the source weights.
  x = testing.random_images(0, 2, 40).transpose(0, 2, 3, 1)
  model, variables = pretrained
  expected = se_flax.create_model('seresnet_tiny', num_classes=5).apply(
      convert.from_timm(state, 'seresnet_tiny'), x, train=False
  )
  np.testing.assert_array_equal(
      model.apply(variables, x, train=False), expected
  )
  # The config reaches preprocessing: 56 px crops, normalised by its stats.
  image = photo(tmp_path / 'a.png')
  batch = preprocess.eval_batch([image], cfg)
  assert batch.shape == (1, 56, 56, 3)
  top = predict_lib.predict(pretrained, [image], top_k=3)[0]
  probs = np.asarray(
      jax.nn.softmax(model.apply(variables, batch, train=False))
  )[0]
  assert [p.class_id for p in top] == list(np.argsort(-probs)[:3])
  assert [p.label for p in top] == [names[p.class_id] for p in top]
  # predict's jitted program vs eager apply: float32 rounding apart.
  np.testing.assert_allclose(
      [p.probability for p in top], np.sort(probs)[::-1][:3], rtol=1e-5
  )


def test_a_timm_tag_resolves_to_its_hub_repo_and_imagenet_names(
    offline_hub,
):
  tag = se_flax.pretrained.find_tag('resnet18.a1_in1k')
  assert tag.hf_hub_id == 'timm/resnet18.a1_in1k'
  state = timm_state('resnet18')
  hub_cache.add_to_cache(
      offline_hub,
      'timm/resnet18.a1_in1k',
      hub_cache.timm_hub_files(state, 'resnet18', tag.pretrained_cfg),
  )
  for source in ('resnet18.a1_in1k', 'timm/resnet18.a1_in1k', 'resnet18'):
    pretrained = se_flax.load_pretrained(source)
    assert pretrained.source == 'hf-hub:timm/resnet18.a1_in1k', source
  cfg = pretrained.config
  assert (cfg.eval_size(), cfg.eval_crop_pct()) == (288, 1.0)
  assert cfg.interpolation == 'bicubic'
  assert cfg.label_names[:2] == ('n01440764', 'n01443537')
  assert cfg.label_descriptions[1].startswith('goldfish')
  np.testing.assert_array_equal(
      pretrained.variables['params']['fc']['kernel'], state['fc.weight'].T
  )
  # A new head: everything else kept, `fc` left to the caller.
  headless = se_flax.load_pretrained('resnet18.a1_in1k', num_classes=7)
  assert headless.model.num_classes == 7
  assert 'fc' not in headless.variables['params']
  assert headless.config.num_classes == 7
  assert headless.config.label_names is None
  np.testing.assert_array_equal(
      headless.variables['params']['stem']['conv1']['kernel'],
      pretrained.variables['params']['stem']['conv1']['kernel'],
  )


def test_uncached_weights_offline_name_repo_file_and_fetch_command(
    offline_hub,
):
  with pytest.raises(se_flax.pretrained.PretrainedNotAvailableError) as e:
    se_flax.load_pretrained('seresnet50.a1_in1k', revision='v1')
  message = str(e.value)
  for part in (
      "'timm/seresnet50.a1_in1k'",
      "'config.json'",
      'HF_HUB_OFFLINE',
      offline_hub,
      'hf download timm/seresnet50.a1_in1k config.json model.safetensors '
      '--revision v1',
  ):
    assert part in message
  # Cached config but no weights: the missing file is the one named.
  hub_cache.add_to_cache(
      offline_hub,
      'timm/seresnet50.a1_in1k',
      {'config.json': json.dumps({'architecture': 'seresnet50'}).encode()},
  )
  with pytest.raises(se_flax.pretrained.PretrainedNotAvailableError) as e:
    se_flax.load_pretrained('seresnet50.a1_in1k')
  assert "'model.safetensors'" in str(e.value)


def test_bad_sources_are_clear_errors(offline_hub, tmp_path):
  with pytest.raises(ValueError, match=r"Did you mean \['seresnet50.a1_in1k'"):
    se_flax.load_pretrained('seresnet50.a1_in1kk')
  with pytest.raises(ValueError, match='not a pretrained tag'):
    se_flax.load_pretrained('seresnet50.nope')
  legacy = se_flax.pretrained.find_tag('legacy_seresnet50')
  with pytest.raises(
      se_flax.pretrained.PretrainedNotAvailableError, match='not on the'
  ) as e:
    se_flax.load_pretrained('legacy_seresnet50.in1k')
  assert legacy.url in str(e.value)
  with pytest.raises(FileNotFoundError, match='No file or directory'):
    se_flax.load_pretrained(str(tmp_path / 'missing.safetensors'))
  from safetensors.numpy import save_file

  path = str(tmp_path / 'w.safetensors')
  save_file(timm_state('seresnet_tiny', 5), path)
  with pytest.raises(ValueError, match='pass model_name='):
    se_flax.load_pretrained(path)
  with pytest.raises(ValueError, match='missing keys'):
    se_flax.load_pretrained(path, model_name='seresnet18')
  hub_cache.add_to_cache(
      offline_hub,
      'someone/vit',
      {'config.json': json.dumps({'architecture': 'vit_base'}).encode()},
  )
  with pytest.raises(ValueError, match="timm 'vit_base', which se_flax"):
    se_flax.load_pretrained('someone/vit')


def test_local_files_and_directories(tmp_path):
  from safetensors.numpy import save_file

  state = timm_state('seresnet_tiny', 5)
  path = str(tmp_path / 'w.safetensors')
  save_file(state, path)
  loaded = se_flax.load_pretrained(path, model_name='seresnet_tiny')
  assert loaded.config == se_flax.pretrained.PretrainedConfig(num_classes=5)
  # A tag as model_name brings the tag's preprocessing (as timm does).
  state18 = timm_state('legacy_seresnet18')
  save_file(state18, str(tmp_path / 'r.safetensors'))
  tagged = se_flax.load_pretrained(
      str(tmp_path / 'r.safetensors'), model_name='legacy_seresnet18.in1k'
  )
  assert tagged.model_name == 'legacy_seresnet18'
  assert tagged.config.interpolation == 'bicubic'
  assert tagged.config.label_descriptions == labels.imagenet_descriptions()
  # A directory of timm's Hub files.
  directory = tmp_path / 'snapshot'
  directory.mkdir()
  for name, data in hub_cache.timm_hub_files(
      state, 'seresnet_tiny', TINY_CFG
  ).items():
    (directory / name).write_bytes(data)
  from_dir = se_flax.load_pretrained(str(directory))
  assert from_dir.config.test_input_size == 56
  np.testing.assert_array_equal(
      from_dir.variables['params']['fc']['kernel'],
      loaded.variables['params']['fc']['kernel'],
  )
  # Weights alone, with a 1000-class tag as model_name: the weights' 5
  # classes, so no ImageNet names on them.
  bare = tmp_path / 'bare'
  bare.mkdir()
  (bare / 'model.safetensors').write_bytes(
      (directory / 'model.safetensors').read_bytes()
  )
  head5 = se_flax.load_pretrained(str(bare), model_name='seresnet_tiny')
  assert head5.config.num_classes == 5 and head5.config.label_names is None


def test_imagenet_names_are_tfds_order():
  tfds = pytest.importorskip('tensorflow_datasets')
  path = os.path.join(
      os.path.dirname(tfds.__file__), 'datasets', 'imagenet2012', 'labels.txt'
  )
  with open(path) as f:
    assert tuple(f.read().split()) == labels.imagenet_label_names()
  descriptions = labels.imagenet_descriptions()
  assert len(descriptions) == 1000 and all(descriptions)
  # ImageNet's two cranes (the bird and the machine) share a lemma.
  assert descriptions[134] == descriptions[517] == 'crane'


def test_eval_transform_geometry(tmp_path):
  import PIL.Image

  cfg = se_flax.pretrained.PretrainedConfig(
      input_size=32, crop_pct=0.8, interpolation='bilinear'
  )
  # A constant image: every pixel is (c / 255 - mean) / std exactly.
  image = PIL.Image.new('RGB', (90, 60), (10, 128, 250))
  out = preprocess.eval_image(image, cfg)
  assert out.shape == (32, 32, 3) and out.dtype == np.float32
  expected = (
      np.array([10, 128, 250], np.float32) / np.float32(255)
      - np.asarray(cfg.mean, np.float32)
  ) / np.asarray(cfg.std, np.float32)
  np.testing.assert_array_equal(out, np.broadcast_to(expected, out.shape))
  # Shorter side to floor(32 / 0.8) = 40 (so 60 x 40), then the centre 32
  # (14 px off the left): a marker at x = 44..45 of 90 lands at 15..16.
  pixels = np.zeros((60, 90, 3), np.uint8)
  pixels[:, 44:46] = 255
  out = preprocess.eval_image(PIL.Image.fromarray(pixels), cfg)
  bright = np.where(out[16, :, 0] > 0)[0]
  assert (bright.min(), bright.max()) == (15, 16)
  # Grayscale and paths work; images smaller than the crop are padded.
  gray = tmp_path / 'g.png'
  PIL.Image.new('L', (8, 12), 200).save(gray)
  assert preprocess.eval_image(str(gray), cfg).shape == (32, 32, 3)
  bad = tmp_path / 'bad.jpg'
  bad.write_bytes(b'not an image')
  with pytest.raises(ValueError, match='bad.jpg: not a readable image'):
    preprocess.eval_image(str(bad), cfg)


def test_predict_command_offline(tmp_path):
  """`python -m se_flax.predict` in its own process, HF_HOME + offline."""
  home = tmp_path / 'hf'
  state = timm_state('seresnet_tiny', 5)
  hub_cache.add_to_cache(
      str(home / 'hub'),
      'someone/tiny',
      hub_cache.timm_hub_files(
          state, 'seresnet_tiny', TINY_CFG, label_names=list('abcde')
      ),
  )
  images = [photo(tmp_path / 'x.png'), photo(tmp_path / 'y.png', seed=1)]
  env = dict(
      os.environ,
      HF_HOME=str(home),
      HF_HUB_OFFLINE='1',
      JAX_PLATFORMS='cpu',
  )
  env.pop('HF_HUB_CACHE', None)

  def predict_command(*args):
    return subprocess.run(
        [sys.executable, '-m', 'se_flax.predict', '--top-k', '2', *args],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )

  run = predict_command('--pretrained', 'someone/tiny', '--json', *images)
  assert run.returncode == 0, run.stderr
  rows = [json.loads(line) for line in run.stdout.splitlines()]
  assert [r['image'] for r in rows] == images
  local = tmp_path / 'local'
  local.mkdir()
  for name, data in hub_cache.timm_hub_files(
      state, 'seresnet_tiny', TINY_CFG, label_names=list('abcde')
  ).items():
    (local / name).write_bytes(data)
  expected = predict_lib.predict(
      se_flax.load_pretrained(str(local)), images, top_k=2
  )
  for row, preds in zip(rows, expected):
    assert [p['label'] for p in row['top_k']] == [p.label for p in preds]
    np.testing.assert_allclose(
        [p['probability'] for p in row['top_k']],
        [p.probability for p in preds],
        rtol=1e-5,
    )
  text = predict_command('--pretrained', 'someone/tiny', images[0])
  assert text.returncode == 0 and text.stdout.splitlines()[0] == images[0]
  assert len(text.stdout.splitlines()) == 3  # The path, then 2 classes.
  missing = predict_command('--pretrained', 'seresnet50.a1_in1k', images[0])
  assert missing.returncode == 2
  assert missing.stderr.startswith('error: Cannot get')
  assert 'hf download timm/seresnet50.a1_in1k' in missing.stderr


def test_workdir_and_its_export_load_with_the_run_config(
    tiny_se_workdir, tmp_path
):
  import shutil

  from se_flax.train import checkpoint

  # The run's se_reduction=1 and crop_pct=0.9 must survive loading.
  workdir = str(tmp_path / 'run')
  shutil.copytree(tiny_se_workdir, workdir)
  names = [f'class_{i}' for i in range(10)]
  with open(os.path.join(workdir, checkpoint.LABEL_NAMES), 'w') as f:
    json.dump(names, f)
  from_workdir = se_flax.load_pretrained(workdir)
  assert from_workdir.model_name == 'seresnet_tiny'
  assert from_workdir.config.label_names == tuple(names)
  assert (from_workdir.config.input_size, from_workdir.config.crop_pct) == (
      32,
      0.9,
  )
  se_kernel = from_workdir.variables['params']['stage1_block0']['se']
  model = from_workdir.model
  x = testing.random_images(1, 2, 32).transpose(0, 2, 3, 1)
  expected = model.apply(checkpoint.load_variables(workdir), x, train=False)
  np.testing.assert_array_equal(
      model.apply(from_workdir.variables, x, train=False), expected
  )
  export = checkpoint.export_variables(workdir, str(tmp_path / 'w.npz'))
  from_export = se_flax.load_pretrained(export)
  assert repr(from_export.model) == repr(model)  # (partials differ by id)
  assert from_export.config == from_workdir.config
  np.testing.assert_array_equal(
      from_export.model.apply(from_export.variables, x, train=False), expected
  )
  assert jax.tree.structure(from_export.variables) == jax.tree.structure(
      from_workdir.variables
  )
  assert se_kernel['fc1']['kernel'].shape[-1] == 16  # Default: 8.
  with pytest.raises(ValueError, match="holds a 'seresnet_tiny'"):
    se_flax.load_pretrained(export, model_name='seresnet50')
  # Fine-tuning sources: a new head, the run's model otherwise.
  new_head = se_flax.load_pretrained(workdir, num_classes=3)
  assert repr(new_head.model) == repr(model.clone(num_classes=3))


def test_predict_batches_and_reuses_its_program(tmp_path):
  from safetensors.numpy import save_file

  path = str(tmp_path / 'w.safetensors')
  save_file(timm_state('seresnet_tiny', 5), path)
  pretrained = se_flax.load_pretrained(path, model_name='seresnet_tiny')
  images = [photo(tmp_path / f'{i}.png', seed=i) for i in range(5)]
  one_by_one = np.concatenate(
      [predict_lib.probabilities(pretrained, [i]) for i in images]
  )
  before = predict_lib._softmax_logits._cache_size()
  batched = predict_lib.probabilities(pretrained, images, batch_size=2)
  again = predict_lib.probabilities(pretrained, images, batch_size=2)
  # Batches of 2, 2 and a padded 2: one new program, used three times.
  assert predict_lib._softmax_logits._cache_size() == before + 1
  np.testing.assert_allclose(batched, one_by_one, rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(again, batched)
  assert predict_lib.probabilities(pretrained, []).shape == (0, 5)
