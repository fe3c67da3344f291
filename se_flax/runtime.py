"""Process settings that make se_flax fast on the CPU, in one explicit call.

    import se_flax
    se_flax.configure_runtime()   # first, before any JAX computation
    model = se_flax.create_model('seresnet50')

`train.py` and `python -m se_flax.benchmark` call `configure()` first thing;
in a notebook it is the one call to make before using JAX. Importing
se_flax changes nothing in the process: these settings are process-wide,
so they happen only when asked for.

What it sets, on the CPU backend only (PERFORMANCE.md, "XLA's own
convolutions" and "Page faults"):
- glibc keeps freed memory (one arena, no `mmap`, no trimming). XLA's CPU
  client allocates every call's temporaries anew, GiBs for a ResNet-50
  train step; with glibc's defaults each step maps them fresh and faults
  every page in again (~2 s of a ~4 s step on a 2-core machine).
- XLA's own convolutions instead of YNNPACK's (`CPU_XLA_OPTIONS`, put in
  `XLA_FLAGS` so a plain user `jax.jit` gets them too; `loop.jit_steps`
  also passes them per compilation, so training is fast even without this
  call).
Both must precede JAX's backend start: threads pick their malloc arena at
their first allocation and XLA reads `XLA_FLAGS` once.
"""

import ctypes
import dataclasses
import functools
import importlib.metadata
import importlib.util
import mmap
import os
import sys
from typing import Optional

# XLA's CPU backend hands convolutions to YNNPACK by default; its own
# (Eigen) convolutions run ResNet-50's train step about 1.4x faster on x86
# (PERFORMANCE.md, "XLA's own convolutions"). The list keeps the other
# default YNN fusions (dots, reductions). Speed only: results change by
# float rounding at most.
CPU_XLA_OPTIONS = {
    'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,'
    'LIBRARY_FUSION_TYPE_REDUCE'
}

# mallopt() parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -2, -4, -8


@dataclasses.dataclass(frozen=True)
class RuntimeSettings:
  """What `configure` did. `platform`: the backend it expected."""

  platform: str
  allocator: str  # 'freed memory kept' | 'glibc default' | 'not glibc'
  xla_flags: str  # Flags it added to XLA_FLAGS ('' for none).

  def describe(self) -> str:
    flags = self.xla_flags or 'none added'
    return (
        f'runtime for {self.platform}: malloc {self.allocator}; '
        f'XLA_FLAGS {flags}'
    )


# The one record of what this process was configured with (process-wide
# settings cannot be undone, so a second call returns the first result).
_applied: Optional[RuntimeSettings] = None


def backends_started() -> bool:
  """Whether JAX has started its backends (too late for `configure`)."""
  if 'jax' not in sys.modules:
    return False
  from jax._src import xla_bridge

  return xla_bridge.backends_are_initialized()


def expected_platform() -> str:
  """The platform JAX will pick, found without starting it.

  `JAX_PLATFORMS` (or `jax_platforms` set in jax.config) decides if set;
  otherwise 'cpu' unless a GPU/TPU plugin is installed ('accelerator').
  """
  platforms = os.environ.get('JAX_PLATFORMS', '')
  if 'jax' in sys.modules:
    import jax

    platforms = jax.config.jax_platforms or platforms
  if platforms:
    return platforms.split(',')[0].strip().lower()
  if importlib.util.find_spec('libtpu') is not None:
    return 'accelerator'
  if importlib.metadata.entry_points(group='jax_plugins'):
    return 'accelerator'
  if importlib.util.find_spec('jax_plugins') is not None:
    import jax_plugins

    if any(os.scandir(p) for p in jax_plugins.__path__):
      return 'accelerator'
  return 'cpu'


def keep_freed_memory() -> bool:
  """Makes glibc keep freed memory for reuse in this process; True if set.

  One arena, no `mmap`, no trimming: the heap grows to the largest step
  once and is reused. Host memory only. False where the C library has no
  `mallopt` (not glibc). Prefer `configure`, which checks the timing.
  """
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
  # A trim threshold of -1 is SIZE_MAX: never trim (mallopt(3)).
  settings = (
      (_M_ARENA_MAX, 1),
      (_M_MMAP_MAX, 0),
      (_M_TRIM_THRESHOLD, -1),
      (_M_TOP_PAD, 1 << 30),
  )
  return all(mallopt(param, value) == 1 for param, value in settings)


def xla_knows_flag(name: str) -> bool:
  """Whether this jaxlib's XLA carries the flag `name`.

  XLA aborts the process on an unknown flag in XLA_FLAGS, and asking it
  would start the backend; the flag's name in XLA's library is the test.
  """
  spec = importlib.util.find_spec('jaxlib')
  if spec is None or not spec.submodule_search_locations:
    return False
  needle = b'\0' + name.encode() + b'\0'
  for folder in spec.submodule_search_locations:
    for entry in os.scandir(folder):
      if not entry.name.endswith('.so') or entry.stat().st_size == 0:
        continue
      with (
          open(entry.path, 'rb') as f,
          mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data,
      ):
        if data.find(needle) >= 0:
          return True
  return False


def _cpu_xla_flags() -> str:
  present = os.environ.get('XLA_FLAGS', '')
  added = [
      f'--{name}={value}'
      for name, value in _known_cpu_options().items()
      if f'--{name}=' not in present
  ]
  if added:
    os.environ['XLA_FLAGS'] = ' '.join([present, *added]).strip()
  return ' '.join(added)


def configure(platform: Optional[str] = None) -> RuntimeSettings:
  """Applies se_flax's process settings for `platform` (default: expected).

  Call once, before JAX's first computation; a repeated call returns the
  first call's settings. Nothing is changed off the CPU (host memory
  settings there would slow input threads for no gain). Raises
  RuntimeError if JAX's backends have already started.
  """
  global _applied
  if _applied is not None:
    return _applied
  if backends_started():
    raise RuntimeError(
        'se_flax.configure_runtime() must run before JAX starts (before the '
        'first array, jit or device query). Restart the process and call it '
        'first; or start Python with XLA_FLAGS and GLIBC_TUNABLES set as '
        'PERFORMANCE.md, "Page faults", shows.'
    )
  platform = platform or expected_platform()
  if platform != 'cpu':
    _applied = RuntimeSettings(platform, 'glibc default', '')
    return _applied
  allocator = 'freed memory kept' if keep_freed_memory() else 'not glibc'
  _applied = RuntimeSettings(platform, allocator, _cpu_xla_flags())
  return _applied


def current() -> Optional[RuntimeSettings]:
  """What `configure` applied in this process, or None if never called."""
  return _applied


@functools.lru_cache(maxsize=None)
def _known_cpu_options() -> dict:
  """`CPU_XLA_OPTIONS` that this jaxlib's XLA knows (all, or fewer once an
  experimental option is gone): one check for XLA_FLAGS and per-jit use."""
  return {
      name: value
      for name, value in CPU_XLA_OPTIONS.items()
      if xla_knows_flag(name)
  }


def compiler_options(backend: Optional[str] = None) -> Optional[dict]:
  """XLA options for jitting the train and eval steps on `backend`.

  `jax.jit(..., compiler_options=compiler_options())`. None (XLA's
  defaults) except on CPU: `CPU_XLA_OPTIONS`, which keep
  convolutions with XLA's own emitter. Passed per compilation, so the
  train loop gets them even where `configure` was not called.
  """
  import jax

  backend = backend or jax.default_backend()
  if backend == 'cpu' and _known_cpu_options():
    return dict(_known_cpu_options())
  return None
