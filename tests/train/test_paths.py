"""gs:// workdirs: URLs are never turned into local paths, and the files
the trainer writes itself go through epath in a form object stores accept.

Nothing here reaches GCS (no test may use the network, and no GCS server
runs here): the object-store code paths run against a local directory.
"""

import json
import os

from se_flax.train import checkpoint, paths, writers


def test_urls_stay_urls():
  assert str(paths.workdir_path('gs://bucket/run')) == 'gs://bucket/run'
  assert str(paths.workdir_path('gs://bucket/run') / 'checkpoints') == (
      'gs://bucket/run/checkpoints'
  )
  assert str(paths.workdir_path('rel/run')) == os.path.abspath('rel/run')
  ckpt_dir = checkpoint.workdir_path('gs://bucket/run') / 'best' / '3'
  assert str(ckpt_dir) == 'gs://bucket/run/best/3'
  assert paths.is_url('gs://b/x') and not paths.is_url('/tmp/gs:/b')


def test_metrics_are_rewritten_whole_where_appending_is_impossible(
    tmp_path, monkeypatch
):
  """The object-store branch of JsonlWriter (no appends: the object is
  written whole at each flush, keeping what a previous run wrote)."""
  monkeypatch.setattr(paths, 'is_url', lambda path: True)
  run = str(tmp_path / 'run')
  first = writers.JsonlWriter(run)
  first.write_scalars(1, {'loss': 2.0})
  first.flush()
  first.write_scalars(2, {'loss': 1.0})
  first.close()
  again = writers.JsonlWriter(run)  # A restart keeps the earlier lines.
  again.write_scalars(3, {'loss': 0.5})
  again.close()
  with open(os.path.join(run, 'metrics.jsonl')) as f:
    assert [json.loads(line)['step'] for line in f] == [1, 2, 3]
  paths.write_atomic(paths.workdir_path(run) / 'config.json', '{}')
  assert not os.path.exists(os.path.join(run, 'config.json.tmp'))
