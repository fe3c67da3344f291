"""Generates tests/fixtures/drop_path/: timm's stochastic depth in ResNets.

Needs torch, timm and se_flax's JAX pins in one venv (no TensorFlow)::

  /work/torch-venv/bin/python tools/make_drop_path_fixtures.py

Writes

* ``rates.json``: per-block drop rates of timm's own networks
  (`timm.create_model(arch, drop_path_rate=r)`, each block's
  `drop_path.drop_prob`, 0 where timm puts no DropPath), and versions.
* ``tiny.npz`` / ``tiny.json``: timm's train-mode logits of an SE-ResNet
  with one basic block per stage (se_flax's `seresnet_tiny`) at
  `drop_path_rate=TINY['rate']`: ``images`` (N, H, W, 3) NHWC float32,
  ``keep/{block}`` (N,) bool, the masks timm's own `DropPath` drew (read
  back from its output: a dropped sample's branch is all zeros),
  ``logits`` (N, classes) float32 and ``logits_eval`` (eval mode).

The weights are `se_flax.testing.random_state_dict` of the timm keys with
TINY['seed'] (the tests redraw them; nothing large is committed).
tests/test_drop_path_timm_live.py imports the functions here.
"""

import contextlib
import json
import os

import numpy as np
import timm
from timm.models import resnet as timm_resnet
import torch

from se_flax import convert
from se_flax import testing

OUT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    'tests',
    'fixtures',
    'drop_path',
)
RATE_ARCHS = (
    'resnet18',
    'seresnet18',
    'resnet50',
    'seresnet50',
    'seresnext50_32x4d',
    'seresnet152',
    'senet154',
)
RATES = (0.05, 0.1, 0.3)
# Rate 0.5 over 4 blocks: 0, 1/6, 1/3, 1/2. The torch seed is the first
# whose masks (timm's draws) keep and drop a sample in every such block.
TINY = dict(name='seresnet_tiny', num_classes=10, batch=8, size=32, rate=0.5)


def timm_block_rates(model: torch.nn.Module) -> list[float]:
  """Each residual block's drop_prob, network order (0: no DropPath)."""
  rates = []
  for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
    for block in stage:
      dp = block.drop_path
      rates.append(0.0 if dp is None else float(dp.drop_prob))
  return rates


def rate_table() -> dict:
  """{arch: {str(rate): per-block rates}} from timm's own models."""
  table = {}
  for arch in RATE_ARCHS:
    table[arch] = {}
    for rate in RATES:
      with torch.device('meta'):  # Structure only: no weights drawn.
        model = timm.create_model(arch, drop_path_rate=rate)
      table[arch][str(rate)] = timm_block_rates(model)
  return table


def tiny_timm(rate: float, num_classes: int) -> torch.nn.Module:
  """timm's ResNet with se_flax's `seresnet_tiny` shape.

  timm's 7x7 stem is always 64 wide; the tiny network's is 16, so the stem
  and the first block's input conv are swapped for 16-channel ones (and
  the shortcut projection that 64 -> 16 needed is dropped). The blocks,
  their SE and their DropPath are timm's, built by its `make_blocks`.
  """
  model = timm_resnet.ResNet(
      block=timm_resnet.BasicBlock,
      layers=[1, 1, 1, 1],
      channels=(16, 32, 64, 128),
      num_classes=num_classes,
      drop_path_rate=rate,
      block_args=dict(attn_layer='se'),
  )
  model.conv1 = torch.nn.Conv2d(3, 16, 7, 2, 3, bias=False)
  model.bn1 = torch.nn.BatchNorm2d(16)
  model.layer1[0].conv1 = torch.nn.Conv2d(16, 16, 3, 1, 1, bias=False)
  model.layer1[0].downsample = None
  return model


def random_weights(name: str, num_classes: int, seed: int) -> dict:
  """`random_state_dict` over the timm keys se_flax's `name` converts."""
  layout = convert.timm_layout(name, num_classes)
  return testing.random_state_dict(
      [(k, leaf.torch_shape, 'float32') for k, leaf in layout.items()], seed
  )


def load(model: torch.nn.Module, state: dict) -> torch.nn.Module:
  """Loads float weights (num_batches_tracked stays as timm made it)."""
  missing, unexpected = model.load_state_dict(
      {k: torch.from_numpy(v) for k, v in state.items()}, strict=False
  )
  assert not unexpected, unexpected
  assert all(k.endswith('num_batches_tracked') for k in missing), missing
  return model


def block_names(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
  """(se_flax block name, timm block) in network order."""
  out = []
  for i, stage in enumerate(
      (model.layer1, model.layer2, model.layer3, model.layer4)
  ):
    for j, block in enumerate(stage):
      out.append((f'stage{i + 1}_block{j}', block))
  return out


@contextlib.contextmanager
def recorded_masks(model: torch.nn.Module):
  """Yields {block: (N,) bool} filled with the masks timm's DropPath draws.

  A dropped sample leaves an all-zero branch; a kept one is the branch
  times 1 / keep_prob, checked exactly here (so the mask is what timm
  applied, not a guess).
  """
  masks, handles = {}, []
  for name, block in block_names(model):
    if block.drop_path is None:
      continue

    def hook(module, inputs, output, name=name):
      x = inputs[0]
      keep = output.flatten(1).ne(0).any(1)
      scale = keep.to(x.dtype).div_(1 - module.drop_prob)
      assert torch.equal(output, x * scale.view(-1, 1, 1, 1)), name
      masks[name] = keep.numpy()

    handles.append(block.drop_path.register_forward_hook(hook))
  try:
    yield masks
  finally:
    for h in handles:
      h.remove()


def train_logits(model, images_nhwc: np.ndarray, torch_seed: int):
  """timm's train-mode logits and the drop masks it drew (torch seed)."""
  model.train()
  torch.manual_seed(torch_seed)
  x = torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy())
  with recorded_masks(model) as masks, torch.no_grad():
    logits = model(x).numpy()
  return logits, dict(masks)


def eval_logits(model, images_nhwc: np.ndarray) -> np.ndarray:
  model.eval()
  x = torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    return model(x).numpy()


def mixed(masks: dict) -> bool:
  """Every mask keeps and drops at least one sample."""
  return all(m.any() and not m.all() for m in masks.values())


def tiny_case(seed: int, torch_seed: int):
  """(images, masks, train logits, eval logits) of the tiny network."""
  c = TINY
  state = random_weights(c['name'], c['num_classes'], seed)
  model = load(tiny_timm(c['rate'], c['num_classes']), state)
  images = testing.random_images(seed, c['batch'], c['size'])
  images = images.transpose(0, 2, 3, 1)  # NCHW -> NHWC
  # Eval first: timm's train pass updates the running statistics.
  logits_eval = eval_logits(model, images)
  logits, masks = train_logits(model, images, torch_seed)
  return images, masks, logits, logits_eval


def main():
  os.makedirs(OUT, exist_ok=True)
  versions = dict(timm=timm.__version__, torch=torch.__version__)
  with open(os.path.join(OUT, 'rates.json'), 'w') as f:
    json.dump(dict(versions, rates=rate_table()), f, indent=1)
    f.write('\n')
  seed = 0
  torch_seed = next(
      s for s in range(100) if mixed(tiny_case(seed, s)[1])
  )  # fmt: skip
  images, masks, logits, logits_eval = tiny_case(seed, torch_seed)
  np.savez_compressed(
      os.path.join(OUT, 'tiny.npz'),
      images=images.astype(np.float32),
      logits=logits,
      logits_eval=logits_eval,
      **{f'keep/{k}': v for k, v in masks.items()},
  )
  meta = dict(versions, **TINY, seed=seed, torch_seed=torch_seed)
  meta['blocks'] = sorted(masks)
  with open(os.path.join(OUT, 'tiny.json'), 'w') as f:
    json.dump(meta, f, indent=1)
    f.write('\n')
  print('wrote', OUT, meta)


if __name__ == '__main__':
  main()
