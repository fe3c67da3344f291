"""Input-only benchmark: train and eval preprocessing throughput.

    python -m se_flax.data.pipeline_benchmark              # realistic JPEGs
    python -m se_flax.data.pipeline_benchmark --data_dir=/data/tfds  # ImageNet

Reports images/s (and per core) of the training and eval pipelines, next to
the bare cost of the work they cannot avoid, measured on the same images in
the same run: fused decode-and-crop of a random Inception crop + resize (+ the
cast to uint8), mapped in parallel over JPEG bytes held in memory. The ratio
train / bare is the pipeline's efficiency (target >= 0.7). The training
pipeline is also measured with timm's RandAugment (--rand_augment, RSB's
'rand-m7-mstd0.5-inc1' by default): ratio with / without (target >= 0.7).
--threads=1 measures one core (tf.data pool and map parallelism 1). Without
--data_dir it first builds a small ImageNet of ImageNet-like JPEGs (~500x375,
~100 kB) with `tiny_imagenet`, through TFDS's real builder.
"""

import argparse
import copy
import functools
import os
import statistics
import sys
import time
from typing import Callable, Dict, Optional, Sequence

import tensorflow as tf
import tensorflow_datasets as tfds

from se_flax.data import config as config_lib
from se_flax.data import ops
from se_flax.data import pipeline
from se_flax.data import tf_setup
from se_flax.data import tiny_imagenet


def _cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def _rate(batches, batch_size: int, seconds: float, warmup: int = 3):
  """(images per second, images per CPU-second) of an iterator of batches.

  CPU time counts all threads of this process, so the second figure is the
  per-core rate, and stays meaningful when other jobs share the machine.
  """
  for _ in range(warmup):
    next(batches)
  count, wall, cpu = 0, time.perf_counter(), time.process_time()
  while time.perf_counter() - wall < seconds:
    next(batches)
    count += batch_size
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  return count / wall, count / cpu


def bare_dataset(jpegs, data_config, batch_size: int, parallel: int = -1):
  """Decode-and-crop + resize of in-memory JPEGs, nothing else."""
  window = functools.partial(
      ops.random_crop_window,
      min_area=data_config.min_area,
      aspect_ratio=tuple(data_config.aspect_ratio),
      max_attempts=data_config.max_attempts,
  )

  def work(index, image_bytes):
    seed = tf.stack([index, index])
    crop = tf.image.decode_and_crop_jpeg(
        image_bytes,
        window(tf.image.extract_jpeg_shape(image_bytes), seed),
        channels=3,
    )
    image = tf.image.resize(
        crop, [data_config.image_size] * 2, method=data_config.interpolation
    )
    return tf.cast(image, tf.uint8)

  ds = tf.data.Dataset.from_tensor_slices(jpegs).repeat().enumerate()
  parallel = tf.data.AUTOTUNE if parallel < 0 else parallel
  ds = ds.map(work, num_parallel_calls=parallel, deterministic=True)
  options = tf.data.Options()
  options.threading.max_intra_op_parallelism = 1
  if data_config.threads:
    options.threading.private_threadpool_size = data_config.threads
  return ds.batch(batch_size).prefetch(2).with_options(options)


def _first_jpegs(data_config, count: int):
  """The encoded images of the first `count` train examples."""
  builder = tfds.builder(data_config.name, data_dir=data_config.data_dir)
  count = min(count, builder.info.splits[data_config.train_split].num_examples)
  ds = builder.as_dataset(
      split=f'{data_config.train_split}[:{count}]',
      decoders={data_config.image_key: tfds.decode.SkipDecoding()},
  )
  return [x[data_config.image_key] for x in ds]


def run(
    data_config,
    *,
    batch_size: int,
    seconds: float,
    repeats: int,
    rand_augment: str = 'rand-m7-mstd0.5-inc1',
    log: Callable[[str], None] = print,
) -> Dict[str, float]:
  """Measures bare, train, train with RandAugment and eval throughput,
  alternating `repeats` times.

  Returns:
    Medians over rounds: '<kind>' images/s and '<kind>_per_cpu' images per
    CPU-second for kind in (bare, train, train_ra, eval); 'ratio' = train /
    bare of images/s and 'cpu_ratio' of the per-CPU figures, 'ra_ratio' and
    'ra_cpu_ratio' = train_ra / train (medians of the ratios within each
    round, which share the machine's load); 'cores'.
  """
  tf_setup.hide_accelerators_from_tf()
  jpegs = tf.stack(_first_jpegs(data_config, 512))
  sizes = tf.strings.length(jpegs).numpy()
  log(
      f'{len(sizes)} JPEGs in memory for the bare run, mean '
      f'{sizes.mean() / 1e3:.0f} kB; image_size {data_config.image_size}'
  )
  ra_config = copy.deepcopy(data_config)
  ra_config.rand_augment = rand_augment
  makers = {
      'bare': lambda r: iter(
          bare_dataset(
              jpegs, data_config, batch_size, data_config.num_parallel_calls
          )
      ),
      'train': lambda r: pipeline.create_train_iterator(
          data_config, global_batch_size=batch_size, seed=r
      ),
      'train_ra': lambda r: pipeline.create_train_iterator(
          ra_config, global_batch_size=batch_size, seed=r
      ),
      'eval': lambda r: _forever(
          pipeline.create_eval_iterator(
              data_config, global_batch_size=batch_size
          )
      ),
  }
  rows = []
  for r in range(repeats):
    row = {}
    for kind, make in makers.items():
      batches = make(r)
      row[kind], row[f'{kind}_per_cpu'] = _rate(batches, batch_size, seconds)
      del batches  # stops its threads before the next measurement
    row['ratio'] = row['train'] / row['bare']
    row['cpu_ratio'] = row['train_per_cpu'] / row['bare_per_cpu']
    row['ra_ratio'] = row['train_ra'] / row['train']
    row['ra_cpu_ratio'] = row['train_ra_per_cpu'] / row['train_per_cpu']
    log(
        '  '.join(
            f'{k} {v:.2f}' if 'ratio' in k else f'{k} {v:.0f}'
            for k, v in row.items()
        )
    )
    rows.append(row)
  result = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
  result['cores'] = _cores()
  return result


def _forever(iterable):
  while True:
    yield from iterable


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument(
      '--data_dir',
      default=None,
      help='Prepared TFDS data; default: build realistic '
      'JPEGs in --work_dir.',
  )
  parser.add_argument('--work_dir', default='/tmp/se_flax_data_benchmark')
  parser.add_argument('--name', default='imagenet2012')
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--seconds', type=float, default=10.0)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--rand_augment', default='rand-m7-mstd0.5-inc1')
  parser.add_argument(
      '--threads',
      type=int,
      default=0,
      help='tf.data threads and map parallelism; 0 = all cores.',
  )
  args = parser.parse_args(argv)

  data_config = config_lib.default_data_config()
  data_config.name = args.name
  data_config.image_size = args.image_size
  if args.threads:
    data_config.threads = args.threads
    data_config.num_parallel_calls = args.threads
  if args.data_dir:
    data_config.data_dir = args.data_dir
  else:
    data_config.data_dir, _ = tiny_imagenet.make_tiny_imagenet(
        args.work_dir,
        num_classes=10,
        train_per_class=64,
        val_per_class=20,
        image_size=433,  # ~500x375, ImageNet's typical size
        noise=20.0,  # ~100 kB per JPEG at quality 90, as ImageNet's
        num_shards=4,
    )
  r = run(
      data_config,
      batch_size=args.batch_size,
      seconds=args.seconds,
      repeats=args.repeats,
      rand_augment=args.rand_augment,
  )
  print(
      f'cores {r["cores"]}, image_size {args.image_size}, batch '
      f'{args.batch_size}; medians of {args.repeats} rounds\n'
      f'{"":30s} {"images/s":>9s} {"per CPU-s":>10s}\n'
      f'{"bare decode-and-crop + resize":30s} {r["bare"]:9.0f} '
      f'{r["bare_per_cpu"]:10.0f}\n'
      f'{"train pipeline":30s} {r["train"]:9.0f} {r["train_per_cpu"]:10.0f}'
      f'\n{"train + " + args.rand_augment:30s} {r["train_ra"]:9.0f} '
      f'{r["train_ra_per_cpu"]:10.0f}'
      f'\n{"eval pipeline":30s} {r["eval"]:9.0f} {r["eval_per_cpu"]:10.0f}'
      f'\ntrain / bare: {r["ratio"]:.2f} (wall), {r["cpu_ratio"]:.2f} (CPU)'
      f'\nwith / without RandAugment: {r["ra_ratio"]:.2f} (wall), '
      f'{r["ra_cpu_ratio"]:.2f} (CPU)'
  )
  return 0


if __name__ == '__main__':
  sys.exit(main())
