"""Throughput benchmark: train step and inference, SE overhead, timm, MFU.

    python -m se_flax.benchmark --model seresnet50 --batch 32 --dtype bf16
    python -m se_flax.benchmark --model seresnet50 --se-overhead
    python -m se_flax.benchmark --model seresnet50 --timm --batch 16 \\
        --dtype fp32 --torch-python /path/to/venv-with-torch/bin/python

What is timed, on every device JAX sees: the real training step
(`steps.train_step` with `base_config()`'s SGD optimizer and schedule at
this batch size) and inference (`steps.eval_step`), both jitted by
`loop.jit_steps` as training does (state replicated and donated, batch
sharded on the 'data' axis, `steps.compiler_options()`), on synthetic
uint8 batches made on the devices. No input pipeline runs; TensorFlow is
never imported. On CPU, `main` first makes glibc keep freed memory
(`keep_freed_memory`; `--glibc-malloc` to skip).

Method: each variant is compiled ahead of time (compile time = `lower` +
`compile`; a `Compiled` object cannot recompile, so a step whose state
changes type between steps fails instead of silently recompiling), warmed
up, then timed in `--reps` rounds of `--steps` steps, the host clock read
after `block_until_ready` on the round's last outputs. The variants of one
run are interleaved round by round (order reversed every other round) so
that drift on a shared machine hits them alike; ratios are per round
(paired), and their median is reported. Figures are medians over rounds,
with the min-max spread.

FLOPs (the MFU numerator) follow `models/stats.py`: multiply-accumulates of
convolutions and dense layers (SE FCs included; BN, activations, pooling,
the SE scale and residual adds not counted), 2 FLOPs each. A train step is
1 forward + 2 backward (activation and weight gradients), so
`train FLOPs/image = 6 * MACs` and `inference FLOPs/image = 2 * MACs`. MFU
is model FLOP/s per device over a peak measured in the same run: a square
matrix product in the compute dtype on one device, timed in the same
rounds (`matmul_peak_variant`).

`--se-overhead` adds the plain twin (the registry entry with `se=None`:
same stem, strides, init, dtype and step) and reports time(SE) /
time(plain). `--timm` adds timm's model of the same name (`--timm-model`)
in PyTorch, run by a worker process (`--torch-python`, default this
interpreter) that the benchmark drives round by round, so the two
frameworks never share threads or allocator: channels_last, same batch,
uint8 input normalised on the device, SGD with the same momentum and
weight decay, bf16/fp16 through autocast (BN stays float32 there). torch
and timm are not dependencies of se_flax; without them the mode is skipped.
"""

import argparse
import ctypes
import dataclasses
import functools
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp

DTYPES = {'fp32': jnp.float32, 'float32': jnp.float32,
          'bf16': jnp.bfloat16, 'bfloat16': jnp.bfloat16,
          'fp16': jnp.float16, 'float16': jnp.float16}
NUM_CLASSES = 1000
# FLOPs of a train step in forwards: 1 forward + 2 backward passes.
TRAIN_FLOPS_PER_FORWARD = 3
# mallopt() parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -2, -4, -8
# Round-trip limit for one command to the torch worker.
_WORKER_TIMEOUT_S = 3600


def keep_freed_memory() -> bool:
  """Makes glibc keep freed memory for reuse in this process; True if set.

  XLA's CPU client allocates every call's temporaries anew (GiBs for a
  ResNet-50 train step). By default glibc serves blocks that large with
  `mmap` and unmaps them on `free`, so each step faults all its memory in
  again (PERFORMANCE.md, entry 6). One arena, no `mmap`, no trimming: the
  heap then grows to the step's size once and is reused. Call it before
  JAX's first computation (arenas are picked when threads first allocate).
  Host memory only: harmless but useless for GPU/TPU buffers. False where
  the C library has no `mallopt` (not glibc).
  """
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
  # A trim threshold of -1 is SIZE_MAX: never trim (mallopt(3)).
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1),
              (_M_TOP_PAD, 1 << 30))
  return all(mallopt(param, value) == 1 for param, value in settings)


def flops_per_image(model, image_size: int) -> Dict[str, int]:
  """Model FLOPs per image: `{'macs', 'train', 'infer'}` (see module doc)."""
  from se_flax.models.stats import model_stats
  macs = model_stats(model, image_size).macs
  return {'macs': macs, 'infer': 2 * macs,
          'train': 2 * TRAIN_FLOPS_PER_FORWARD * macs}


# ----------------------------------------------------------------- helpers


def _xla_memory(compiled) -> Optional[int]:
  """Bytes XLA plans for one call: arguments + outputs - aliased + temps."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # Not every backend implements it.
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes
             - m.alias_size_in_bytes + m.temp_size_in_bytes)


def _xla_flops(compiled) -> Optional[float]:
  """XLA's own FLOP count of a compiled program (a cross-check only)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or 'flops' not in cost:
    return None
  return float(cost['flops'])


# HLO that would move data between host and device inside a step.
_HOST_PATTERNS = ('outfeed', 'infeed', 'send(', 'recv(', 'send-done',
                  'recv-done', 'host_callback', 'xla_python_cpu_callback',
                  'xla_python_gpu_callback', 'xla_ffi_python',
                  'MoveToHost', 'S(5)')


def host_transfers(hlo_text: str) -> List[str]:
  """The host-transfer constructs found in an optimized HLO module."""
  return [p.rstrip('(') for p in _HOST_PATTERNS if p in hlo_text]


def _computations(hlo_text: str) -> Dict[str, List[str]]:
  comps, current = {}, None
  for line in hlo_text.split('\n'):
    m = re.match(r'^(?:ENTRY )?%?([\w.\-]+) \(.*\{$', line)
    if m:
      current = comps.setdefault(m.group(1), [])
    elif current is not None:
      current.append(line)
  return comps


def se_fusion(hlo_text: str) -> Dict[str, int]:
  """Does XLA fuse each SE scale into its block's residual add?

  Reads the optimized HLO. A block's forward SE scale (the full-size
  multiply named `.../se/mul`, outside any gradient) counts as fused when
  some computation holds it together with the block's residual add
  (`.../add`) and no computation outputs it: the scaled branch never
  reaches memory on its own (what Caffe's fused "Axpy" layer did by hand).
  Returns `{'se_blocks', 'fused'}`.
  """
  with_add, alone = set(), set()
  blocks = set()
  for lines in _computations(hlo_text).values():
    ops, roots = {}, []
    for line in lines:
      m = re.match(r'\s*(ROOT )?%?([\w.\-]+) = (\S+) ([\w\-]+)\((.*)', line)
      name = re.search(r'op_name="([^"]*)"', line)
      if not m or not name or 'transpose(' in name.group(1):
        if m and m.group(1):
          roots = re.findall(r'%([\w.\-]+)', m.group(5)) if m.group(
              4) == 'tuple' else [m.group(2)]
        continue
      rank = m.group(3).split('{')[0].count(',') + 1
      ops[m.group(2)] = (name.group(1), m.group(4), rank)
      if m.group(1):
        roots = [m.group(2)]
    names = {op for op, code, _ in ops.values() if code in ('multiply', 'add')}
    for ins, (op, code, rank) in ops.items():
      if code == 'multiply' and rank == 4 and op.endswith('/se/mul'):
        block = op[:-len('/se/mul')]
        blocks.add(block)
        if f'{block}/add' in names:
          with_add.add(block)
        if ins in roots:
          alone.add(block)
  return {'se_blocks': len(blocks), 'fused': len((with_add & blocks) - alone)}


def peak_device_memory() -> Optional[int]:
  """The process's peak device memory (bytes) where JAX exposes it."""
  peaks = []
  for d in jax.local_devices():
    try:
      stats = d.memory_stats()
    except Exception:
      stats = None
    if stats and 'peak_bytes_in_use' in stats:
      peaks.append(int(stats['peak_bytes_in_use']))
  return max(peaks) if peaks else None


# ------------------------------------------------------------ matmul peak


def matmul_peak_variant(dtype, size: Optional[int] = None,
                        calls: Optional[int] = None) -> 'Variant':
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
  a = jax.device_put(jax.random.normal(ka, (size, size), jnp.float32)
                     .astype(dtype), device)
  b = jax.device_put(jax.random.normal(kb, (size, size), jnp.float32)
                     .astype(dtype), device)
  precision = (jax.lax.Precision.HIGHEST if dtype == jnp.float32
               else jax.lax.Precision.DEFAULT)
  matmul = jax.jit(functools.partial(jnp.matmul, precision=precision))
  jax.block_until_ready(matmul(a, b))

  def run(n: int):
    jax.block_until_ready([matmul(a, b) for _ in range(n * calls)])

  return Variant(label=f'{jnp.dtype(dtype).name} {size}^3 matmul',
                 framework='jax', kind='peak', batch=1, run=run,
                 flops_per_image=2.0 * size ** 3,
                 handle={'size': size, 'calls': calls})


def peak_of(v: 'Variant') -> Dict[str, float]:
  """FLOP/s of a timed `matmul_peak_variant` (median and best round)."""
  calls = v.handle['calls']
  median, best = statistics.median(v.times) / calls, min(v.times) / calls
  return {'size': v.handle['size'], 'seconds': median,
          'flops_per_s': v.flops_per_image / median,
          'flops_per_s_max': v.flops_per_image / best}


# --------------------------------------------------------------- variants


@dataclasses.dataclass
class Variant:
  """One timed program. `run(n)` runs n steps and waits for them; it may
  return its own `{'cpu_s', 'sys_s', 'faults'}` (a worker process does)."""
  label: str
  framework: str  # 'jax' or 'torch'
  kind: str  # 'train' or 'infer'
  batch: int
  run: Callable[[int], Optional[dict]]
  devices: int = 1
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


def _train_config(batch: int, dtype):
  from se_flax.train.config import base_config
  config = base_config()
  config.batch_size = batch
  config.model.dtype = jnp.dtype(dtype).name
  return config


def _synthetic_batches(batch: int, image_size: int, sharding, count: int = 2,
                       seed: int = 0, with_mask: bool = False) -> list:
  """`count` random uint8 NHWC batches made on the devices, sharded."""
  def make(key):
    ki, kl = jax.random.split(key)
    out = {'image': jax.random.bits(ki, (batch, image_size, image_size, 3),
                                    jnp.uint8),
           'label': jax.random.randint(kl, (batch,), 0, NUM_CLASSES,
                                       jnp.int32)}
    if with_mask:
      out['mask'] = jnp.ones((batch,), bool)
    return out
  make = jax.jit(make, out_shardings=sharding)
  return [make(jax.random.key(seed + i)) for i in range(count)]


def _compiled_variant(label, kind, batch, fn, args, run, flops, keep_hlo):
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - start
  hlo = compiled.as_text()
  xla_flops = _xla_flops(compiled)
  return compiled, Variant(
      label=label, framework='jax', kind=kind, batch=batch, run=run,
      devices=jax.device_count(), flops_per_image=flops, compile_s=compile_s,
      xla_memory=_xla_memory(compiled),
      xla_flops_per_image=xla_flops / batch if xla_flops else None,
      host_transfers=host_transfers(hlo), se_fusion=se_fusion(hlo),
      hlo=hlo if keep_hlo else None)


def jax_variants(model_name: str, batch: int, image_size: int, dtype,
                 se: bool = True, kinds: Sequence[str] = ('train', 'infer'),
                 label: Optional[str] = None, keep_hlo: bool = False,
                 model_overrides: Optional[dict] = None,
                 compiler_options: Any = 'default') -> List[Variant]:
  """The se_flax train step and/or inference of one model, ready to time.

  The model, the state and the jitted steps come from `train/loop.py`
  (`build_model`, `create_state`, `jit_steps`), so this times what
  training runs. `model_overrides`: `config.model` fields, e.g.
  `{'layer_impl': 'xla'}`. `compiler_options`: as `loop.jit_steps`.
  """
  from se_flax.train import loop, optim, sharding

  devices = jax.device_count()
  if batch % devices:
    raise ValueError(f'batch {batch} is not a multiple of the {devices} '
                     'devices')
  config = _train_config(batch, dtype)
  config.model.name = model_name
  config.model.se = se
  config.lock()  # A misspelt override fails here.
  config.model.update(model_overrides or {})
  model = loop.build_model(config, NUM_CLASSES)
  label = label or (model_name if se else f'{model_name} (SE off)')
  flops = flops_per_image(model, image_size)
  mesh = sharding.create_mesh()
  batch_sharding = sharding.batch_sharding(mesh)
  schedule = optim.create_schedule(config, max(1, 1_281_167 // batch))
  tx = optim.create_optimizer(config, schedule)
  train_fn, eval_fn = loop.jit_steps(config, model, tx, schedule, mesh,
                                     compiler_options)
  state = loop.create_state(config, model, tx, image_size, mesh)
  variants = []
  if 'infer' in kinds:
    # Evaluation gets its own copy: the train step donates the state.
    variables = jax.tree_util.tree_map(
        jnp.copy, {'params': state.params, 'batch_stats': state.batch_stats})
    batches = _synthetic_batches(batch, image_size, batch_sharding,
                                 seed=100, with_mask=True)
    cell = {'i': 0}

    def run_infer(n: int, cell=cell, variables=variables, batches=batches):
      outs = []
      for _ in range(n):
        outs.append(cell['fn'](variables, batches[cell['i'] % len(batches)]))
        cell['i'] += 1
      jax.block_until_ready(outs)

    cell['fn'], v = _compiled_variant(label, 'infer', batch, eval_fn,
                                      (variables, batches[0]), run_infer,
                                      flops['infer'], keep_hlo)
    v.handle = cell
    variants.append(v)
  if 'train' in kinds:
    batches = _synthetic_batches(batch, image_size, batch_sharding)
    cell = {'state': state, 'i': 0}

    def run_train(n: int, cell=cell, batches=batches):
      st, metrics = cell['state'], None
      for _ in range(n):
        st, metrics = cell['fn'](st, batches[cell['i'] % len(batches)])
        cell['i'] += 1
      jax.block_until_ready((st, metrics))
      cell['state'] = st

    cell['fn'], v = _compiled_variant(label, 'train', batch, train_fn,
                                      (state, batches[0]), run_train,
                                      flops['train'], keep_hlo)
    v.handle = cell
    variants.insert(0, v)
  return variants


# ------------------------------------------------------------------ timm

# The worker runs in its own process (and may be another interpreter, one
# with torch but without JAX): it imports neither JAX nor se_flax. Protocol,
# one JSON object per line: it prints {'ready': ...} once its models are
# built and warmed up, then answers each {'kind', 'steps'} on stdin with
# {'wall_s', 'cpu_s', 'sys_s', 'faults'} for those steps, until EOF.
_TORCH_WORKER = r'''
import json, resource, sys, time
import timm, torch
import torch.nn.functional as F

args = json.loads(sys.argv[1])
device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
autocast_dtype = {'bfloat16': torch.bfloat16,
                  'float16': torch.float16}.get(args['dtype'])
sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
batch, size, classes = args['batch'], args['image_size'], args['classes']
gen = torch.Generator().manual_seed(0)
images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8,
                       generator=gen).to(device)
images = images.contiguous(memory_format=torch.channels_last)
labels = torch.randint(0, classes, (batch,), generator=gen).to(device)
mean = torch.tensor(args['mean']).view(1, 3, 1, 1).to(device)
std = torch.tensor(args['std']).view(1, 3, 1, 1).to(device)
scale, shift = 1.0 / (255.0 * std), mean / std

def autocast():
  if autocast_dtype is None:
    return torch.autocast(device.type, enabled=False)
  return torch.autocast(device.type, dtype=autocast_dtype)

if not timm.is_model(args['model']):
  print(json.dumps({'error': f"timm has no model {args['model']!r}"}),
        flush=True)
  sys.exit(0)
steps = {}
info = {'torch': torch.__version__, 'timm': timm.__version__,
        'device': str(device), 'threads': torch.get_num_threads(),
        'first_s': {}}
for kind in args['kinds']:
  model = timm.create_model(args['model'], pretrained=False,
                            num_classes=classes)
  model = model.to(device).to(memory_format=torch.channels_last)
  forward = torch.compile(model) if args['compile'] else model
  if kind == 'train':
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=args['lr'],
                          momentum=args['momentum'],
                          weight_decay=args['weight_decay'])
    def step(forward=forward, opt=opt):
      x = images.float() * scale - shift
      with autocast():
        logits = forward(x)
      loss = F.cross_entropy(logits.float(), labels)
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
  else:
    model.eval()
    def step(forward=forward):
      with torch.inference_mode(), autocast():
        forward(images.float() * scale - shift)
  start = time.perf_counter()
  step()
  sync()
  info['first_s'][kind] = time.perf_counter() - start
  steps[kind] = step
print(json.dumps({'ready': info}), flush=True)
for line in sys.stdin:
  cmd = json.loads(line)
  step = steps[cmd['kind']]
  r0 = resource.getrusage(resource.RUSAGE_SELF)
  c0, t0 = time.process_time(), time.perf_counter()
  for _ in range(cmd['steps']):
    step()
  sync()
  t1, c1 = time.perf_counter(), time.process_time()
  r1 = resource.getrusage(resource.RUSAGE_SELF)
  print(json.dumps({'wall_s': t1 - t0, 'cpu_s': c1 - c0,
                    'sys_s': r1.ru_stime - r0.ru_stime,
                    'faults': r1.ru_minflt - r0.ru_minflt}), flush=True)
'''


def torch_available(python: Optional[str] = None) -> bool:
  """Whether `python` (default: this interpreter) can import torch, timm."""
  try:
    done = subprocess.run([python or sys.executable, '-c',
                           'import torch, timm'], capture_output=True,
                          timeout=300)
  except (OSError, subprocess.TimeoutExpired):
    return False
  return done.returncode == 0


class TorchWorker:
  """timm models in a worker process, driven one command at a time."""

  def __init__(self, timm_name: str, batch: int, image_size: int, dtype,
               kinds: Sequence[str] = ('train', 'infer'),
               python: Optional[str] = None, compile_model: bool = False,
               lr: float = 0.1, momentum: float = 0.9,
               weight_decay: float = 1e-4):
    from se_flax.data.config import MEAN_RGB, STDDEV_RGB
    args = dict(model=timm_name, batch=batch, image_size=image_size,
                dtype=jnp.dtype(dtype).name, kinds=list(kinds),
                classes=NUM_CLASSES, mean=list(MEAN_RGB),
                std=list(STDDEV_RGB), compile=compile_model, lr=lr,
                momentum=momentum, weight_decay=weight_decay)
    self.name = timm_name
    self.compiled = compile_model
    self.proc = subprocess.Popen(
        [python or sys.executable, '-c', _TORCH_WORKER, json.dumps(args)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    first = self._read()
    if 'ready' not in first:
      self.close()
      raise RuntimeError(first.get('error', str(first)))
    self.info = first['ready']

  def _read(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      code = self.proc.wait(timeout=_WORKER_TIMEOUT_S)
      raise RuntimeError(f'torch worker for {self.name} exited ({code})')
    return json.loads(line)

  def run(self, kind: str, steps: int) -> dict:
    self.proc.stdin.write(json.dumps({'kind': kind, 'steps': steps}) + '\n')
    self.proc.stdin.flush()
    return self._read()

  def variants(self, label: str, batch: int,
               flops: Optional[dict] = None) -> List[Variant]:
    out = []
    for kind in self.info['first_s']:
      def run(n, kind=kind):
        r = self.run(kind, n)
        return {'cpu_s': r['cpu_s'], 'sys_s': r['sys_s'],
                'faults': r['faults']}
      out.append(Variant(
          label=label, framework='torch', kind=kind, batch=batch, run=run,
          flops_per_image=(flops or {}).get(kind),
          compile_s=self.info['first_s'][kind] if self.compiled else None))
    return out

  def close(self):
    if self.proc.poll() is None:
      self.proc.stdin.close()
      try:
        self.proc.wait(timeout=60)
      except subprocess.TimeoutExpired:
        self.proc.kill()


# ---------------------------------------------------------------- timing


def _usage():
  r = resource.getrusage(resource.RUSAGE_SELF)
  return time.process_time(), r.ru_stime, r.ru_minflt


def time_interleaved(variants: Sequence[Variant], reps: int, steps: int,
                     warmup: int = 2) -> None:
  """Fills each variant's per-step `times`, `cpu_times`, ... (per round)."""
  for v in variants:
    if warmup:
      v.run(warmup)
  for r in range(reps):
    order = variants if r % 2 == 0 else list(reversed(variants))
    for v in order:
      cpu0, sys0, faults0 = _usage()
      start = time.perf_counter()
      own = v.run(steps)
      wall = time.perf_counter() - start
      cpu1, sys1, faults1 = _usage()
      if own is None:
        own = {'cpu_s': cpu1 - cpu0, 'sys_s': sys1 - sys0,
               'faults': faults1 - faults0}
      v.times.append(wall / steps)
      v.cpu_times.append(own['cpu_s'] / steps)
      v.sys_times.append(own['sys_s'] / steps)
      v.faults.append(own['faults'] / steps)


def _median_or_none(xs):
  return statistics.median(xs) if xs else None


def summarize(v: Variant, peak: Optional[float]) -> dict:
  """Medians and spreads of one timed variant."""
  step = statistics.median(v.times)
  ips = v.batch / step
  out = {
      'label': v.label, 'framework': v.framework, 'kind': v.kind,
      'batch': v.batch, 'devices': v.devices,
      'step_ms': 1e3 * step, 'step_ms_min': 1e3 * min(v.times),
      'step_ms_max': 1e3 * max(v.times),
      'images_per_s': ips, 'images_per_s_per_device': ips / v.devices,
      'compile_s': v.compile_s, 'xla_memory_bytes': v.xla_memory,
      'flops_per_image': v.flops_per_image,
      'xla_flops_per_image': v.xla_flops_per_image,
      'host_transfers': v.host_transfers, 'se_fusion': v.se_fusion,
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


def paired_ratio(a: Variant, b: Variant) -> dict:
  """time(a) / time(b), round by round: median and min-max."""
  ratios = [x / y for x, y in zip(a.times, b.times)]
  return {'numerator': a.label, 'denominator': b.label, 'kind': a.kind,
          'time_ratio': statistics.median(ratios),
          'time_ratio_min': min(ratios),
          'time_ratio_max': max(ratios),
          'ratio_of_medians': (statistics.median(a.times)
                               / statistics.median(b.times))}


def _fmt(x, spec, scale=1.0):
  return '-' if x is None else format(x * scale, spec)


def format_table(results: dict) -> str:
  """A markdown table of a `run()` result, with the ratios under it."""
  env, peak, args = results['env'], results['peak'], results['args']
  lines = [
      f"{env['backend']} x{env['devices']} ({env['device_kind']}), jax "
      f"{env['jax']}; {args['model']} batch {args['batch']} @ "
      f"{args['image_size']} px {args['dtype']}; peak "
      f"{peak['flops_per_s'] / 1e12:.3f} TFLOP/s/device ({args['dtype']} "
      f"{peak['size']}^3 matmul); load {env['loadavg_before']} -> "
      f"{env['loadavg_after']}; malloc: {env['malloc']}", '',
      '| variant | kind | img/s | img/s/dev | step ms (min-max) | compile s '
      '| XLA GiB | TFLOP/s/dev | MFU |',
      '|---|---|---:|---:|---:|---:|---:|---:|---:|']
  for s in results['variants']:
    lines.append(
        f"| {s['label']} | {s['kind']} | {s['images_per_s']:.1f} | "
        f"{s['images_per_s_per_device']:.1f} | {s['step_ms']:.1f} "
        f"({s['step_ms_min']:.1f}-{s['step_ms_max']:.1f}) | "
        f"{_fmt(s['compile_s'], '.1f')} | "
        f"{_fmt(s['xla_memory_bytes'], '.2f', 2.0 ** -30)} | "
        f"{_fmt(s.get('model_tflops_per_s_per_device'), '.3f')} | "
        f"{_fmt(s.get('mfu'), '.1%')} |")
  lines.append('')
  for r in results['ratios']:
    lines.append(
        f"{r['kind']}: time({r['numerator']}) / time({r['denominator']}) = "
        f"{r['time_ratio']:.3f} (rounds {r['time_ratio_min']:.3f}-"
        f"{r['time_ratio_max']:.3f}); images/s ratio "
        f"{1 / r['time_ratio']:.3f}")
  if results.get('peak_device_memory') is not None:
    lines.append(f"peak device memory (process): "
                 f"{results['peak_device_memory'] / 2**30:.2f} GiB")
  jax_rows = [s for s in results['variants'] if s['framework'] == 'jax']
  transfers = {f"{s['label']} {s['kind']}": s['host_transfers']
               for s in jax_rows if s['host_transfers']}
  lines.append('host transfers in the compiled programs: '
               + (str(transfers) if transfers else 'none'))
  fusion = [f"{s['label']} {s['kind']} {s['se_fusion']['fused']}/"
            f"{s['se_fusion']['se_blocks']}" for s in jax_rows
            if s['se_fusion'] and s['se_fusion']['se_blocks']]
  if fusion:
    lines.append('SE scale fused into the residual add (blocks): '
                 + ', '.join(fusion))
  if env['backend'] == 'cpu':
    per_step = '; '.join(
        f"{s['label']} {s['kind']} {_fmt(s['cpu_s_per_step'], '.2f')} / "
        f"{_fmt(s['sys_s_per_step'], '.2f')} / "
        f"{_fmt(s['page_faults_per_step'], '.0f')}"
        for s in results['variants'])
    lines.append('per step, process CPU s / system s / page faults: '
                 + per_step)
    if any((s['page_faults_per_step'] or 0) > 1e5 for s in jax_rows):
      lines.append('many page faults per step: glibc gives XLA fresh '
                   'memory for every call; see keep_freed_memory and '
                   'PERFORMANCE.md, entry 6')
  for note in results.get('notes', []):
    lines.append(note)
  return '\n'.join(lines)


def run(model: str = 'seresnet50', batch: int = 32, image_size: int = 224,
        dtype: str = 'bf16', kinds: Sequence[str] = ('train', 'infer'),
        se_overhead: bool = False, timm: bool = False,
        timm_model: Optional[str] = None, torch_python: Optional[str] = None,
        reps: int = 5, steps: int = 5, warmup: int = 2,
        peak_size: Optional[int] = None, torch_compile: bool = False,
        keep_hlo: bool = False, model_overrides: Optional[dict] = None,
        compiler_options: Any = 'default',
        malloc: str = 'not set by run()') -> dict:
  """Builds, times and summarises every requested variant; returns a dict.

  Keys: 'env', 'args', 'peak' (the matmul, timed in the same rounds as the
  models), 'variants' (summaries), 'ratios'
  (paired time ratios: SE / plain and se_flax / timm, per kind),
  'peak_device_memory', 'notes'. With `keep_hlo`, '_variants' holds the
  `Variant`s, with the optimized HLO of each compiled program.
  """
  args = dict(model=model, batch=batch, image_size=image_size, dtype=dtype,
              kinds=list(kinds), se_overhead=se_overhead, timm=timm,
              timm_model=timm_model, reps=reps, steps=steps, warmup=warmup)
  jdtype = DTYPES[dtype]
  load_before = _loadavg()
  roles: Dict[str, Dict[str, Variant]] = {}
  variants: List[Variant] = []
  notes: List[str] = []

  def add(role, vs):
    for v in vs:
      roles.setdefault(v.kind, {})[role] = v
      variants.append(v)

  common = dict(kinds=kinds, keep_hlo=keep_hlo,
                model_overrides=model_overrides,
                compiler_options=compiler_options)
  add('se', jax_variants(model, batch, image_size, jdtype, se=True, **common))
  if se_overhead:
    add('plain', jax_variants(model, batch, image_size, jdtype, se=False,
                              **common))
  workers = []
  try:
    if timm:
      if not torch_available(torch_python):
        notes.append('torch/timm not importable: side-by-side skipped')
      else:
        name = timm_model or model
        pairs = [('timm', name, 'se')]
        if se_overhead:
          plain = _timm_plain_name(name)
          if plain:
            pairs.append(('timm_plain', plain, 'plain'))
          else:
            notes.append(f'no plain timm twin of {name}: timm SE overhead '
                         'skipped')
        for role, timm_name, twin in pairs:
          try:
            worker = TorchWorker(timm_name, batch, image_size, jdtype, kinds,
                                 python=torch_python,
                                 compile_model=torch_compile)
          except RuntimeError as e:
            notes.append(f'timm {timm_name} skipped: {e}')
            continue
          workers.append(worker)
          flops = {k: roles[k][twin].flops_per_image for k in roles}
          add(role, worker.variants(f'timm {timm_name}', batch, flops))
          notes.append(f"timm {timm_name}: torch {worker.info['torch']}, "
                       f"timm {worker.info['timm']}, "
                       f"{worker.info['device']}, "
                       f"{worker.info['threads']} threads")
    # The peak is timed in the same rounds, so it sees the same machine.
    peak_variant = matmul_peak_variant(jdtype, peak_size)
    time_interleaved(variants + [peak_variant], reps, steps, warmup)
  finally:
    for worker in workers:
      worker.close()
  ratios = []
  for group in roles.values():
    for num, den in (('se', 'plain'), ('se', 'timm'),
                     ('timm', 'timm_plain')):
      if num in group and den in group:
        ratios.append(paired_ratio(group[num], group[den]))
  peak = peak_of(peak_variant)
  device = jax.devices()[0]
  results = {
      'env': {'backend': jax.default_backend(),
              'devices': jax.device_count(),
              'device_kind': device.device_kind, 'jax': jax.__version__,
              'cpu_count': os.cpu_count(), 'loadavg_before': load_before,
              'loadavg_after': _loadavg(),
              'malloc': malloc,
              'glibc_tunables': os.environ.get('GLIBC_TUNABLES'),
              'xla_flags': os.environ.get('XLA_FLAGS')},
      'args': args, 'peak': peak,
      'variants': [summarize(v, peak['flops_per_s']) for v in variants],
      'ratios': ratios, 'peak_device_memory': peak_device_memory(),
      'notes': notes,
  }
  if keep_hlo:
    results['_variants'] = variants
  return results


def _loadavg() -> Optional[float]:
  try:
    return round(os.getloadavg()[0], 2)
  except OSError:
    return None


def _timm_plain_name(name: str) -> Optional[str]:
  """timm's plain twin of an SE model name (same style), if there is one."""
  for prefix, plain in (('seresnext', 'resnext'), ('seresnet', 'resnet')):
    if name.startswith(prefix):
      return plain + name[len(prefix):]
  return None


def main(argv: Optional[Sequence[str]] = None) -> dict:
  p = argparse.ArgumentParser(
      description=__doc__.split('\n\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--model', default='seresnet50')
  p.add_argument('--batch', type=int, default=32,
                 help='global batch, over all devices')
  p.add_argument('--image-size', type=int, default=224)
  p.add_argument('--dtype', default='bf16', choices=sorted(DTYPES))
  p.add_argument('--kinds', default='train,infer',
                 help="comma list of 'train', 'infer'")
  p.add_argument('--se-overhead', action='store_true',
                 help='also time the plain twin (SE off), interleaved')
  p.add_argument('--timm', action='store_true',
                 help="also time timm's model in PyTorch (if installed)")
  p.add_argument('--timm-model', default=None,
                 help='timm name, if not the same as --model')
  p.add_argument('--torch-python', default=None,
                 help='interpreter with torch + timm for the worker')
  p.add_argument('--torch-compile', action='store_true',
                 help='torch.compile the timm model')
  p.add_argument('--reps', type=int, default=5, help='timed rounds')
  p.add_argument('--steps', type=int, default=5, help='steps per round')
  p.add_argument('--warmup', type=int, default=2)
  p.add_argument('--peak-size', type=int, default=None,
                 help='matmul size for the peak (CPU 2048, else 8192)')
  p.add_argument('--xla-defaults', action='store_true',
                 help="XLA's default options instead of "
                      'steps.compiler_options()')
  p.add_argument('--glibc-malloc', action='store_true',
                 help="keep glibc's default malloc settings (see "
                 'keep_freed_memory)')
  p.add_argument('--json', default=None, help='also write results here')
  a = p.parse_args(argv)
  malloc = 'glibc default'
  if not a.glibc_malloc and keep_freed_memory():
    malloc = 'freed memory kept (keep_freed_memory)'
  kinds = tuple(k for k in a.kinds.split(',') if k)
  results = run(a.model, a.batch, a.image_size, a.dtype, kinds,
                se_overhead=a.se_overhead, timm=a.timm,
                timm_model=a.timm_model, torch_python=a.torch_python,
                reps=a.reps, steps=a.steps, warmup=a.warmup,
                peak_size=a.peak_size, torch_compile=a.torch_compile,
                compiler_options=None if a.xla_defaults else 'default',
                malloc=malloc)
  print(format_table(results))
  if a.json:
    with open(a.json, 'w') as f:
      json.dump(results, f, indent=2, default=str)
  return results


if __name__ == '__main__':
  main()
