"""What a compiled program says about itself: memory, FLOPs, host
transfers, and whether each SE scale is fused into its residual add."""

import re
from typing import Dict, List, Optional, Tuple

import jax


def xla_memory(compiled) -> Optional[int]:
  """Bytes XLA plans for one call: arguments + outputs - aliased + temps."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # Not every backend implements it.
    return None
  if m is None:
    return None
  return int(
      m.argument_size_in_bytes
      + m.output_size_in_bytes
      - m.alias_size_in_bytes
      + m.temp_size_in_bytes
  )


def xla_flops(compiled) -> Optional[float]:
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
_HOST_PATTERNS = (
    'outfeed',
    'infeed',
    'send(',
    'recv(',
    'send-done',
    'recv-done',
    'host_callback',
    'xla_python_cpu_callback',
    'xla_python_gpu_callback',
    'xla_ffi_python',
    'MoveToHost',
    'S(5)',
)


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


_INSTRUCTION = re.compile(r'\s*(ROOT )?%?([\w.\-]+) = (\S+) ([\w\-]+)\((.*)')


def parse_instruction(line: str) -> Optional[Tuple[bool, str, str, str, str]]:
  """`(is_root, name, shape, opcode, rest)` of one line of HLO text, or
  None when the line is no instruction. `rest`: the operands onwards."""
  m = _INSTRUCTION.match(line)
  return m and (bool(m.group(1)), *m.group(2, 3, 4, 5))


def entry_instructions(hlo_text: str) -> List[Tuple[bool, str, str, str, str]]:
  """`parse_instruction` of each instruction of the ENTRY computation."""
  entry = hlo_text[hlo_text.index('\nENTRY') :].split('\n')[1:]
  return [i for i in map(parse_instruction, entry) if i]


def _se_scale_block(op_name: str) -> Optional[str]:
  """The block whose SE scale `op_name` is, else None: `<block>/se/mul`
  (SqueezeExcite's own) or `<block>/<bn>/se_gate/mul` (BN and SE as one
  layer, `cpu_grads.batch_norm_gated`)."""
  if op_name.endswith('/se/mul'):
    return op_name[: -len('/se/mul')]
  fused = re.match(r'(.*)/[^/]+/se_gate/mul$', op_name)
  return fused.group(1) if fused else None


def se_fusion(hlo_text: str) -> Dict[str, int]:
  """Does XLA fuse each SE scale into its block's residual add?

  Reads the optimized HLO. A block's forward SE scale (the full-size
  multiply named `.../se/mul`, or `.../<bn>/se_gate/mul` where BN and SE
  are one layer, outside any gradient) counts as fused when
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
      parsed = parse_instruction(line)
      name = re.search(r'op_name="([^"]*)"', line)
      if not parsed or not name or 'transpose(' in name.group(1):
        if parsed and parsed[0]:
          roots = (
              re.findall(r'%([\w.\-]+)', parsed[4])
              if parsed[3] == 'tuple'
              else [parsed[1]]
          )
        continue
      is_root, result, shape, code, _ = parsed
      rank = shape.split('{')[0].count(',') + 1
      ops[result] = (name.group(1), code, rank)
      if is_root:
        roots = [result]
    names = {op for op, code, _ in ops.values() if code in ('multiply', 'add')}
    for ins, (op, code, rank) in ops.items():
      block = _se_scale_block(op) if code == 'multiply' and rank == 4 else None
      if block is not None:
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
