"""Every registry family at its real size through StableHLO and the TF
SavedModel, reloaded and equal to se_flax to 1e-4 relative (slow)."""

import jax
import numpy as np
import pytest

import se_flax
from se_flax import export as export_lib
from se_flax.pretrained import config as config_lib
from se_flax.pretrained import load as load_lib

# One network per family (the SE variants), at its reference input side.
FAMILIES = {
    'seresnet50': 224,  # ResNet
    'seresnext50_32x4d': 224,  # ResNeXt
    'legacy_seresnet18': 224,  # ceil-mode max pool
    'senet154': 224,  # deep stem
    'se_bn_inception': 224,
    'se_inception_resnet_v2': 299,
    'se_vgg16_bn': 224,
    'se_mobilenetv1_100': 224,
    'se_shufflenet_g3': 224,
}


def random_variables(model, size: int, seed: int = 0):
  """Seeded weights of `model`'s shapes without compiling its init: He
  normal kernels, BatchNorm statistics away from 0/1 so they count."""
  shapes = jax.eval_shape(
      lambda: model.init(
          jax.random.key(0),
          np.zeros((1, size, size, 3), np.float32),
          train=False,
      )
  )
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path[-1:])
    shape = leaf.shape
    if 'kernel' in name:
      fan_in = max(int(np.prod(shape[:-1])), 1)
      return rng.normal(0, np.sqrt(2 / fan_in), shape).astype(np.float32)
    if 'scale' in name and jax.tree_util.keystr(path[-2:-1]) == "['bn3']":
      # The last BN of a bottleneck, small as in se_flax.testing's timm
      # weights: residual sums of unit branches would grow logits to 1e3+,
      # and then float32 rounding, not the export, decides the comparison.
      return rng.uniform(0.1, 0.3, shape).astype(np.float32)
    if 'var' in name or 'scale' in name:
      return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    return rng.normal(0, 0.1, shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.mark.slow
@pytest.mark.parametrize('format_', ['stablehlo', 'savedmodel'])
@pytest.mark.parametrize('name', sorted(FAMILIES))
def test_family_round_trips_at_full_size(name, format_, tmp_path):
  if format_ == 'savedmodel':
    pytest.importorskip('tensorflow')
  size = FAMILIES[name]
  model = se_flax.create_model(name, num_classes=1000)
  pretrained = load_lib.Pretrained(
      model,
      random_variables(model, size),
      config_lib.PretrainedConfig(input_size=size),
      'random',
      name,
  )
  done = export_lib.export_checked(
      pretrained, format_, tmp_path / name, batch=1
  )
  (check,) = done.checks
  assert check.ok and check.max_abs_reference > 0, str(check)
