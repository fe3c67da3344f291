"""train.py behind a pipe, signalled as terminals and schedulers do it.

`train.py ... 2>&1 | tee log` is the usual way to keep a log. Ctrl-C in
the terminal (SIGINT), and the SIGTERM of SLURM and many schedulers, go to
the whole process group: `tee` ends too, and every later write of the
trainer goes to a pipe without a reader. The trainer must still save at
the step boundary and exit with the code a requeue loop reads: 130 after
Ctrl-C, 75 after SIGTERM (README, "Preemption").
"""

import os
import shlex
import signal
import subprocess
import sys
import time

import se_flax
from se_flax.train import checkpoint

from tests.train import helpers

# Long enough to be signalled mid-run: a step takes 50-250 milliseconds
# and the signal follows the first logged step at once.
_STEPS = 20
_FLAGS = (
    f'num_train_steps={_STEPS}',
    f'checkpoint_every_steps={_STEPS}',  # Only the saves a signal asks for.
    'log_every_steps=1',
)
_FINAL_MESSAGE = 'stopped at step'  # train.py's last line after a signal.


def _env():
  # One device, as most users run it: faster than the suite's 8 here.
  return dict(helpers.train_env(), XLA_FLAGS='')


def _start_piped(workdir, log, status):
  """`train.py | tee log` in a new session: its own process group, as a
  terminal's job or a scheduler's task; `status` gets train.py's exit code.

  The shell traps the signals only to outlive the pipeline and record the
  code; its children start with the default actions (tee dies of both).
  """
  train = shlex.join(helpers.train_command(workdir, *_FLAGS))
  script = (
      f'trap : INT TERM; {train} 2>&1 | tee {shlex.quote(log)}; '
      f'echo ${{PIPESTATUS[0]}} > {shlex.quote(status)}'
  )
  return subprocess.Popen(
      ['bash', '-c', script],
      cwd=helpers.ROOT,
      env=_env(),
      start_new_session=True,
      stdin=subprocess.DEVNULL,
      stdout=subprocess.DEVNULL,
  )


def _read(path) -> str:
  try:
    with open(path) as f:
      return f.read()
  except FileNotFoundError:
    return ''


def _signal_group_mid_run(tmp_path, name, signum):
  """Signals a piped run's whole group once it trains; returns train.py's
  exit code, what reached the log, the newest checkpoint's step and the
  workdir."""
  workdir = str(tmp_path / 'run')
  log, status = str(tmp_path / f'{name}.log'), str(tmp_path / f'{name}.rc')
  shell = _start_piped(workdir, log, status)
  try:
    deadline = time.monotonic() + 240
    # A step's metrics in the log (metrics.jsonl is written in blocks).
    while 'train/loss=' not in _read(log):
      assert shell.poll() is None, _read(log)[-3000:]
      assert time.monotonic() < deadline, 'the run never trained'
      time.sleep(0.05)
    os.killpg(shell.pid, signum)  # The session's pid is its group's id.
    shell.wait(timeout=180)
  finally:
    if shell.poll() is None:
      os.killpg(shell.pid, signal.SIGKILL)
  code, logged = int(_read(status)), _read(log)
  saved = checkpoint.Checkpoints(workdir, async_save=False)
  step = saved.latest_step()
  saved.close()
  return code, logged, step, workdir


def test_ctrl_c_to_a_piped_run_saves_exits_130_and_resumes(tmp_path):
  code, logged, step, workdir = _signal_group_mid_run(
      tmp_path, 'ctrl_c', signal.SIGINT
  )
  # Written after tee died: the drill did close the pipe.
  assert _FINAL_MESSAGE not in logged
  assert code == 130, logged[-3000:]
  assert step is not None and 0 < step < _STEPS, step
  again = subprocess.run(
      helpers.train_command(workdir, *_FLAGS),
      cwd=helpers.ROOT,
      env=_env(),
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert again.returncode == 0, again.stderr[-3000:]
  assert f'from step {step}, global batch' in again.stderr
  finished = checkpoint.Checkpoints(workdir, async_save=False)
  assert finished.latest_step() == _STEPS
  finished.close()


def test_sigterm_to_a_piped_run_saves_and_exits_75(tmp_path):
  code, logged, step, workdir = _signal_group_mid_run(
      tmp_path, 'sigterm', signal.SIGTERM
  )
  assert _FINAL_MESSAGE not in logged
  assert code == 75, logged[-3000:]
  assert step is not None and 0 < step < _STEPS, step
  se_flax.load_variables(workdir)  # Complete; its checksums verified.
  assert not os.path.exists(os.path.join(workdir, 'lock.json'))


# A CLI whose reader leaves: it says 'ready', waits for the parent to close
# its end of the pipe, then writes through every path train.py uses
# (absl logging, print, sys.stderr) and returns 75 through absl.app.
_CHILD = """
import sys
from absl import app, logging
from se_flax.train import cli

def main(argv):
  cli.guard_output_streams()
  print('ready', flush=True)
  sys.stdin.readline()
  for i in range(3):
    logging.warning('log line %d after the reader left', i)
    print('printed line', i)
    sys.stderr.write(f'stderr line {i}\\n')
  print('unflushed at exit', end='')
  return 75

app.run(main)
"""


def _run_child_and_close_its_reader(stderr):
  child = subprocess.Popen(
      [sys.executable, '-c', _CHILD],
      cwd=helpers.ROOT,
      env=helpers.train_env(),
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      stderr=stderr,
      text=True,
  )
  try:
    assert child.stdout.readline() == 'ready\n'
    child.stdout.close()  # The reader leaves (tee's end, head's end).
    child.stdin.write('go\n')
    child.stdin.close()
    return child.wait(timeout=60)
  finally:
    child.kill()


def test_a_reader_leaving_changes_no_exit_code(tmp_path):
  # `train.py 2>&1 | tee log`: both streams in the pipe that closes.
  assert _run_child_and_close_its_reader(subprocess.STDOUT) == 75
  # `train.py | head`: stdout closes; stderr, a file here, stays clean.
  with open(tmp_path / 'stderr', 'w+') as stderr:
    assert _run_child_and_close_its_reader(stderr) == 75
    stderr.seek(0)
    written = stderr.read()
  assert 'log line 2 after the reader left' in written
  assert 'stderr line 2' in written
  assert 'BrokenPipeError' not in written
  assert 'Exception ignored' not in written
