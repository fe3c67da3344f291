"""Timed programs (`Variant`), interleaved rounds, paired ratios, the peak.

A variant's `run(n)` runs n steps and waits for their results, so the host
clock read around it is the device's time. Rounds visit the variants in
turn (order reversed every other round) so that drift on a shared machine
hits them alike; ratios are taken per round, then their median, with a
distribution-free 95% interval for that median (`median_interval`): on a
shared machine one run's median moves by several percent, and the interval
says whether a run decides a target.
"""

import dataclasses
import functools
import math
import resource
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp


@dataclasses.dataclass
class Variant:
  """One timed program. `run(n)` runs n steps and waits for them; it may
  return its own `{'cpu_s', 'sys_s', 'faults'}` (a worker process does).
  `path`: which way of running it this is (e.g. 'train.py', 'user jit')."""

  label: str
  framework: str  # 'jax' or 'torch'
  kind: str  # 'train' or 'infer'
  batch: int
  run: Callable[[int], Optional[dict]]
  devices: int = 1
  path: str = ''
  flops_per_image: Optional[float] = None
  compile_s: Optional[float] = None
  xla_memory: Optional[int] = None
  xla_flops_per_image: Optional[float] = None
  host_transfers: Optional[List[str]] = None
  se_fusion: Optional[Dict[str, int]] = None
  hlo: Optional[str] = None
  handle: Any = None  # What `run` steps, e.g. {'state': TrainState}.
  # Per step, one entry per round: wall seconds, process CPU seconds (all
  # threads, user + system), system seconds, minor page faults.
  times: List[float] = dataclasses.field(default_factory=list)
  cpu_times: List[float] = dataclasses.field(default_factory=list)
  sys_times: List[float] = dataclasses.field(default_factory=list)
  faults: List[float] = dataclasses.field(default_factory=list)


def usage() -> Dict[str, float]:
  """This process's CPU seconds (all threads), system seconds, faults."""
  r = resource.getrusage(resource.RUSAGE_SELF)
  return {
      'cpu_s': time.process_time(),
      'sys_s': r.ru_stime,
      'faults': r.ru_minflt,
  }


def usage_since(before: Dict[str, float]) -> Dict[str, float]:
  now = usage()
  return {k: now[k] - before[k] for k in now}


def time_interleaved(
    variants: Sequence[Variant], reps: int, steps: int, warmup: int = 2
) -> None:
  """Fills each variant's per-step `times`, `cpu_times`, ... (per round)."""
  for v in variants:
    if warmup:
      v.run(warmup)
  for r in range(reps):
    order = variants if r % 2 == 0 else list(reversed(variants))
    for v in order:
      before = usage()
      start = time.perf_counter()
      own = v.run(steps)
      wall = time.perf_counter() - start
      own = own or usage_since(before)
      v.times.append(wall / steps)
      v.cpu_times.append(own['cpu_s'] / steps)
      v.sys_times.append(own['sys_s'] / steps)
      v.faults.append(own['faults'] / steps)


def _median_or_none(xs):
  return statistics.median(xs) if xs else None


def summarize(v: Variant, peak: Optional[float]) -> dict:
  """Medians and spreads of one timed variant; MFU against `peak`."""
  step = statistics.median(v.times)
  ips = v.batch / step
  out = {
      'label': v.label,
      'framework': v.framework,
      'kind': v.kind,
      'path': v.path,
      'batch': v.batch,
      'devices': v.devices,
      'step_ms': 1e3 * step,
      'step_ms_min': 1e3 * min(v.times),
      'step_ms_max': 1e3 * max(v.times),
      'images_per_s': ips,
      'images_per_s_per_device': ips / v.devices,
      'compile_s': v.compile_s,
      'xla_memory_bytes': v.xla_memory,
      'flops_per_image': v.flops_per_image,
      'xla_flops_per_image': v.xla_flops_per_image,
      'host_transfers': v.host_transfers,
      'se_fusion': v.se_fusion,
      'rounds': len(v.times),
      'cpu_s_per_step': _median_or_none(v.cpu_times),
      'sys_s_per_step': _median_or_none(v.sys_times),
      'page_faults_per_step': _median_or_none(v.faults),
  }
  if v.flops_per_image:
    achieved = v.flops_per_image * ips / v.devices
    out['model_tflops_per_s_per_device'] = achieved / 1e12
    out['mfu'] = achieved / peak if peak else None
  return out


def median_interval(
    xs: Sequence[float], level: float = 0.95
) -> Optional[Tuple[float, float, float]]:
  """`(low, high, coverage)`: an interval that holds the median of the
  distribution `xs` are drawn from with probability `coverage` >= `level`.

  Order statistics, no assumption on the distribution's shape (rounds are
  taken as independent draws): the k-th smallest and k-th largest of n
  values bracket the median unless k-1 or fewer fall on one side, which
  has probability P(Binomial(n, 1/2) <= k-1) per side. k is the largest
  that keeps both sides' sum within 1 - level. None when n is too small
  for `level` (fewer than 6 values at 95%).
  """
  n = len(xs)
  tail, k = 0.0, 0  # tail: P(Binomial(n, 1/2) <= k - 1).
  while True:
    next_tail = tail + math.comb(n, k) / 2**n  # Exact for any n.
    if 2 * next_tail > 1 - level or k + 1 > n - k:
      break
    tail, k = next_tail, k + 1
  if k == 0:
    return None
  ordered = sorted(xs)
  return ordered[k - 1], ordered[n - k], 1 - 2 * tail


def time_ratio_summary(ratios: Sequence[float]) -> dict:
  """Per-round time ratios summarised: 'rounds', 'time_ratio' (median),
  'time_ratio_interval' (its 95% interval, `median_interval`; None for
  fewer than 6 rounds) and its coverage, 'time_ratio_min'/'_max'."""
  interval = median_interval(ratios)
  return {
      'rounds': len(ratios),
      'time_ratio': statistics.median(ratios),
      'time_ratio_interval': interval and interval[:2],
      'time_ratio_interval_coverage': interval and interval[2],
      'time_ratio_min': min(ratios),
      'time_ratio_max': max(ratios),
  }


def paired_ratio(a: Variant, b: Variant) -> dict:
  """time(a) / time(b), round by round (`time_ratio_summary`), the ratio
  of the medians and the median CPU s ratio."""
  ratios = [x / y for x, y in zip(a.times, b.times)]
  cpu = [x / y for x, y in zip(a.cpu_times, b.cpu_times) if y]
  return {
      'numerator': a.label,
      'denominator': b.label,
      'kind': a.kind,
      **time_ratio_summary(ratios),
      'ratio_of_medians': (
          statistics.median(a.times) / statistics.median(b.times)
      ),
      'cpu_ratio': statistics.median(cpu) if cpu else None,
  }


def matmul_peak_variant(
    dtype, size: Optional[int] = None, calls: Optional[int] = None
) -> Variant:
  """A `Variant` whose step is one square `size`^3 product in `dtype`.

  On one device, random operands (never zeros); `run(n)` issues n * `calls`
  products back to back and waits. float32 runs at full precision
  (`Precision.HIGHEST`: no TF32 on GPUs), as the model's float32 does.
  """
  backend = jax.default_backend()
  if size is None:
    size = 2048 if backend == 'cpu' else 8192
  if calls is None:
    calls = 1 if backend == 'cpu' else 20
  device = jax.local_devices()[0]
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.device_put(
      jax.random.normal(ka, (size, size), jnp.float32).astype(dtype), device
  )
  b = jax.device_put(
      jax.random.normal(kb, (size, size), jnp.float32).astype(dtype), device
  )
  precision = (
      jax.lax.Precision.HIGHEST
      if dtype == jnp.float32
      else jax.lax.Precision.DEFAULT
  )
  matmul = jax.jit(functools.partial(jnp.matmul, precision=precision))
  jax.block_until_ready(matmul(a, b))

  def run(n: int):
    jax.block_until_ready([matmul(a, b) for _ in range(n * calls)])

  return Variant(
      label=f'{jnp.dtype(dtype).name} {size}^3 matmul',
      framework='jax',
      kind='peak',
      batch=1,
      run=run,
      flops_per_image=2.0 * size**3,
      handle={'size': size, 'calls': calls},
  )


def peak_of(v: Variant) -> Dict[str, float]:
  """FLOP/s of a timed `matmul_peak_variant` (median and best round)."""
  calls = v.handle['calls']
  median, best = statistics.median(v.times) / calls, min(v.times) / calls
  return {
      'size': v.handle['size'],
      'seconds': median,
      'flops_per_s': v.flops_per_image / median,
      'flops_per_s_max': v.flops_per_image / best,
  }
