"""Expected failures of `predict`, `load_pretrained` and the export CLI:
one line naming the path and the cause, exit status 2, no traceback.

Faults whose symptom was a process's output (a traceback, rc 0 with
'nan%') run `python -m se_flax.predict` in its own process; the others
call the same `main` in this process, which is quicker (no 5 s start).
"""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from se_flax import convert
from se_flax import predict as predict_lib
from tests.test_image_readers import png_bytes
from tests.test_pretrained import photo
from tests.test_pretrained import timm_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
META_KEY = '__se_flax_meta__'  # checkpoint.EXPORT_META_KEY (no Orbax here)


def _export_bytes(variables, meta) -> bytes:
  """An se_flax export (`checkpoint.export_variables`'s format)."""
  flat = {
      f'{collection}/{"/".join(path)}': leaf
      for collection, tree in variables.items()
      for path, leaf in _leaves(tree)
  }
  flat[META_KEY] = np.array(meta if isinstance(meta, str) else json.dumps(meta))
  out = io.BytesIO()
  np.savez(out, **flat)
  return out.getvalue()


def _leaves(tree, prefix=()):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _leaves(value, prefix + (key,))
    else:
      yield prefix + (key,), value


def _workdir(path, files):
  """A directory that looks like a training workdir, with `files`."""
  os.makedirs(path / 'checkpoints')
  for name, text in files.items():
    (path / name).write_text(text)
  return str(path)


@pytest.fixture(scope='module')
def sources(tmp_path_factory):
  """Weights, damaged weights and images, written once for the module."""
  from safetensors.numpy import save

  tmp = tmp_path_factory.mktemp('predict_faults')
  state = timm_state('seresnet_tiny', 5)
  good = save(state)
  nan = dict(state, **{'fc.weight': state['fc.weight'].copy()})
  nan['fc.weight'][0, 0] = np.nan
  variables = convert.from_timm(state, 'seresnet_tiny')
  export = _export_bytes(variables, {})
  files = {
      'w.safetensors': good,
      'nan.safetensors': save(nan),
      'truncated.safetensors': good[: len(good) // 2],
      'damaged.npz': export[: len(export) // 2],
      'bad_meta.npz': _export_bytes(variables, '{"config": '),
      'photo.png': None,
      'huge.png': png_bytes(np.zeros((1, 1, 3), np.uint8), 8, (20000, 20000)),
      'text.png': b'not an image',
  }
  paths = {}
  for name, data in files.items():
    paths[name] = str(tmp / name)
    if data is not None:
      (tmp / name).write_bytes(data)
  photo(paths['photo.png'])
  paths['bad_config_run'] = _workdir(
      tmp / 'bad_config_run', {'config.json': '{'}
  )
  paths['bad_field_run'] = _workdir(
      tmp / 'bad_field_run', {'config.json': '{"data": {"image_size": "L"}}'}
  )
  paths['bad_labels_run'] = _workdir(
      tmp / 'bad_labels_run',
      {'config.json': '{}', 'label_names.json': '["cat", '},
  )
  hub_dir = tmp / 'hub_dir'
  hub_dir.mkdir()
  (hub_dir / 'model.safetensors').write_bytes(good)
  (hub_dir / 'config.json').write_text('{"architecture": ')
  paths['hub_dir'] = str(hub_dir)
  return paths


def _predict_process(*args):
  return subprocess.run(
      [sys.executable, '-m', 'se_flax.predict', *args],
      env=dict(os.environ, JAX_PLATFORMS='cpu'),
      capture_output=True,
      text=True,
      cwd=ROOT,
      timeout=180,
  )


def _fill(text: str, sources) -> str:
  """`text` with each '{name}' replaced by `sources[name]`."""
  for name, path in sources.items():
    text = text.replace('{' + name + '}', path)
  return text


def _assert_one_error_line(rc, stderr, *fragments):
  assert rc == 2, stderr
  assert 'Traceback' not in stderr, stderr
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: '), stderr
  for fragment in fragments:
    assert fragment in lines[0], (fragment, lines[0])


# name -> (--pretrained, extra args, image, fragments of the error line);
# '{...}' are `sources` keys.
_PROCESS_FAULTS = {
    'truncated_safetensors': (
        '{truncated.safetensors}',
        ('--model-name', 'seresnet_tiny'),
        '{photo.png}',
        ('{truncated.safetensors}: not a readable state dict',),
    ),
    'damaged_export': (
        '{damaged.npz}',
        ('--model-name', 'seresnet_tiny'),
        '{photo.png}',
        ('{damaged.npz}: not a readable se_flax export',),
    ),
    'nonfinite_weights': (
        '{nan.safetensors}',
        ('--model-name', 'seresnet_tiny'),
        '{photo.png}',
        ('{nan.safetensors}: the logits are not finite', 'params/fc/kernel'),
    ),
}


@pytest.mark.parametrize('fault', sorted(_PROCESS_FAULTS))
def test_predict_command_faults_are_one_line(sources, fault):
  pretrained, extra, image, fragments = _PROCESS_FAULTS[fault]
  run = _predict_process(
      '--pretrained',
      _fill(pretrained, sources),
      *extra,
      _fill(image, sources),
  )
  _assert_one_error_line(
      run.returncode,
      run.stderr,
      *[_fill(f, sources) for f in fragments],
  )
  assert not run.stdout  # Nothing printed as if it were a prediction.


@pytest.mark.parametrize('top_k', ['0', '-1'])
def test_top_k_below_one_is_refused(sources, top_k, capsys):
  with pytest.raises(SystemExit) as e:
    predict_lib.main(
        ['--pretrained', sources['w.safetensors'], '--top-k', top_k, 'x.png']
    )
  assert e.value.code == 2
  last = capsys.readouterr().err.strip().splitlines()[-1]
  assert last.endswith(
      f"argument --top-k: must be an integer >= 1, got '{top_k}'"
  )
  with pytest.raises(ValueError, match='top_k must be >= 1, got 0'):
    predict_lib.predict(None, ['x.png'], top_k=0)


_IN_PROCESS_FAULTS = {
    'workdir_config': (
        '{bad_config_run}',
        '{photo.png}',
        ('{bad_config_run}/config.json: not valid JSON',),
    ),
    'workdir_config_field': (
        '{bad_field_run}',
        '{photo.png}',
        (
            '{bad_field_run}/config.json: unusable run config (field '
            'data.image_size:',
        ),
    ),
    'workdir_label_names': (
        '{bad_labels_run}',
        '{photo.png}',
        ('{bad_labels_run}/label_names.json: not valid JSON',),
    ),
    'hub_directory_config': (
        '{hub_dir}',
        '{photo.png}',
        ('{hub_dir}: bad config.json', '{hub_dir}/config.json: not valid JSON'),
    ),
    'export_run_config': (
        '{bad_meta.npz}',
        '{photo.png}',
        ('{bad_meta.npz}: its run config is unreadable',),
    ),
    'image_over_pixel_limit': (
        '{w.safetensors}',
        '{huge.png}',
        ('{huge.png}: too large', '400000000 pixels', '178956970'),
    ),
    'missing_image': (
        '{w.safetensors}',
        '{photo.png}.missing',
        ('{photo.png}.missing: not a readable image', 'No such file'),
    ),
    'not_an_image': (
        '{w.safetensors}',
        '{text.png}',
        ('{text.png}: not a readable image',),
    ),
}


@pytest.mark.parametrize('fault', sorted(_IN_PROCESS_FAULTS))
def test_predict_faults_are_one_line(sources, fault, capsys):
  pretrained, image, fragments = _IN_PROCESS_FAULTS[fault]
  rc = predict_lib.main(
      [
          '--pretrained',
          _fill(pretrained, sources),
          '--model-name',
          'seresnet_tiny',
          _fill(image, sources),
      ]
  )
  out = capsys.readouterr()
  _assert_one_error_line(rc, out.err, *[_fill(f, sources) for f in fragments])
  assert not out.out


def test_export_faults_are_found_before_the_checkpoint_is_read(sources):
  from se_flax.train import checkpoint  # pylint: disable=g-import-not-at-top

  def export_error(workdir, output):
    with pytest.raises(SystemExit) as e:
      checkpoint.main(['--workdir', workdir, '--output', output])
    return str(e.value)

  # This workdir has no checkpoint: each error must come before the read.
  run = sources['bad_labels_run']
  not_a_folder = sources['text.png']
  assert export_error(run, f'{not_a_folder}/w.npz') == (
      f'error: {not_a_folder}/w.npz: cannot be written ({not_a_folder} is '
      'not a writable folder)'
  )
  folder = sources['hub_dir'] + '.npz'
  os.makedirs(folder, exist_ok=True)
  assert export_error(run, folder) == (
      f'error: {folder}: is a folder, not a file to write'
  )
  assert export_error(run, f'{run}/w.npz').startswith(
      f'error: {run}/label_names.json: not valid JSON ('
  )


def test_predict_reads_a_16_bit_png_as_training_does(sources, tmp_path):
  """The fault of issue 32: PIL made a 16-bit PNG white, so predict
  answered for a white image. Now it is its 8-bit twin's high byte, read
  with TensorFlow unimportable (predict must not need it)."""
  rng = np.random.default_rng(0)
  gray16 = rng.integers(0, 65536, (40, 50, 1), dtype=np.uint16)
  twin = (gray16 >> 8).astype(np.uint8)
  files = {
      '16bit.png': png_bytes(gray16),
      '8bit.png': png_bytes(twin, bit_depth=8),
      'white.png': png_bytes(np.full_like(twin, 255), bit_depth=8),
  }
  for name, data in files.items():
    (tmp_path / name).write_bytes(data)
  program = (
      'import sys\n'
      "sys.modules['tensorflow'] = None\n"
      'from se_flax import predict\n'
      'sys.exit(predict.main(sys.argv[1:]))\n'
  )
  run = subprocess.run(
      [
          sys.executable,
          '-c',
          program,
          '--pretrained',
          sources['w.safetensors'],
          '--model-name',
          'seresnet_tiny',
          '--json',
          '--top-k',
          '5',
          *[str(tmp_path / name) for name in files],
      ],
      env=dict(os.environ, JAX_PLATFORMS='cpu'),
      capture_output=True,
      text=True,
      cwd=ROOT,
      timeout=180,
  )
  assert run.returncode == 0, run.stderr
  sixteen, eight, white = [
      [p['probability'] for p in json.loads(line)['top_k']]
      for line in run.stdout.splitlines()
  ]
  assert sixteen == eight and sixteen != white


class _ClosedPipe(io.StringIO):

  def write(self, text):
    raise BrokenPipeError(32, 'Broken pipe')

  def fileno(self):
    return 1


def test_a_closed_pipe_or_ctrl_c_ends_predict_quietly(
    sources, monkeypatch, capsys
):
  # `predict ... | head -1`: the reader leaves before the output ends.
  redirected = []
  monkeypatch.setattr(os, 'dup2', lambda fd, to: redirected.append(to))
  with monkeypatch.context() as patch:
    patch.setattr(sys, 'stdout', _ClosedPipe())
    rc = predict_lib.main(
        [
            '--pretrained',
            sources['w.safetensors'],
            '--model-name',
            'seresnet_tiny',
            sources['photo.png'],
        ]
    )
  assert rc == 141 and redirected == [1]  # stdout now points at /dev/null
  assert capsys.readouterr().err == ''

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(predict_lib.load_lib, 'load_pretrained', interrupted)
  rc = predict_lib.main(['--pretrained', 'any', 'x.png'])
  assert rc == 130 and capsys.readouterr().err == 'error: interrupted\n'
