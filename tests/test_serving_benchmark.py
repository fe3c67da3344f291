"""The serving benchmark's harness (`se_flax.benchmark.serving`), tiny.

Worker processes, interleaved timing, the probe check across runtimes and
the ratios to timm's fastest configuration, on seresnet_tiny at 32 px.
ONNX, TF and timm parts run where those are installed, else are skipped.
"""

import importlib.util
import os

import pytest

from se_flax.benchmark import serving, timing, workers

_TORCH_PYTHON = os.environ.get('SE_FLAX_TORCH_PYTHON')


def _has(module: str) -> bool:
  return importlib.util.find_spec(module) is not None


def _variant(label, framework, batch, times, probe=None):
  v = timing.Variant(
      label=label,
      framework=framework,
      kind='serve',
      batch=batch,
      run=lambda n: None,
      handle={'probe': probe, 'first_s': 0.0},
  )
  v.times = list(times)
  return v


def test_ratios_are_to_the_fastest_timm_config_per_batch():
  variants = [
      _variant('onnx', 'jax', 1, [1.0, 1.0, 1.0]),
      _variant('timm eager', 'torch', 1, [3.0, 3.0, 3.0]),
      _variant('timm eager_cl', 'torch', 1, [2.0, 2.0, 2.0]),
      _variant('onnx', 'jax', 16, [8.0, 8.0, 8.0]),
      _variant('timm eager', 'torch', 16, [4.0, 4.0, 4.0]),
  ]
  ratios = {
      (r['batch'], r['numerator'], r['denominator']): r['time_ratio']
      for r in serving.ratios_to_timm(variants)
  }
  assert ratios == {
      (1, 'onnx', 'timm eager_cl'): 0.5,
      (1, 'timm eager', 'timm eager_cl'): 1.5,
      (16, 'onnx', 'timm eager'): 2.0,
  }


def test_probe_differences_are_relative_to_jit_off():
  variants = [
      _variant('jit_off', 'jax', 1, [1.0], [[2.0, -4.0]]),
      _variant('onnx', 'jax', 1, [1.0], [[2.0, -3.0]]),
      _variant('timm eager', 'torch', 1, [1.0], None),
  ]
  (p,) = serving.probe_differences(variants)
  assert (p['runtime'], p['max_abs'], p['max_rel']) == ('onnx', 1.0, 0.25)


def test_unknown_runtime_is_named():
  with pytest.raises(ValueError, match="'tflite'"):
    serving.run_serving('seresnet_tiny', runtimes=('tflite',))


def test_tiny_serving_run_times_every_runtime_and_they_agree():
  runtimes = ['jit_off', 'stablehlo'] + (
      ['onnx'] if _has('onnxruntime') else []
  )
  results = serving.run_serving(
      'seresnet_tiny',
      batches=(1,),
      image_size=32,
      runtimes=runtimes,
      timm=False,
      reps=2,
      steps=1,
      warmup=0,
  )
  assert not results['notes'], results['notes']
  rows = {(s['label'], s['batch']): s for s in results['variants']}
  assert set(rows) == {(r, 1) for r in runtimes}
  for s in rows.values():
    assert s['rounds'] == 2 and s['step_ms'] > 0 and s['first_s'] > 0
  assert len(results['probe']) == len(runtimes) - 1
  for p in results['probe']:
    assert p['max_rel'] < 1e-4, p  # Same weights, same images.
  assert results['env']['threads'] == len(os.sched_getaffinity(0))
  text = serving.format_serving(results)
  assert '| stablehlo | 1 |' in text and 'logits vs jit_off' in text


@pytest.mark.slow
@pytest.mark.skipif(not _has('tensorflow'), reason='needs TensorFlow')
def test_savedmodel_runtime_agrees_with_jit():
  results = serving.run_serving(
      'seresnet_tiny',
      batches=(1,),
      image_size=32,
      runtimes=('jit_off', 'savedmodel'),
      timm=False,
      reps=1,
      steps=1,
      warmup=0,
  )
  assert not results['notes'], results['notes']
  (p,) = results['probe']
  assert p['runtime'] == 'savedmodel' and p['max_rel'] < 1e-4


@pytest.mark.skipif(
    not (_TORCH_PYTHON or workers.torch_available()),
    reason='needs torch + timm (set SE_FLAX_TORCH_PYTHON)',
)
def test_timm_configs_run_side_by_side():
  results = serving.run_serving(
      'seresnet_tiny',
      batches=(1,),
      image_size=32,
      runtimes=('jit_off',),
      timm_model='resnet18',
      timm_configs=('eager', 'eager_cl'),
      timm_python=_TORCH_PYTHON,
      reps=2,
      steps=1,
      warmup=0,
  )
  labels = {s['label'] for s in results['variants']}
  assert labels == {'jit_off', 'timm eager', 'timm eager_cl'}
  assert any(r['numerator'] == 'jit_off' for r in results['ratios'])


def test_timm_skipped_with_a_note_without_torch(monkeypatch):
  monkeypatch.setattr(workers, 'torch_available', lambda python=None: False)
  results = serving.run_serving(
      'seresnet_tiny',
      batches=(1,),
      image_size=32,
      runtimes=(),
      reps=1,
      steps=1,
      warmup=0,
  )
  assert results['variants'] == [] and results['ratios'] == []
  assert results['notes'] == ['torch/timm not importable: timm skipped']
