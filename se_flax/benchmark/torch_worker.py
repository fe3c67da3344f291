"""timm's model in PyTorch, timed round by round for the benchmark.

Run by `workers.torch_worker` with an interpreter that has torch and timm
(it imports neither JAX nor se_flax). Protocol, one JSON object per line:
it prints {'ready': ...} once its models are built and warmed up, then
answers each {'kind', 'steps'} on stdin with {'wall_s', 'cpu_s', 'sys_s',
'faults'} for those steps, until EOF.
"""

import json
import resource
import sys
import time

import timm
import torch
import torch.nn.functional as F

args = json.loads(sys.argv[1])
device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
autocast_dtype = {'bfloat16': torch.bfloat16, 'float16': torch.float16}.get(
    args['dtype']
)
sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
batch, size, classes = args['batch'], args['image_size'], args['classes']
gen = torch.Generator().manual_seed(0)
images = torch.randint(
    0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=gen
).to(device)
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
  print(
      json.dumps({'error': f"timm has no model {args['model']!r}"}), flush=True
  )
  sys.exit(0)
steps = {}
info = {
    'torch': torch.__version__,
    'timm': timm.__version__,
    'device': str(device),
    'threads': torch.get_num_threads(),
    'first_s': {},
}
for kind in args['kinds']:
  model = timm.create_model(
      args['model'], pretrained=False, num_classes=classes
  )
  model = model.to(device).to(memory_format=torch.channels_last)
  forward = torch.compile(model) if args['compile'] else model
  if kind == 'train':
    model.train()
    opt = torch.optim.SGD(
        model.parameters(),
        lr=args['lr'],
        momentum=args['momentum'],
        weight_decay=args['weight_decay'],
    )

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
