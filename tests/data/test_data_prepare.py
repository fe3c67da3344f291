"""ImageNet preparation command: preflight checks and their messages."""

import os
import tarfile

from se_flax.data import prepare


def test_preflight_on_missing_archives(tmp_path, capsys):
  manual = str(tmp_path / 'manual')
  report = prepare.preflight(manual, str(tmp_path / 'tfds'))
  assert len(report.problems) == 2
  assert 'ILSVRC2012_img_train.tar' in report.problems[0]
  assert 'ILSVRC2012_img_val.tar' in report.problems[1]
  rc = prepare.main(
      ['--dry_run', f'--manual_dir={manual}', f'--data_dir={tmp_path / "tfds"}']
  )
  out = capsys.readouterr().out
  assert rc == 1
  assert 'expected layout' in out and f'{manual}/' in out
  assert 'ILSVRC2012_val_00000001.JPEG' in out and 'n01440764.tar' in out


def test_preflight_accepts_imagenet_format_archives(tiny_dirs, capsys):
  data_dir, manual = tiny_dirs
  report = prepare.preflight(manual, data_dir)
  assert not report.problems
  assert len(report.notes) == 2  # not the official sizes: a subset
  assert report.needed_bytes > report.archive_bytes > 0
  assert report.free_bytes > 0
  fresh = os.path.join(os.path.dirname(data_dir), 'fresh')
  assert (
      prepare.main(
          ['--dry_run', f'--manual_dir={manual}', f'--data_dir={fresh}']
      )
      == 0
  )
  assert 'preflight ok' in capsys.readouterr().out
  assert prepare.main([f'--manual_dir={manual}', f'--data_dir={data_dir}']) == 0
  assert 'already prepared' in capsys.readouterr().out


def test_preflight_flags_wrong_archives_and_full_disks(tmp_path, monkeypatch):
  manual = tmp_path / 'manual'
  manual.mkdir()
  (tmp_path / 'x.txt').write_text('x')
  for name in prepare.EXPECTED_FILES:
    with tarfile.open(manual / name, 'w') as t:
      t.add(tmp_path / 'x.txt', arcname='x.txt')
  monkeypatch.setattr(prepare, '_PEAK_DISK_FACTOR', 1e15)
  report = prepare.preflight(str(manual), str(tmp_path / 'new' / 'tfds'))
  text = '\n'.join(report.problems)
  assert text.count('does not look like') == 2
  assert 'GiB free' in text


def test_prepare_raises_with_the_layout(tmp_path):
  try:
    prepare.prepare(
        data_dir=str(tmp_path / 'tfds'), manual_dir=str(tmp_path / 'manual')
    )
  except FileNotFoundError as e:
    assert 'ILSVRC2012_img_train.tar' in str(e)
    assert 'Expected layout' in str(e)
  else:
    raise AssertionError('expected FileNotFoundError')
  assert not os.path.exists(
      tmp_path / 'tfds' / 'imagenet2012' / '5.1.0' / 'dataset_info.json'
  )
