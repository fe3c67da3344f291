"""Models, conversion and the training step never import TensorFlow (the
GPU machines this project targets may not have it)."""

import subprocess
import sys

_PROGRAM = """
import sys
import jax, jax.numpy as jnp
import se_flax
from se_flax import convert, layers
from se_flax.models import stats
from se_flax.train import checkpoint, inputs, loop, optim, sharding, steps
from se_flax.train import config as config_lib
model = se_flax.create_model('seresnet_tiny', num_classes=3)
x = jnp.zeros((2, 32, 32, 3), jnp.uint8)
variables = model.init(jax.random.key(0), x.astype(jnp.float32), train=False)
convert.to_timm(variables, 'seresnet_tiny')
config = config_lib.base_config()
config.data.source = 'synthetic'
config.data.image_size = 32
made = inputs.create_inputs(config)
next(made.train(0))
assert 'tensorflow' not in sys.modules, sorted(
    m for m in sys.modules if m.startswith('tensorflow'))
print('ok')
"""


def _runs_ok(program: str) -> None:
  """Runs `program` in a fresh interpreter; it must print 'ok' last."""
  out = subprocess.run(
      [sys.executable, '-c', program],
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().endswith('ok')


def test_models_conversion_and_training_code_do_not_import_tensorflow():
  _runs_ok(_PROGRAM)


def test_models_pretrained_and_predict_import_without_training_packages():
  """`pip install se_flax[pretrained]` has neither ml_collections, optax
  nor Orbax: the package, its loaders and predict must import without."""
  blocked = ('ml_collections', 'optax', 'orbax', 'tensorflow', 'clu')
  program = (
      'import sys\n'
      f'for name in {blocked!r}: sys.modules[name] = None\n'
      'import se_flax, se_flax.predict\n'
      'from se_flax.pretrained import load, preprocess\n'
      'from se_flax.analysis import gates, statistics\n'
      "se_flax.create_model('seresnet_tiny', num_classes=3)\n"
      "print('ok')\n"
  )
  _runs_ok(program)
