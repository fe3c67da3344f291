"""What device-side Mixup/CutMix costs in the RSB train step (a benchmark
figure for issue 29's target: at most 2% of a seresnet50 step).

    python tools/bench_mixup_cost.py [--model seresnet50] [--batch 32]
        [--image_size 224] [--dtype bf16] [--reps 8] [--steps 3]

Times train.py's own jitted step (`loop.jit_steps`, through the benchmark's
`loop_step_variants`) for the same LAMB + BCE config with Mixup/CutMix off
and on (alpha 0.2 / 1.0, switch 0.5), and Mixup/CutMix alone (normalise
+ mix of the uint8 batch, jitted by itself: an upper bound of its share,
since in the step XLA may fuse it into the first convolution's input),
in interleaved rounds, and prints the per-round time ratios (median and 95%
interval) and XLA's FLOP and byte counts of each program, figures that do
not depend on how busy the machine is.
"""

import argparse
import json

import jax


def _config(model, batch, dtype, mixup: bool):
  from se_flax.benchmark import jax_steps

  config = jax_steps.training_config(model, batch, dtype)
  config.optimizer = 'lamb'
  config.learning_rate = 5e-3
  config.loss = 'bce'
  config.bce_target_threshold = 0.2
  if mixup:
    config.mixup.mixup_alpha = 0.2
    config.mixup.cutmix_alpha = 1.0
  return config


def _mixup_alone(batch, image_size, dtype):
  """A timed Variant of normalise + Mixup/CutMix alone, and its XLA cost."""
  import jax.numpy as jnp
  import numpy as np

  from se_flax.benchmark import timing
  from se_flax.data.normalize import normalize_images
  from se_flax.train import mixup

  config = mixup.MixupConfig(mixup_alpha=0.2, cutmix_alpha=1.0)

  @jax.jit
  def mix(images, labels, key):
    x, y = mixup.mixup(
        config, key, normalize_images(images, jnp.float32), labels
    )
    return x.astype(dtype), y

  rng = np.random.default_rng(0)
  images = jnp.asarray(
      rng.integers(0, 256, (batch, image_size, image_size, 3), np.uint8)
  )
  labels = jnp.asarray(rng.integers(0, 1000, (batch,), np.int32))
  compiled = mix.lower(images, labels, jax.random.PRNGKey(0)).compile()
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list) else analysis
  cell = {'i': 0}

  def run(n):
    out = None
    for _ in range(n):
      cell['i'] += 1
      out = compiled(images, labels, jax.random.PRNGKey(cell['i']))
    jax.block_until_ready(out)

  variant = timing.Variant('mixup alone', 'jax', 'train', batch, run)
  cost = {
      'xla_flops_per_image': analysis.get('flops', 0) / batch,
      'xla_bytes_per_image': analysis.get('bytes accessed', 0) / batch,
  }
  return variant, cost


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--model', default='seresnet50')
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--image_size', type=int, default=224)
  p.add_argument('--dtype', default='bf16', choices=('bf16', 'f32'))
  p.add_argument('--reps', type=int, default=8)
  p.add_argument('--steps', type=int, default=3)
  a = p.parse_args()
  import se_flax
  from se_flax.benchmark import jax_steps, timing

  se_flax.configure_runtime()
  dtype = {'bf16': 'bfloat16', 'f32': 'float32'}[a.dtype]
  variants = []
  for mixup in (False, True):
    (v,) = jax_steps.loop_step_variants(
        a.model,
        a.batch,
        a.image_size,
        dtype,
        kinds=('train',),
        label='mixup' if mixup else 'plain',
        config=_config(a.model, a.batch, dtype, mixup),
        keep_hlo=False,
    )
    variants.append(v)
  alone, alone_cost = _mixup_alone(a.batch, a.image_size, dtype)
  variants.append(alone)
  timing.time_interleaved(variants, a.reps, a.steps)
  plain, mixed, _ = variants
  cost = {
      v.label: {'xla_flops_per_image': v.xla_flops_per_image}
      for v in (plain, mixed)
  }
  cost['mixup alone'] = alone_cost
  print(
      json.dumps(
          {
              'device': str(jax.devices()[0].device_kind),
              'model': a.model,
              'batch': a.batch,
              'image_size': a.image_size,
              'dtype': a.dtype,
              'ms_per_step': {
                  v.label: 1e3 * sorted(v.times)[len(v.times) // 2]
                  for v in variants
              },
              'mixup_step_over_plain_step': timing.paired_ratio(mixed, plain),
              'mixup_alone_over_plain_step': timing.paired_ratio(alone, plain),
              'xla_cost': cost,
          },
          indent=1,
      )
  )


if __name__ == '__main__':
  main()
