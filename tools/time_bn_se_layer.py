"""Times a bottleneck's tail, BN (+ SE) + residual add + ReLU, fwd + bwd.

Three versions of `relu(f(x) + shortcut)` for one stage's shape (NHWC,
float32, batch statistics, the gradient of a random projection of the
output with respect to x, the shortcut and all parameters):

- plain: `cpu_grads.batch_norm_train` (no SE);
- composed: that BN, then SE (squeeze, two FCs, sigmoid, scale), as
  `excite_after_norm` computed it before entry 15 of PERFORMANCE.md;
- fused: `cpu_grads.batch_norm_squeeze` + `batch_norm_gated`, what
  `layers.excite_after_norm` runs in training on CPU.

It also prints the fused version's largest gradient difference from the
composed one, relative to each gradient's largest value. Rounds are
interleaved; medians in ms.

    python tools/time_bn_se_layer.py --shapes 16x56x256,16x28x512 --rounds 25
"""

import argparse
import time

from se_flax import runtime

runtime.configure()

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

from se_flax import cpu_grads

EPS = 1e-5


def _gate(p, z):
  hidden = jax.nn.relu(z @ p['w1'] + p['b1'])
  return jax.nn.sigmoid(hidden @ p['w2'] + p['b2'])


def plain(p, x, shortcut):
  y = cpu_grads.batch_norm_train(x, p['scale'], p['bias'], EPS)
  return jax.nn.relu(y + shortcut)


def composed(p, x, shortcut):
  y = cpu_grads.batch_norm_train(x, p['scale'], p['bias'], EPS)
  s = _gate(p, y.mean((1, 2)))
  return jax.nn.relu(y * s[:, None, None, :] + shortcut)


def fused(p, x, shortcut):
  z = cpu_grads.batch_norm_squeeze(x, p['scale'], p['bias'], EPS)
  y = cpu_grads.batch_norm_gated(x, p['scale'], p['bias'], _gate(p, z), EPS)
  return jax.nn.relu(y + shortcut)


def time_shape(n, hw, c, rounds):
  keys = jax.random.split(jax.random.key(0), 5)
  x = jax.random.normal(keys[0], (n, hw, hw, c)) * 2 + 0.5
  shortcut = jax.random.normal(keys[1], x.shape)
  proj = jax.random.normal(keys[2], x.shape)
  r = max(1, c // 16)
  p = {
      'scale': jnp.full((c,), 1.3),
      'bias': jnp.full((c,), 0.1),
      'w1': jax.random.normal(keys[3], (c, r)) / np.sqrt(c),
      'b1': jnp.zeros((r,)),
      'w2': jax.random.normal(keys[4], (r, c)) / np.sqrt(r),
      'b2': jnp.zeros((c,)),
  }
  steps = {}
  for name, f in (('plain', plain), ('composed', composed), ('fused', fused)):
    loss = lambda p, x, s, f=f: jnp.sum(f(p, x, s) * proj)
    steps[name] = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
  out = {k: jax.block_until_ready(f(p, x, shortcut)) for k, f in steps.items()}
  worst = max(
      float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
      for a, b in zip(
          jax.tree_util.tree_leaves(out['fused']),
          jax.tree_util.tree_leaves(out['composed']),
      )
  )
  times = {k: [] for k in steps}
  for _ in range(rounds):
    for k, f in steps.items():
      start = time.perf_counter()
      jax.block_until_ready(f(p, x, shortcut))
      times[k].append(time.perf_counter() - start)
  ms = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
  print(
      f'{n}x{hw}x{hw}x{c}: plain {ms["plain"]:.2f} ms, composed '
      f'{ms["composed"]:.2f} ms ({ms["composed"] / ms["plain"]:.3f}x), '
      f'fused {ms["fused"]:.2f} ms ({ms["fused"] / ms["plain"]:.3f}x); '
      f'fused vs composed gradients: {worst:.1e} of the largest'
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument(
      '--shapes',
      default='16x56x256,16x28x512,16x14x1024,16x7x2048',
      help='NxHWxC per stage (SE-ResNet-50 at 224 px: the default)',
  )
  parser.add_argument('--rounds', type=int, default=25)
  args = parser.parse_args()
  print(f'jax {jax.__version__} on {jax.devices()[0].platform}')
  for shape in args.shapes.split(','):
    n, hw, c = (int(v) for v in shape.split('x'))
    time_shape(n, hw, c, args.rounds)


if __name__ == '__main__':
  main()
