"""se_flax.runtime: process settings only when asked for, and what they do.

Each case runs in a fresh process: the settings are process-wide.
"""

import os
import subprocess
import sys
import textwrap

from se_flax import runtime

# Allocates, touches and frees 256 MiB twice with glibc's malloc and prints
# the page faults of the second round: glibc's defaults map the block anew
# (every page faults again); with freed memory kept it is reused. (glibc
# directly: numpy asks for huge pages, which hides faults.)
_REFAULTS = textwrap.dedent("""
    import ctypes, resource
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    def faults():
      return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    counts = []
    for _ in range(2):
      before = faults()
      block = libc.malloc(256 << 20)
      ctypes.memset(block, 1, 256 << 20)
      counts.append(faults() - before)
      libc.free(block)
    print('refaults', counts[1])
""")
_PAGES = (256 << 20) // 4096


def _run(*code: str, **env) -> str:
  environ = {
      k: v
      for k, v in os.environ.items()
      if k not in ('XLA_FLAGS', 'GLIBC_TUNABLES')
  }
  environ.update(env)
  source = '\n'.join(textwrap.dedent(part) for part in code)
  done = subprocess.run(
      [sys.executable, '-c', source],
      capture_output=True,
      text=True,
      timeout=300,
      env=environ,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stdout


def _refaults(stdout: str) -> int:
  return int(stdout.split('refaults')[-1].split()[0])


def test_importing_se_flax_changes_no_process_setting():
  out = _run(
      """
      import os
      import se_flax, se_flax.benchmark, se_flax.train.loop
      import se_flax.train.checkpoint, se_flax.models
      from se_flax import runtime
      assert os.environ.get('XLA_FLAGS') is None, os.environ['XLA_FLAGS']
      assert runtime.current() is None
      assert not runtime.backends_started()
  """,
      _REFAULTS,
  )
  assert _refaults(out) > _PAGES // 2


def test_configure_keeps_freed_memory_and_sets_xla_flags_once():
  out = _run(
      """
      import os
      import se_flax
      settings = se_flax.configure_runtime()
      assert settings.platform == 'cpu', settings
      assert settings.allocator == 'freed memory kept', settings
      flag = '--xla_cpu_experimental_ynn_fusion_type='
      assert settings.xla_flags.startswith(flag), settings
      assert os.environ['XLA_FLAGS'] == (
          '--xla_force_host_platform_device_count=1 ' + settings.xla_flags)
      assert se_flax.configure_runtime() is settings  # Once per process.
      import jax.numpy as jnp
      assert float(jnp.ones(2).sum()) == 2.0  # XLA accepted the flags.
  """,
      _REFAULTS,
      JAX_PLATFORMS='cpu',
      XLA_FLAGS='--xla_force_host_platform_device_count=1',
  )
  assert _refaults(out) < _PAGES // 100


def test_configure_after_jax_started_says_it_is_too_late():
  out = _run("""
      import jax.numpy as jnp
      from se_flax import runtime
      jnp.zeros(1).block_until_ready()
      try:
        runtime.configure()
      except RuntimeError as e:
        print('error:', e)
      assert runtime.current() is None
  """)
  assert 'must run before JAX starts' in out and 'Restart' in out


def test_configure_leaves_accelerator_hosts_alone():
  out = _run(
      """
      import os
      from se_flax import runtime
      settings = runtime.configure()
      assert settings.platform == 'cuda' and settings.xla_flags == ''
      assert 'XLA_FLAGS' not in os.environ
  """,
      _REFAULTS,
      JAX_PLATFORMS='cuda,cpu',
  )
  assert _refaults(out) > _PAGES // 2


def test_expected_platform_follows_jax_platforms():
  out = _run(
      """
      from se_flax import runtime
      print(runtime.expected_platform())
  """,
      JAX_PLATFORMS='tpu,cpu',
  )
  assert out.split() == ['tpu']


def test_unknown_xla_flags_are_never_set():
  # XLA aborts the process on an unknown flag: only known names pass.
  assert runtime.xla_knows_flag('xla_cpu_experimental_ynn_fusion_type')
  assert runtime.xla_knows_flag('xla_force_host_platform_device_count')
  assert not runtime.xla_knows_flag('xla_cpu_no_such_flag_anywhere')


def test_settings_describe_themselves():
  s = runtime.RuntimeSettings('cpu', 'freed memory kept', '--a=1')
  assert s.describe() == (
      'runtime for cpu: malloc freed memory kept; ' 'XLA_FLAGS --a=1'
  )


def test_train_and_evaluate_configures_what_nobody_configured(monkeypatch):
  # The decision train_and_evaluate makes first (the settings themselves:
  # the tests above). Before JAX starts: configure; after: say what is lost.
  from absl import logging

  from se_flax.train import loop

  calls, warnings = [], []
  monkeypatch.setattr(runtime, 'current', lambda: None)
  monkeypatch.setattr(
      runtime,
      'configure',
      lambda: calls.append(1)
      or (runtime.RuntimeSettings('cpu', 'freed memory kept', '')),
  )
  monkeypatch.setattr(
      logging, 'warning', lambda msg, *a: warnings.append(msg % a)
  )
  monkeypatch.setattr(runtime, 'backends_started', lambda: False)
  loop._configure_runtime()
  assert calls == [1] and not warnings
  monkeypatch.setattr(runtime, 'backends_started', lambda: True)
  loop._configure_runtime()
  assert calls == [1]
  assert len(warnings) == 1 and 'configure_runtime()' in warnings[0]
