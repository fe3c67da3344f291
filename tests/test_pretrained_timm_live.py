"""Pretrained loading and prediction against timm itself, when installed.

Not a CI dependency (skipped without torch and timm; run in a venv with
both and without TensorFlow). timm writes the Hub files (`save_for_hf`)
of a randomly initialised model; both libraries then load them from the
same offline Hub cache, each through its own Hub code, and predict on real
photographs that pip packages ship (matplotlib's and scikit-image's).
"""

import os

import numpy as np
import pytest

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')

from huggingface_hub import constants as hub_constants  # pylint: disable=g-import-not-at-top

import se_flax  # pylint: disable=g-import-not-at-top
from se_flax import predict as predict_lib  # pylint: disable=g-import-not-at-top
from tests import timm_reference  # pylint: disable=g-import-not-at-top


def photographs():
  found = []
  try:
    import matplotlib

    found.append(
        os.path.join(
            matplotlib.get_data_path(), 'sample_data', 'grace_hopper.jpg'
        )
    )
  except ImportError:
    pass
  try:
    import skimage.data

    found += [
        os.path.join(skimage.data.data_dir, name)
        for name in ('chelsea.png', 'coffee.png', 'astronaut.png', 'rocket.jpg')
    ]
  except ImportError:
    pass
  found = [p for p in found if os.path.exists(p)]
  if not found:
    pytest.skip('no photographs: pip install matplotlib scikit-image')
  return found


def timm_hub_cache(tmp_path, monkeypatch, arch, tag):
  """timm's own Hub files of a random `arch`, cached as timm/<arch>.<tag>."""
  cache = tmp_path / 'hub'
  repo = timm_reference.cache_random_model(
      arch, tag, saved_dir=str(tmp_path / 'saved'), cache_dir=str(cache)
  )
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  monkeypatch.setattr(hub_constants, 'HF_HUB_OFFLINE', True)
  monkeypatch.setattr(hub_constants, 'HF_HUB_CACHE', str(cache))
  return repo


@pytest.mark.parametrize(
    'arch,tag',
    [('seresnet50', 'a1_in1k'), ('legacy_seresnet18', 'in1k')],
)
def test_top5_on_photographs_equals_timm(tmp_path, monkeypatch, arch, tag):
  images = photographs()
  repo = timm_hub_cache(tmp_path, monkeypatch, arch, tag)
  if timm.models.get_pretrained_cfg(f'{arch}.{tag}').hf_hub_id is None:
    # Not on the Hub (a URL-only tag): load timm's files as a directory.
    source = str(tmp_path / 'saved')
  else:
    source = f'{arch}.{tag}'
  reference = timm.create_model(
      f'hf-hub:{repo}', pretrained=True, cache_dir=hub_constants.HF_HUB_CACHE
  ).eval()
  transform = timm.data.create_transform(
      **timm.data.resolve_data_config(model=reference, use_test_size=True)
  )
  from PIL import Image

  with torch.no_grad():
    x = torch.stack([transform(Image.open(p).convert('RGB')) for p in images])
    expected = torch.softmax(reference(x), -1).numpy()

  pretrained = se_flax.load_pretrained(source)
  ours = predict_lib.probabilities(pretrained, images)
  # The same preprocessing: timm's tensors vs se_flax's NHWC arrays.
  from se_flax.pretrained import preprocess

  np.testing.assert_allclose(
      preprocess.eval_batch(images, pretrained.config),
      x.numpy().transpose(0, 2, 3, 1),
      atol=2e-6,
  )
  np.testing.assert_allclose(ours, expected, atol=1e-3, rtol=0)
  top5 = predict_lib.predict(pretrained, images, top_k=5)
  names = timm.data.ImageNetInfo()
  for row, preds in zip(expected, top5):
    timm_top5 = list(np.argsort(-row)[:5])
    assert [p.class_id for p in preds] == timm_top5
    assert [p.description for p in preds] == [
        names.index_to_description(i) for i in timm_top5
    ]
