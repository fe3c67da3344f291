"""The excitation command's expected failures, in real processes.

Each is one line naming the argument or path and the cause, exit 2, no
traceback, and comes before the pass over the data (its 'N images (M
counted' line is never printed) and before anything is written.
"""

import os
import subprocess
import sys
import tempfile

import pytest

from tests.data import helpers as data_helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def sources(tiny_se_workdir, tmp_path_factory):
  """What the cases share: the tiny run and bad inputs."""
  base = tmp_path_factory.mktemp('excitation_cli')
  (base / 'a_file').write_text('not a directory')
  (base / 'broken_config.py').write_text('def get_config(:\n')
  return dict(workdir=tiny_se_workdir, base=str(base))


def _unwritable_dir(base: str) -> str:
  """A directory this process cannot write in (root ignores modes: /sys,
  mounted read-only in containers, where that holds)."""
  if os.geteuid() != 0:
    path = os.path.join(base, 'read_only')
    os.makedirs(path, exist_ok=True)
    os.chmod(path, 0o555)
    return path
  try:
    os.rmdir(tempfile.mkdtemp(dir='/sys'))
  except OSError:
    return '/sys'
  pytest.skip('running as root with a writable /sys: no unwritable dir')


def _folder_without_val(base: str) -> str:
  root = data_helpers.write_colour_folder(
      os.path.join(base, 'no_val'), train_per_class=1, val_per_class=1
  )
  os.rename(os.path.join(root, 'val'), os.path.join(base, 'val_aside'))
  return root


# Arguments after the module and what the one error line says; they name
# the shared sources as {workdir} and {base}; {unwritable} and {no_val}
# are made for the case that needs them.
CASES = [
    pytest.param(
        '--workdir {workdir} --output {base}/a_file/out',
        'NotADirectoryError: --output {base}/a_file/out: {base}/a_file is '
        'not a directory',
        id='output-under-a-file',
    ),
    pytest.param(
        '--workdir {workdir} --output {unwritable}/out',
        'PermissionError: --output {unwritable}/out: cannot write in '
        '{unwritable}',
        id='output-not-writable',
    ),
    pytest.param(
        '--workdir {workdir} --output {base}/o --sample-cap -5',
        "argument --sample-cap: expected an integer >= 0, got '-5'",
        id='negative-sample-cap',
    ),
    pytest.param(
        '--workdir {base}/no_such_run --output {base}/o',
        "No file or directory at '{base}/no_such_run'",
        id='missing-workdir',
    ),
    pytest.param(
        '--workdir {workdir} --output {base}/o --figure-layers SE_9_9',
        "--figure-layers ['SE_9_9'] are not analysed; expected some of",
        id='unknown-figure-layer',
    ),
    pytest.param(
        '--pretrained {workdir} --synthetic 4 --output {base}/o '
        '--classes 1,goldfish',
        "Unknown class 'goldfish' (the dataset has no class names)",
        id='unknown-class',
    ),
    pytest.param(
        '--pretrained {workdir} --config {base}/broken_config.py '
        '--output {base}/o',
        '--config {base}/broken_config.py: cannot read its config.data '
        '(SyntaxError',
        id='broken-config-file',
    ),
    pytest.param(  # Imports TensorFlow (~10 s); the folder tests cover it.
        '--pretrained {workdir} --folder {no_val} --output {base}/o',
        '{no_val}/val',
        id='folder-without-val',
        marks=pytest.mark.slow,
    ),
]


@pytest.mark.parametrize('arguments, expected', CASES)
def test_expected_failures_are_one_line_before_the_pass(
    sources, arguments, expected
):
  names = dict(sources)
  if '{unwritable}' in arguments:
    names['unwritable'] = _unwritable_dir(sources['base'])
  if '{no_val}' in arguments:
    names['no_val'] = _folder_without_val(sources['base'])
  argv = [a.format(**names) for a in arguments.split()]
  result = subprocess.run(
      [sys.executable, '-m', 'se_flax.analysis.excitation', *argv],
      capture_output=True,
      text=True,
      timeout=300,
      cwd=ROOT,
  )
  assert result.returncode == 2, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr + result.stdout
  errors = [l for l in result.stderr.splitlines() if 'error:' in l]
  assert len(errors) == 1, result.stderr[-2000:]
  assert errors == result.stderr.strip().splitlines()[-1:]  # The last line.
  assert expected.format(**names) in errors[0]
  assert 'counted' not in result.stdout  # Failed before the pass.
  assert not os.path.exists(os.path.join(sources['base'], 'o'))
