"""se_flax.export: StableHLO and SavedModel round trips at seresnet_tiny
(32 px, 10 classes, seeded random timm weights with non-default mean/std),
the command in a subprocess without TensorFlow, and refusals."""

import logging
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import se_flax
from se_flax import export as export_lib
from se_flax.export import stablehlo
from se_flax.pretrained import preprocess
from tests import hub_cache
from tests.test_pretrained import timm_state

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
SIZE = 32
CFG = {
    'input_size': [3, 24, 24],
    'test_input_size': [3, SIZE, SIZE],
    'crop_pct': 0.9,
    'test_crop_pct': 1.0,  # A SIZE-px image is its own eval crop.
    'interpolation': 'bicubic',
    'mean': [0.5, 0.4, 0.3],
    'std': [0.2, 0.25, 0.3],
    'num_classes': 10,
}


@pytest.fixture(scope='module')
def weights_dir(tmp_path_factory):
  """A local timm model directory (model.safetensors + config.json)."""
  directory = tmp_path_factory.mktemp('tiny_weights')
  files = hub_cache.timm_hub_files(
      timm_state('seresnet_tiny', 10), 'seresnet_tiny', CFG
  )
  for name, data in files.items():
    (directory / name).write_bytes(data)
  return str(directory)


@pytest.fixture(scope='module')
def tiny(weights_dir):
  return se_flax.load_pretrained(weights_dir)


def se_flax_outputs(pretrained, x, probabilities=False):
  """The model's own outputs, computed here independently of the export."""
  apply = jax.jit(lambda v, x: pretrained.model.apply(v, x, train=False))
  logits = apply(pretrained.variables, x)
  if probabilities:
    return np.asarray(jax.nn.softmax(logits, axis=-1))
  return np.asarray(logits)


def assert_close(got, want):
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape and got.dtype == np.float32
  diff = np.max(np.abs(got - want))
  assert diff <= 1e-4 * np.max(np.abs(want)), (diff, np.max(np.abs(want)))


def test_stablehlo_dynamic_batch_round_trip(tiny, tmp_path):
  done = export_lib.export_checked(tiny, 'stablehlo', tmp_path / 'm.bin')
  assert done.spec == export_lib.InputSpec(None, SIZE, SIZE, 'float32')
  assert [c.batch for c in done.checks] == [2, 1]
  assert all(c.ok and c.max_abs_diff < 1e-5 for c in done.checks)
  with open(done.path, 'rb') as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  assert exported.platforms == ('cpu', 'cuda', 'tpu')
  assert str(exported.in_avals[0].shape[0]) == 'b'
  # A third batch size, against the model called here.
  x = np.random.default_rng(3).standard_normal((3, SIZE, SIZE, 3), np.float32)
  out = stablehlo.load(done.path)(x)
  assert out.shape == (3, 10)
  assert_close(out, se_flax_outputs(tiny, x))


def photos(count, seed=0):
  import PIL.Image

  rng = np.random.default_rng(seed)
  return [
      PIL.Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), np.uint8))
      for _ in range(count)
  ]


def test_stablehlo_preprocess_and_probabilities_equal_se_flax_predict(
    tiny, tmp_path
):
  path = export_lib.export(
      tiny,
      'stablehlo',
      tmp_path / 'p.bin',
      batch=2,
      preprocess=True,
      outputs='probabilities',
  )
  images = photos(2)
  pixels = np.stack([np.asarray(i) for i in images])
  out = stablehlo.load(path)(pixels)
  # se_flax's own eval preprocessing (the weights' mean/std) and softmax.
  x = preprocess.eval_batch(images, tiny.config)
  want = se_flax_outputs(tiny, x, probabilities=True)
  assert_close(out, want)
  np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-5)
  with pytest.raises(ValueError, match='shape'):  # A fixed batch only.
    stablehlo.load(path)(pixels[:1])


def test_savedmodel_round_trips_with_its_signature(tiny, tmp_path):
  tf = pytest.importorskip('tensorflow')
  absl_logger = logging.getLogger('absl')
  absl_logger.setLevel(logging.INFO)  # As a run with --verbosity=0 has it.
  # Dynamic batch, uint8 in, probabilities out; the check called the
  # reload at batch 2 and 1 (each a TF compile, so no more calls here).
  dynamic = export_lib.export_checked(
      tiny,
      'savedmodel',
      tmp_path / 'dyn',
      preprocess=True,
      outputs='probabilities',
  )
  assert [c.batch for c in dynamic.checks] == [2, 1]
  assert all(c.ok and c.max_abs_diff < 1e-6 for c in dynamic.checks)
  signature = tf.saved_model.load(dynamic.path).signatures['serving_default']
  (spec,) = signature.structured_input_signature[1].values()
  assert spec.name == 'images' and spec.dtype == tf.uint8
  assert spec.shape.as_list() == [None, SIZE, SIZE, 3]
  assert list(signature.structured_outputs) == ['probabilities']
  # TF's save sets absl's logger to WARNING; the export puts it back.
  assert absl_logger.level == logging.INFO
  absl_logger.setLevel(logging.NOTSET)
  fixed = export_lib.export(
      tiny, 'savedmodel', tmp_path / 'fixed', batch=2, check=False
  )
  signature = tf.saved_model.load(fixed).signatures['serving_default']
  (spec,) = signature.structured_input_signature[1].values()
  assert spec.dtype == tf.float32 and spec.shape.as_list() == [2, SIZE, SIZE, 3]
  assert list(signature.structured_outputs) == ['logits']


def test_command_exports_stablehlo_without_tensorflow(
    weights_dir, tmp_path, capsys
):
  """`python -m se_flax.export` in a fresh interpreter that cannot import
  TensorFlow: the package and the StableHLO format never need it."""
  output = tmp_path / 'cli' / 'tiny.stablehlo'
  program = (
      'import runpy, sys\n'
      "sys.modules['tensorflow'] = None\n"
      "sys.argv[0] = 'se_flax.export'\n"
      'try:\n'
      "  runpy.run_module('se_flax.export', run_name='__main__')\n"
      'finally:\n'
      "  assert not any(m.startswith('tensorflow') and sys.modules[m]\n"
      "                 for m in sys.modules), 'tensorflow imported'\n"
  )
  args = ['--pretrained', weights_dir, '--format', 'stablehlo']
  args += ['--output', str(output), '--batch', '2', '--outputs', 'logits']
  run = subprocess.run(
      [sys.executable, '-c', program, *args],
      capture_output=True,
      text=True,
      cwd=ROOT,
      timeout=300,
  )
  assert run.returncode == 0, run.stderr[-3000:]
  assert run.stdout.strip() == str(output)
  assert 'checked batch 2: max |diff|' in run.stderr
  assert output.is_file() and os.listdir(output.parent) == ['tiny.stablehlo']
  # Again: refused in one line, before anything is loaded.
  from se_flax.export import __main__ as command

  assert command.main(args) == 2
  err = capsys.readouterr().err
  assert err.startswith('error: output ') and 'exists' in err
  assert err.count('\n') == 1


def test_bad_options_are_refused_before_anything_is_written(tiny, tmp_path):
  target = tmp_path / 'm.bin'
  with pytest.raises(export_lib.ExportError, match="got 'tflite'"):
    export_lib.export(tiny, 'tflite', target)
  with pytest.raises(export_lib.ExportError, match='batch must be .* got 0'):
    export_lib.export(tiny, 'stablehlo', target, batch=0)
  with pytest.raises(export_lib.ExportError, match="got 'scores'"):
    export_lib.export(tiny, 'stablehlo', target, outputs='scores')
  with pytest.raises(export_lib.ExportError, match='image_size .* got 0'):
    export_lib.export(tiny, 'stablehlo', target, image_size=0)
  assert os.listdir(tmp_path) == []
  target.write_bytes(b'keep me')
  with pytest.raises(FileExistsError, match='m.bin exists'):
    export_lib.export(tiny, 'stablehlo', target)
  assert target.read_bytes() == b'keep me'
  assert os.listdir(tmp_path) == ['m.bin']


def test_a_reload_unlike_se_flax_is_refused_and_nothing_replaced(
    tiny, tmp_path, monkeypatch
):
  target = tmp_path / 'm.bin'
  target.write_bytes(b'keep me')
  load = stablehlo.load
  monkeypatch.setattr(
      stablehlo, 'load', lambda path: (lambda x: load(path)(x) * 1.001)
  )
  with pytest.raises(export_lib.ExportError, match='unlike se_flax') as e:
    export_lib.export(tiny, 'stablehlo', target, batch=1, overwrite=True)
  assert 'batch 1: max |diff|' in str(e.value)
  assert target.read_bytes() == b'keep me'
  assert os.listdir(tmp_path) == ['m.bin']  # The temporary one is gone.
  monkeypatch.undo()
  export_lib.export(
      tiny, 'stablehlo', target, batch=1, overwrite=True, check=False
  )
  assert target.read_bytes() != b'keep me'


def test_missing_packages_name_what_to_install(tiny, tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'tensorflow', None)
  with pytest.raises(ImportError, match='pip install tensorflow-cpu'):
    export_lib.export(tiny, 'savedmodel', tmp_path / 'sm')
  for name in ('jax2onnx', 'onnxruntime'):
    monkeypatch.setitem(sys.modules, name, None)
  monkeypatch.delitem(sys.modules, 'se_flax.export.onnx', raising=False)
  with pytest.raises(ImportError, match=r'se_flax\[export\]'):
    export_lib.export(tiny, 'onnx', tmp_path / 'm.onnx')
  assert os.listdir(tmp_path) == []
