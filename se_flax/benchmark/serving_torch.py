"""timm's model served in PyTorch, for the serving benchmark (`serving.py`).

Run by `serving.torch_serving_worker` with an interpreter that has torch
and timm (it imports neither JAX nor se_flax), as
`python -c SCRIPT ARGS_JSON`. ARGS: {'model', 'batches', 'image_size',
'threads', 'compile', 'channels_last'}. Eval mode under
`torch.inference_mode()`, float32 images already preprocessed (as the
se_flax runtimes get them), random weights. Protocol as
`workers.WorkerProcess`: {'ready': info}, then {'index', 'steps'} ->
{'wall_s', 'cpu_s', 'sys_s', 'faults'} until EOF.
"""

import json
import os
import resource
import sys
import time

args = json.loads(sys.argv[1])
cpus = sorted(os.sched_getaffinity(0))
if args['threads'] < len(cpus):  # Same pinning as the se_flax workers.
  os.sched_setaffinity(0, cpus[: args['threads']])

import timm  # noqa: E402  (after pinning: torch sizes its pools at import)
import torch  # noqa: E402

torch.set_num_threads(args['threads'])
if not timm.is_model(args['model']):
  print(json.dumps({'error': f"timm has no model {args['model']!r}"}))
  sys.exit(0)
model = timm.create_model(args['model'], pretrained=False).eval()
layout = (
    torch.channels_last if args['channels_last'] else torch.contiguous_format
)
model = model.to(memory_format=layout)
# dynamic=False: one static program per batch size, as for the exports.
forward = torch.compile(model, dynamic=False) if args['compile'] else model
runners, info = [], []
for batch in args['batches']:
  gen = torch.Generator().manual_seed(0)
  size = args['image_size']
  x = torch.randn(batch, 3, size, size, generator=gen).contiguous(
      memory_format=layout
  )

  def run(n, x=x):
    with torch.inference_mode():
      for _ in range(n):
        forward(x)

  start = time.perf_counter()
  run(1)  # torch.compile compiles here.
  info.append(dict(batch=batch, first_s=time.perf_counter() - start))
  runners.append(run)
print(
    json.dumps(
        {
            'ready': dict(
                variants=info,
                cpus=len(os.sched_getaffinity(0)),
                threads=torch.get_num_threads(),
                versions={'torch': torch.__version__, 'timm': timm.__version__},
            )
        }
    ),
    flush=True,
)
for line in sys.stdin:
  cmd = json.loads(line)
  r0 = resource.getrusage(resource.RUSAGE_SELF)
  c0, t0 = time.process_time(), time.perf_counter()
  runners[cmd['index']](cmd['steps'])
  t1, c1 = time.perf_counter(), time.process_time()
  r1 = resource.getrusage(resource.RUSAGE_SELF)
  print(
      json.dumps(
          {
              'wall_s': t1 - t0,
              'cpu_s': c1 - c0,
              'sys_s': r1.ru_stime - r0.ru_stime,
              'faults': r1.ru_minflt - r0.ru_minflt,
          }
      ),
      flush=True,
  )
