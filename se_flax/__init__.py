"""se_flax: Squeeze-and-Excitation networks in JAX/Flax.

import se_flax
se_flax.configure_runtime()  # optional; CPU speed, before any JAX work
model = se_flax.create_model('seresnet50')
variables = model.init(jax.random.key(0), images_nhwc, train=False)
model, variables = se_flax.load_pretrained('seresnet50.a1_in1k')
"""

from se_flax.layers import SqueezeExcite
from se_flax import pretrained
from se_flax.models import create_model, feature_info, list_models, model_stats
from se_flax.pretrained import list_pretrained, load_pretrained
from se_flax.runtime import configure as configure_runtime

__version__ = '0.1.0'


def load_variables(
    workdir: str, step=None, *, ema: bool = False, best: bool = False
) -> dict:
  """`{'params', 'batch_stats'}` of a training workdir's checkpoint.

  Latest step by default; see `se_flax.train.checkpoint.load_variables`.
  """
  from se_flax.train.checkpoint import load_variables as load

  return load(workdir, step, ema=ema, best=best)
