"""The throughput benchmark: FLOP convention, modes, HLO checks, no TF.

Timings are not asserted (they are benchmarks, not tests); the tests check
that each mode runs end to end on tiny inputs and reports what it claims.
"""

import contextlib
import json
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from se_flax import benchmark
from se_flax.benchmark import workers
from se_flax.models import registry
from se_flax.models.stats import model_stats

TINY = dict(model='seresnet_tiny', batch=8, image_size=32, dtype='fp32')


def test_flop_convention_is_six_macs_per_train_image():
  model = registry.create_model('seresnet_tiny')
  macs = model_stats(model, 32).macs
  flops = benchmark.flops_per_image(model, 32)
  assert flops == {'macs': macs, 'infer': 2 * macs, 'train': 6 * macs}
  assert benchmark.TRAIN_FLOPS_PER_FORWARD == 3
  # The MFU numerator: model FLOPs of the images of one step, per second
  # and per device, over the measured peak.
  v = benchmark.Variant(
      label='x',
      framework='jax',
      kind='train',
      batch=8,
      run=lambda n: None,
      devices=2,
      flops_per_image=flops['train'],
      times=[0.5, 0.25, 1.0],
  )
  s = benchmark.summarize(v, peak=1e9)
  assert s['images_per_s'] == pytest.approx(16.0)  # Median step 0.5 s.
  assert s['images_per_s_per_device'] == pytest.approx(8.0)
  assert s['mfu'] == pytest.approx(8.0 * 6 * macs / 1e9)
  assert (s['step_ms_min'], s['step_ms_max']) == (250.0, 1000.0)


def test_paired_ratio_is_per_round():
  a = benchmark.Variant(
      'a', 'jax', 'train', 1, lambda n: None, times=[2.0, 4.0, 3.0]
  )
  b = benchmark.Variant(
      'b', 'jax', 'train', 1, lambda n: None, times=[1.0, 4.0, 2.0]
  )
  r = benchmark.paired_ratio(a, b)
  assert r['time_ratio'] == pytest.approx(1.5)  # Median of 2, 1, 1.5.
  assert (r['time_ratio_min'], r['time_ratio_max']) == (1.0, 2.0)
  assert r['rounds'] == 3 and r['time_ratio_interval'] is None  # Too few.


def test_median_interval_from_order_statistics():
  # n = 9: P(Binomial(9, 1/2) <= 1) = 10/512 per side, so the 2nd smallest
  # and 2nd largest bracket the median at 1 - 20/512; the 3rd would miss
  # 2 * 46/512 > 5%.
  values = [9.0, 1.0, 8.0, 2.0, 7.0, 3.0, 6.0, 4.0, 5.0]
  low, high, coverage = benchmark.median_interval(values)
  assert (low, high) == (2.0, 8.0)
  assert coverage == pytest.approx(1 - 20 / 512)
  assert benchmark.median_interval(values[:5]) is None
  assert benchmark.median_interval([1.0] * 6)[:2] == (1.0, 1.0)
  # It holds the true median as often as it claims (skewed draws).
  rng = np.random.default_rng(0)
  for n in (6, 9, 25):
    hits = [
        low <= 1.0 <= high
        for low, high, _ in (
            benchmark.median_interval(list(rng.lognormal(0.0, 0.3, n)))
            for _ in range(2000)
        )
    ]
    assert np.mean(hits) >= 0.94, (n, np.mean(hits))
  a = benchmark.Variant(
      'a',
      'jax',
      'train',
      1,
      lambda n: None,
      times=[1.0 + 0.01 * i for i in range(9)],
  )
  b = benchmark.Variant('b', 'jax', 'train', 1, lambda n: None, times=[1.0] * 9)
  r = benchmark.paired_ratio(a, b)
  assert r['time_ratio_interval'] == pytest.approx((1.01, 1.07))
  assert r['time_ratio_interval_coverage'] == pytest.approx(1 - 20 / 512)


def test_se_overhead_mode_cli_without_tensorflow(tmp_path):
  # The CLI in a fresh process: a user's train step, SE model and plain
  # twin, interleaved; then no TensorFlow module may be loaded. (The
  # loop's step and per-path processes: the tests below.)
  out = tmp_path / 'bench.json'
  code = textwrap.dedent(f"""
      import sys
      from se_flax import benchmark
      benchmark.main(['--model', 'seresnet_tiny', '--batch', '8',
                      '--image_size', '32', '--dtype', 'fp32',
                      '--kinds', 'train', '--paths', 'user',
                      '--se_overhead', '--reps', '2', '--steps', '1',
                      '--warmup', '1', '--peak_size', '64',
                      '--json', {str(out)!r}])
      tf = sorted(m for m in sys.modules if m.split('.')[0] in
                  ('tensorflow', 'tensorflow_datasets'))
      assert not tf, tf
  """)
  # The fusion check reads the optimised program: all of XLA's passes.
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS='0')
  done = subprocess.run(
      [sys.executable, '-c', code],
      capture_output=True,
      text=True,
      timeout=600,
      env=env,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert '| seresnet_tiny (SE off) [user jit] | user jit step | train |' in (
      done.stdout
  )
  results = json.loads(out.read_text())
  rows = {(v['label'], v['kind']): v for v in results['variants']}
  labels = ['seresnet_tiny [user jit]', 'seresnet_tiny (SE off) [user jit]']
  assert set(rows) == {(m, 'train') for m in labels}
  assert {v['path'] for v in results['variants']} == {'user jit step'}
  # Configured as train.py configures itself.
  assert results['env']['runtime'].startswith(
      'runtime for cpu: malloc ' 'freed memory kept'
  )
  assert 'xla_cpu_experimental_ynn_fusion_type' in results['env']['xla_flags']
  for v in rows.values():
    assert v['rounds'] == 2 and v['step_ms'] > 0 and v['compile_s'] > 0
    assert v['host_transfers'] == []
    assert v['mfu'] > 0  # Its formula: the first test.
  se = rows['seresnet_tiny [user jit]', 'train']
  plain = rows['seresnet_tiny (SE off) [user jit]', 'train']
  assert se['flops_per_image'] > plain['flops_per_image']
  # Every SE scale of the tiny model lands in its residual-add fusion.
  assert se['se_fusion'] == {'se_blocks': 4, 'fused': 4}
  assert plain['se_fusion'] == {'se_blocks': 0, 'fused': 0}
  # SE overhead of the one path.
  ratios = {
      (r['kind'], r['numerator'], r['denominator']) for r in results['ratios']
  }
  assert ratios == {('train', *labels)}


# ~1 min; by default the CLI runs in a fresh process in
# test_se_overhead_mode_cli_*, a worker in test_side_by_side_mode_*.
@pytest.mark.slow
def test_each_path_runs_in_its_own_process_tuned_or_not(monkeypatch):
  # The tuned worker configures itself as train.py does; the untuned one
  # is left as Python starts (its environment must not carry flags this
  # process added). All of XLA's passes in the workers: fusion is checked.
  monkeypatch.setenv('JAX_DISABLE_MOST_OPTIMIZATIONS', '0')
  results = benchmark.run(
      **TINY,
      kinds=('infer',),
      paths=('user',),
      runtimes=('tuned', 'untuned'),
      se_overhead=True,
      reps=2,
      steps=1,
      warmup=1,
      peak_size=64,
  )
  rows = {(v['label'], v['path']): v for v in results['variants']}
  assert set(rows) == {
      (f'seresnet_tiny{se} [user jit]{u}', f'user jit step{u}')
      for se in ('', ' (SE off)')
      for u in ('', ', untuned')
  }
  for v in rows.values():
    assert v['rounds'] == 2 and v['step_ms'] > 0 and v['compile_s'] > 0
    assert v['host_transfers'] == []
    assert v['se_fusion'] == (
        {'se_blocks': 0, 'fused': 0}
        if 'SE off' in v['label']
        else {'se_blocks': 4, 'fused': 4}
    )
  (tuned,) = [n for n in results['notes'] if n.startswith('user jit step:')]
  (untuned,) = [
      n for n in results['notes'] if n.startswith('user jit step, untuned:')
  ]
  assert 'runtime for cpu: malloc freed memory kept' in tuned, tuned
  assert 'ynn_fusion_type' in tuned.split('XLA_FLAGS')[-1], tuned
  assert 'runtime not configured' in untuned, untuned
  assert 'ynn_fusion_type' not in untuned, untuned
  ratios = {(r['numerator'], r['denominator']) for r in results['ratios']}
  assert ratios == {
      (f'seresnet_tiny [user jit]{u}', f'seresnet_tiny (SE off) [user jit]{u}')
      for u in ('', ', untuned')
  }


def test_untuned_env_drops_only_the_added_flags(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--a=1 --b=2')
  assert workers.untuned_env('--b=2')['XLA_FLAGS'] == '--a=1'
  assert 'XLA_FLAGS' not in workers.untuned_env('--a=1 --b=2')


def test_train_variant_steps_the_real_state():
  v = benchmark.loop_step_variants(
      'resnet_tiny', 8, 32, jnp.float32, kinds=('train',), keep_hlo=True
  )[0]
  v.run(2)
  v.run(1)
  # Three steps through one Compiled executable (which cannot recompile),
  # each donating the state it was given.
  state = v.handle['state']
  assert int(state.step) == 3
  assert v.se_fusion == {'se_blocks': 0, 'fused': 0}
  assert 'input_output_alias' in v.hlo  # Donated state buffers.


@pytest.mark.parametrize('scope', ['se', 'bn3/se_gate'])
def test_se_fusion_detects_a_materialised_scale(full_optimization, scope):
  # 'se': SqueezeExcite's scale; 'bn3/se_gate': BN and SE as one layer.
  def block(y, s, r, also_return_scaled):
    with jax.named_scope('blk'):
      with contextlib.ExitStack() as stack:
        for name in scope.split('/'):
          stack.enter_context(jax.named_scope(name))
        z = y * s[:, None, None, :]
      out = jax.nn.relu(z + r)
    return (out, z) if also_return_scaled else out

  args = (jnp.ones((2, 4, 4, 8)), jnp.ones((2, 8)), jnp.ones((2, 4, 4, 8)))
  for materialised, fused in ((False, 1), (True, 0)):
    hlo = jax.jit(lambda *a: block(*a, materialised)).lower(*args).compile()
    assert benchmark.se_fusion(hlo.as_text()) == {
        'se_blocks': 1,
        'fused': fused,
    }


_STUB_WORKER = r"""
import json, sys, time
args = json.loads(sys.argv[1])
if args['model'] == 'missing':
  print(json.dumps({'error': 'timm has no model missing'}), flush=True)
  sys.exit(0)
print(json.dumps({'ready': {'torch': 'stub', 'timm': 'stub', 'device': 'cpu',
                            'threads': 1,
                            'first_s': {k: 0.0 for k in args['kinds']}}}),
      flush=True)
for line in sys.stdin:
  cmd = json.loads(line)
  time.sleep(0.002 * cmd['steps'])
  print(json.dumps({'wall_s': 0.0, 'cpu_s': 0.0, 'sys_s': 0.0, 'faults': 0}),
        flush=True)
"""


def test_side_by_side_mode_drives_a_worker(monkeypatch, tmp_path):
  # CI has no torch: a stub speaking the worker protocol stands in for it.
  stub = tmp_path / 'stub_worker.py'
  stub.write_text(_STUB_WORKER)
  monkeypatch.setattr(workers, 'TORCH_WORKER_SCRIPT', str(stub))
  monkeypatch.setattr(workers, 'torch_available', lambda python=None: True)
  results = benchmark.run(
      **TINY,
      kinds=('infer',),
      timm=True,
      timm_model='seresnet18',
      se_overhead=True,
      reps=2,
      steps=2,
      warmup=1,
      peak_size=64,
  )
  labels = [(v['label'], v['framework']) for v in results['variants']]
  assert labels == [
      ('seresnet_tiny', 'jax'),
      ('seresnet_tiny (SE off)', 'jax'),
      ('timm seresnet18', 'torch'),
      ('timm resnet18', 'torch'),
  ]
  pairs = {(r['numerator'], r['denominator']) for r in results['ratios']}
  assert pairs == {
      ('seresnet_tiny', 'seresnet_tiny (SE off)'),
      ('seresnet_tiny', 'timm seresnet18'),
      ('timm seresnet18', 'timm resnet18'),
  }
  torch_rows = [v for v in results['variants'] if v['framework'] == 'torch']
  for v in torch_rows:
    assert v['rounds'] == 2 and v['step_ms'] >= 2.0  # The stub sleeps.
  assert 'time(seresnet_tiny) / time(timm seresnet18)' in (
      benchmark.format_table(results)
  )
  # A name timm lacks is skipped with a note, not an error.
  results = benchmark.run(
      **TINY,
      kinds=('infer',),
      timm=True,
      timm_model='missing',
      reps=1,
      steps=1,
      warmup=0,
      peak_size=64,
  )
  assert [v['framework'] for v in results['variants']] == ['jax']
  assert any('missing' in n for n in results['notes'])


def test_side_by_side_skipped_without_torch(monkeypatch):
  monkeypatch.setattr(workers, 'torch_available', lambda python=None: False)
  results = benchmark.run(
      **TINY,
      kinds=('infer',),
      timm=True,
      reps=1,
      steps=1,
      warmup=0,
      peak_size=64,
  )
  assert [v['framework'] for v in results['variants']] == ['jax']
  assert any('skipped' in n for n in results['notes'])


_TORCH_PYTHON = os.environ.get('SE_FLAX_TORCH_PYTHON')


@pytest.mark.skipif(
    not (_TORCH_PYTHON or workers.torch_available()),
    reason='needs torch + timm (set SE_FLAX_TORCH_PYTHON)',
)
def test_side_by_side_with_real_timm():
  results = benchmark.run(
      **TINY,
      kinds=('train',),
      timm=True,
      timm_model='resnet18',
      torch_python=_TORCH_PYTHON,
      reps=2,
      steps=1,
      warmup=1,
      peak_size=64,
  )
  row = [v for v in results['variants'] if v['framework'] == 'torch'][0]
  assert row['label'] == 'timm resnet18' and row['step_ms'] > 0
  assert np.isfinite(results['ratios'][0]['time_ratio'])


def test_benchmark_compiles_the_step_training_runs(tmp_path, monkeypatch):
  # The program train_and_evaluate steps (recorded with the arguments it is
  # given) and the benchmark's loop variant for the same config: one HLO,
  # and the same XLA options (which the HLO text does not show).
  from se_flax.train import loop
  from tests.train.tiny_config import tiny_config

  real_jit_steps, seen, options = loop.jit_steps, {}, []

  def recording_jit_steps(*args, **kwargs):
    train_fn, eval_fn = real_jit_steps(*args, **kwargs)
    options.append(
        args[5] if len(args) > 5 else kwargs.get('compiler_options', 'default')
    )

    def train_and_record(state, batch):
      seen.setdefault(
          'args',
          jax.tree_util.tree_map(
              lambda x: jax.ShapeDtypeStruct(
                  x.shape, x.dtype, sharding=x.sharding
              ),
              (state, batch),
          ),
      )
      return train_fn(state, batch)

    train_and_record.lower = train_fn.lower
    seen['train_fn'] = train_fn
    return train_and_record, eval_fn

  monkeypatch.setattr(loop, 'jit_steps', recording_jit_steps)
  loop.train_and_evaluate(tiny_config(num_train_steps=1), str(tmp_path / 'run'))
  trained = seen['train_fn'].lower(*seen['args']).compile().as_text()
  config = tiny_config(num_train_steps=1)
  steps_per_epoch = config.data.synthetic_train_examples // config.batch_size
  (variant,) = benchmark.loop_step_variants(
      None,
      None,
      config.data.image_size,
      None,
      kinds=('train',),
      keep_hlo=True,
      config=config,
      num_classes=config.data.synthetic_num_classes,
      steps_per_epoch=steps_per_epoch,
  )
  assert _without_metadata(variant.hlo) == _without_metadata(trained)
  assert options == ['default', 'default']


def _without_metadata(hlo_text: str) -> str:
  # Source locations differ with the order of tracing; the program not.
  program = hlo_text.split('\nFileNames')[0]
  return re.sub(r', metadata=\{[^}]*\}', '', program)
