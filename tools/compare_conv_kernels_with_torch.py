"""SE-ResNet-50's convolutions one by one: XLA's CPU kernels against torch's.

Times every distinct convolution of (SE-)ResNet-50 at one batch size:
its forward (`--kind infer`), or its forward and the gradients a train
step takes (`--kind train`: the kernel's and the input's, except for the
stem, whose input is the image), from a random cotangent. In JAX as
se_flax runs it (`layers.Conv2d`: 1x1 convolutions as matrix products,
with `cpu_grads.matmul`'s gradient; the rest as XLA convolutions; jitted
with `runtime.compiler_options()` after `runtime.configure()`, as
`train.py` does) and in torch as timm runs it (`nn.Conv2d`,
channels_last, inference mode or autograd with the gradients set to
None before each call, torch's default threads). Each round times one op
on both sides in turn, alternating which goes first; per op the median
of the paired ratios is printed, and the totals weighted by how often
each op occurs in the network.

  python tools/compare_conv_kernels_with_torch.py \\
      --torch_python /path/to/venv-with-torch/bin/python \\
      [--batch 1] [--kind train]

What it answers: how much of a whole-network gap against timm is the
convolution kernels themselves (PERFORMANCE.md, entries 17 and 18); with
`--kind train`, what is left of a train step's time once its
convolutions are paid for. Diagnostic only; the SE layers' small matrix
products and the element-wise work are not in it.
"""

import argparse
import functools
import json
import os
import statistics
import sys
import time

STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))  # (width, blocks)
EXPANSION = 4


def resnet50_convs(image_size: int = 224) -> list:
  """`(name, in_size, c_in, c_out, k, stride, count)` of every distinct conv.

  ResNet-50's bottlenecks with the stride on the 3x3 (timm, torchvision
  and the SE-ResNet Caffe models) and 1x1 projection shortcuts.
  """
  convs = {}

  def add(name, size, c_in, c_out, k, stride):
    key = (size, c_in, c_out, k, stride)
    if key in convs:
      convs[key][1] += 1
    else:
      convs[key] = [name, 1]

  add('stem 7x7/2', image_size, 3, 64, 7, 2)
  size, c_in = image_size // 4, 64
  for stage, (width, blocks) in enumerate(STAGES, 1):
    for block in range(blocks):
      stride = 2 if block == 0 and stage > 1 else 1
      out_size = size // stride
      tag = f's{stage}'
      add(f'{tag} 1x1 reduce', size, c_in, width, 1, 1)
      add(
          f'{tag} 3x3' + ('/2' if stride > 1 else ''),
          size,
          width,
          width,
          3,
          stride,
      )
      add(f'{tag} 1x1 expand', out_size, width, width * EXPANSION, 1, 1)
      if block == 0:
        add(
            f'{tag} 1x1 shortcut' + ('/2' if stride > 1 else ''),
            size,
            c_in,
            width * EXPANSION,
            1,
            stride,
        )
      size, c_in = out_size, width * EXPANSION
  return [(name, *key, count) for key, (name, count) in convs.items()]


def _timer(run, steps: int) -> float:
  """Seconds per call of `run()`, which must block on its result."""
  start = time.perf_counter()
  for _ in range(steps):
    run()
  return (time.perf_counter() - start) / steps


def input_gradient(index: int) -> bool:
  """Whether a train step differentiates conv `index`'s input: all but the
  stem's (the image); XLA and autograd both skip that gradient."""
  return index > 0


def _gradients(apply, of_input: bool, params, x, cotangent):
  """The forward's output (returned, so XLA cannot drop the forward) and
  the kernel's (and the input's) gradient."""
  import jax

  if of_input:
    y, pull = jax.vjp(apply, params, x)
  else:
    y, pull = jax.vjp(lambda p: apply(p, x), params)
  return y, pull(cotangent)


def jax_programs(batch: int, convs: list, kind: str = 'infer') -> list:
  """`(jitted function, arguments)` per conv, as se_flax's Conv2d runs it.

  `kind='train'`: the forward and, from a cotangent passed in (random
  values: a constant one would let XLA simplify the products), the
  gradients a train step takes (`input_gradient`), under se_flax's
  layer rules (1x1 weight gradients by `cpu_grads.matmul` on CPU).
  """
  import jax

  from se_flax import runtime
  from se_flax.layers import Conv2d

  programs = []
  options = runtime.compiler_options()
  for index, (_, size, c_in, c_out, k, stride, _) in enumerate(convs):
    layer = Conv2d(c_out, k, strides=stride)
    x = jax.random.normal(jax.random.PRNGKey(2), (batch, size, size, c_in))
    params = layer.init(jax.random.PRNGKey(0), x)
    if kind == 'infer':
      programs.append(
          (jax.jit(layer.apply, compiler_options=options), (params, x))
      )
      continue
    cotangent = jax.random.normal(
        jax.random.PRNGKey(1), jax.eval_shape(layer.apply, params, x).shape
    )
    run = functools.partial(_gradients, layer.apply, input_gradient(index))
    programs.append(
        (jax.jit(run, compiler_options=options), (params, x, cotangent))
    )
  return programs


def jax_ops(batch: int, convs: list, kind: str = 'infer') -> list:
  """One blocking zero-argument callable per conv (`jax_programs`), and
  last the per-call floor: a jitted one-element add, called the same way."""
  import jax
  import jax.numpy as jnp

  ops = [
      lambda f=f, args=args: jax.block_until_ready(f(*args))
      for f, args in jax_programs(batch, convs, kind)
  ]
  floor = jax.jit(lambda x: x + 1)
  one = jnp.ones((1,), jnp.float32)
  ops.append(lambda: floor(one).block_until_ready())
  return ops


def _torch_train_op(conv, x):
  """Forward and backward from a random cotangent, gradients set to None
  first as `optimizer.zero_grad()` does."""
  import torch

  with torch.no_grad():
    cotangent = torch.randn_like(conv(x))

  def run():
    conv.weight.grad = x.grad = None
    conv(x).backward(cotangent)

  return run


def torch_side(batch: int, warmup: int, kind: str) -> None:
  """The torch worker: reads `{"op": i, "steps": n}` lines, answers seconds."""
  import contextlib

  import torch

  ops = []
  for index, (_, size, c_in, c_out, k, stride, _) in enumerate(
      resnet50_convs()
  ):
    conv = torch.nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False)
    conv = conv.to(memory_format=torch.channels_last)
    x = torch.randn(batch, c_in, size, size).contiguous(
        memory_format=torch.channels_last
    )
    if kind == 'infer':
      ops.append(lambda conv=conv.eval(), x=x: conv(x))
    else:
      x.requires_grad_(input_gradient(index))
      ops.append(_torch_train_op(conv.train(), x))
  one = torch.ones(1)
  ops.append(lambda: one + 1)  # The per-call floor, as on the JAX side.
  mode = torch.inference_mode() if kind == 'infer' else contextlib.nullcontext()
  with mode:
    for op in ops:
      _timer(op, warmup)  # torch's CPU kernels run synchronously.
    # The protocol of se_flax.benchmark.workers.WorkerProcess.
    print(
        json.dumps({'ready': {'threads': torch.get_num_threads()}}), flush=True
    )
    for line in sys.stdin:
      request = json.loads(line)
      seconds = _timer(ops[request['op']], request['steps'])
      print(json.dumps({'seconds': seconds}), flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--torch_python')
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument(
      '--kind',
      choices=('infer', 'train'),
      default='infer',
      help='forward only, or forward and the gradients a train step takes',
  )
  parser.add_argument('--rounds', type=int, default=9)
  parser.add_argument('--steps', type=int, default=20, help='calls per round')
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--side', choices=('jax', 'torch'), default='jax')
  args = parser.parse_args()
  if args.side == 'torch':
    torch_side(args.batch, args.warmup, args.kind)
    return
  if not args.torch_python:
    parser.error('--torch_python is required')
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
  from se_flax.benchmark import timing, workers

  convs = resnet50_convs()
  torch_worker = workers.WorkerProcess(
      [
          args.torch_python,
          __file__,
          '--side',
          'torch',
          f'--batch={args.batch}',
          f'--warmup={args.warmup}',
          f'--kind={args.kind}',
      ],
      'torch convolutions',
  )
  try:
    threads = torch_worker.info['threads']

    def torch_op(index: int) -> float:
      return torch_worker.request(op=index, steps=args.steps)['seconds']

    from se_flax import runtime

    runtime.configure()  # As train.py does, before JAX starts.
    ops = jax_ops(args.batch, convs, args.kind)
    for op in ops:
      _timer(op, args.warmup)
    times = {side: [[] for _ in ops] for side in ('jax', 'torch')}
    for round_ in range(args.rounds):
      for index, op in enumerate(ops):
        sides = (
            ['jax', 'torch'] if (round_ + index) % 2 == 0 else ['torch', 'jax']
        )
        for side in sides:
          seconds = _timer(op, args.steps) if side == 'jax' else torch_op(index)
          times[side][index].append(seconds)
  finally:
    torch_worker.close()

  what = 'forward' if args.kind == 'infer' else 'forward + gradients'
  print(
      f'{what}, batch {args.batch}, fp32, {args.rounds} rounds x '
      f'{args.steps} calls; '
      f'torch {threads} threads; times are medians, ms per call'
  )
  print(
      '| conv | input | count | se_flax ms | torch ms | time ratio (95% interval) |'
  )
  print('|---|---|---:|---:|---:|---|')
  totals = {'jax': 0.0, 'torch': 0.0}
  floor = len(convs)  # The last op: the per-call floor.
  rows = convs + [('per-call floor: 1-element add', 1, 1, 1, 0, 0, 0)]
  for index, (name, size, c_in, c_out, _, _, count) in enumerate(rows):
    medians = {s: statistics.median(t[index]) for s, t in times.items()}
    for side in totals:
      totals[side] += count * medians[side]
    ratios = [a / b for a, b in zip(times['jax'][index], times['torch'][index])]
    summary = timing.time_ratio_summary(ratios)
    interval = summary['time_ratio_interval']
    shown = f"{summary['time_ratio']:.3f}" + (
        f' ({interval[0]:.3f}-{interval[1]:.3f})' if interval else ''
    )
    print(
        f'| {name} ({c_in}->{c_out}) | {size}x{size} | {count} | '
        f'{1e3 * medians["jax"]:.3f} | {1e3 * medians["torch"]:.3f} | '
        f'{shown} |'
    )
  calls = sum(c[-1] for c in convs)
  floors = {s: calls * statistics.median(t[floor]) for s, t in times.items()}
  print(
      f'all {calls} convolutions, weighted by count: se_flax '
      f'{1e3 * totals["jax"]:.1f} ms, torch {1e3 * totals["torch"]:.1f} ms, '
      f'time ratio {totals["jax"] / totals["torch"]:.3f}; less {calls} '
      f'per-call floors ({1e3 * floors["jax"]:.1f} and '
      f'{1e3 * floors["torch"]:.1f} ms, which a compiled network does not '
      f'pay per op): time ratio '
      f'{(totals["jax"] - floors["jax"]) / (totals["torch"] - floors["torch"]):.3f}'
  )


if __name__ == '__main__':
  main()
