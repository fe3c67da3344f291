"""Live comparison with timm (its own random init), when timm is installed.

Not a CI dependency: skipped unless torch and timm import. The committed
golden fixtures (test_golden.py) cover the same models without them.
"""

import numpy as np
import pytest

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')

import jax  # pylint: disable=g-import-not-at-top

import se_flax  # pylint: disable=g-import-not-at-top
from se_flax import convert  # pylint: disable=g-import-not-at-top
from tests import timm_reference  # pylint: disable=g-import-not-at-top


@pytest.mark.parametrize(
    'name,size',
    [
        ('legacy_seresnet18', 97),
        ('seresnet34', 96),
        ('legacy_seresnet50', 99),
        ('seresnext50_32x4d', 96),
        ('legacy_seresnext26_32x4d', 101),
    ],
)
def test_timm_random_init_matches(name, size):
  reference = timm_reference.random_model(name)
  state = {k: v.numpy() for k, v in reference.state_dict().items()}
  variables = convert.from_timm(state, name)
  model = se_flax.create_model(name)
  x = torch.randn(2, 3, size, size)
  with torch.no_grad():
    expected = reference(x).numpy()
  with jax.disable_jit():
    logits = np.asarray(
        model.apply(variables, x.numpy().transpose(0, 2, 3, 1), train=False)
    )
  assert np.abs(logits - expected).max() <= 1e-4 * np.abs(expected).max()
  np.testing.assert_array_equal(logits.argmax(-1), expected.argmax(-1))
