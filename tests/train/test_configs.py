"""Every config file loads, validates and builds its model (and twin)."""

import importlib.util
import pathlib

import pytest

from se_flax.train import config as config_lib
from se_flax.train import validation

CONFIGS = pathlib.Path(__file__).parents[2] / 'configs'
CASES = [
    ('default', None),
    ('ablation', None),
    ('ablation', 'no_stage5_se'),
    ('ablation', 'no_se_5_2_5_3'),
    ('modern', None),
    ('synthetic', None),
    ('quickstart', None),
    ('paired', 'se_resnet50'),
    ('paired', 'se_resnext50_32x4d'),
    ('paired', 'se_resnet101'),
    ('paired', 'se_inception_resnet_v2'),
    ('paired', 'se_bn_inception'),
    ('paired', 'se_vgg16_bn'),
    ('mobile', 'se_mobilenetv1_100'),
    ('mobile', 'se_shufflenet_g3'),
    ('rsb', 'a1'),
    ('rsb', 'a2'),
    ('rsb', 'a3'),
]


def _load(name, arg):
  spec = importlib.util.spec_from_file_location(name, CONFIGS / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert module.__doc__ and 'python train.py' in module.__doc__
  return module.get_config(arg) if arg else module.get_config()


@pytest.mark.parametrize('name,arg', CASES)
def test_config_validates_and_has_a_plain_twin(name, arg, monkeypatch):
  config = _load(name, arg)
  config.batch_size = 64  # Divisible by the 8 test devices.
  config.eval_batch_size = 64
  config.lock()
  validation.validate_config(config)
  with_se = config_lib.build_model(config, 1000)
  config.model.se = False
  for key in ('se_reduction', 'se_squeeze', 'se_gate', 'se_use_bias'):
    config.model[key] = None
  plain = config_lib.build_model(config, 1000)
  assert with_se.se is not None and plain.se is None


@pytest.mark.parametrize(
    'variant,se_params',
    [('no_stage5_se', 942_080), ('no_se_5_2_5_3', 1_466_368)],
)
def test_ablation_variants_remove_the_stage5_se_parameters(variant, se_params):
  from se_flax.models import model_stats

  model = config_lib.build_model(_load('ablation', variant), 1000)
  ablated = model_stats(model)
  # ResNet-50 has 25,557,032; all 16 SE blocks (no biases) add 2,514,944.
  assert model_stats(model.clone(se=None)).params == 25_557_032
  assert ablated.se_params == se_params
  assert ablated.params == 25_557_032 + se_params
