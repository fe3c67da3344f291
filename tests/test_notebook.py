"""The tour notebook runs end to end (a real Jupyter kernel, nbclient), so
it does not rot. It is committed without outputs."""

import os
import re

import pytest

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')

NOTEBOOK = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    'notebooks',
    'se_flax_tour.ipynb',
)


def test_notebook_is_committed_without_outputs():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  for cell in notebook.cells:
    if cell.cell_type == 'code':
      assert not cell.outputs and cell.execution_count is None


def test_tour_notebook_executes(tmp_path, monkeypatch):
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  # The kernel inherits the environment: one CPU device, no pretrained tag.
  monkeypatch.delenv('SE_FLAX_TOUR_PRETRAINED', raising=False)
  monkeypatch.setenv('XLA_FLAGS', '')
  client = nbclient.NotebookClient(
      notebook,
      timeout=300,
      kernel_name='python3',
      resources={'metadata': {'path': str(tmp_path)}},
  )
  client.execute()
  text = '\n'.join(
      output.get('text', '')
      for cell in notebook.cells
      if cell.cell_type == 'code'
      for output in cell.outputs
  )
  assert 'seresnet_tiny: 442,568 parameters' in text
  assert 'SE_5_1: mean gate' in text
  predictions = [line for line in text.splitlines() if '%  ' in line]
  assert len(predictions) == 5, text
  # The NNX section: every running average moved, none left behind.
  moved = re.search(r'(\d+) of (\d+) BatchNorm statistics moved', text)
  assert moved and moved[1] == moved[2] != '0', text
  figures = [
      output
      for cell in notebook.cells
      if cell.cell_type == 'code'
      for output in cell.outputs
      if 'image/png' in output.get('data', {})
  ]
  assert figures, 'the excitation figure was not drawn'
