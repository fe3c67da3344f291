"""The input benchmark runs end to end (figures themselves: see README)."""

from se_flax.data import pipeline_benchmark as benchmark
from tests.data.helpers import data_config


def test_benchmark_reports_all_figures(tiny_dirs):
  result = benchmark.run(
      data_config(tiny_dirs[0]),
      batch_size=8,
      seconds=0.3,
      repeats=1,
      rand_augment='',  # the train_ra figures, without RA's build time
      log=lambda _: None,
  )
  for key in (
      'bare',
      'train',
      'train_ra',
      'eval',
      'bare_per_cpu',
      'train_per_cpu',
      'train_ra_per_cpu',
      'eval_per_cpu',
      'ratio',
      'cpu_ratio',
      'ra_ratio',
      'ra_cpu_ratio',
      'cores',
  ):
    assert result[key] > 0, key
