"""The JAX programs the benchmark times, each as users run it.

Two paths per model, both on synthetic batches made on the devices:
- the training loop's step (`loop_step_variants`): `steps.train_step` /
  `steps.eval_step` jitted by `loop.jit_steps` with `base_config()`'s
  optimizer, exactly what `train.py` compiles;
- a user's step (`user_step_variants`): `se_flax.create_model`, then
  `jax.jit` of `model.apply` + an optax SGD update, written as a notebook
  would, with no se_flax training code and no compiler options.
"""

import time
from typing import Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from se_flax import layers
from se_flax.benchmark import hlo
from se_flax.benchmark.timing import Variant
from se_flax.data.normalize import normalize_images
from se_flax.models import registry

NUM_CLASSES = 1000
# FLOPs of a train step in forwards: 1 forward + 2 backward passes.
TRAIN_FLOPS_PER_FORWARD = 3
LOOP, USER = 'train loop step', 'user jit step'


def flops_per_image(model, image_size: int) -> Dict[str, int]:
  """Model FLOPs per image: `{'macs', 'train', 'infer'}` (2 per MAC)."""
  from se_flax.models.stats import model_stats

  macs = model_stats(model, image_size).macs
  return {
      'macs': macs,
      'infer': 2 * macs,
      'train': 2 * TRAIN_FLOPS_PER_FORWARD * macs,
  }


def _synthetic_batches(
    batch: int,
    image_size: int,
    sharding,
    count: int = 2,
    seed: int = 0,
    with_mask: bool = False,
    num_classes: int = NUM_CLASSES,
) -> list:
  """`count` random uint8 NHWC batches made on the devices, sharded."""

  def make(key):
    ki, kl = jax.random.split(key)
    out = {
        'image': jax.random.bits(
            ki, (batch, image_size, image_size, 3), jnp.uint8
        ),
        'label': jax.random.randint(kl, (batch,), 0, num_classes, jnp.int32),
    }
    if with_mask:
      out['mask'] = jnp.ones((batch,), bool)
    return out

  make = jax.jit(make, out_shardings=sharding)
  return [make(jax.random.key(seed + i)) for i in range(count)]


def _compiled_variant(
    label,
    kind,
    batch,
    fn,
    args,
    run,
    flops,
    keep_hlo,
    path,
    cell,
    devices=1,
    layer_rules='auto',
) -> Variant:
  """Compiles `fn` for `args` into `cell['fn']`, which `run` calls; the
  layers are traced under `layer_rules` (as the trainer's config sets)."""
  start = time.perf_counter()
  with layers.layer_rules(layer_rules):
    lowered = fn.lower(*args)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  text = compiled.as_text()
  xla_flops = hlo.xla_flops(compiled)
  cell['fn'] = compiled
  return Variant(
      label=label,
      framework='jax',
      kind=kind,
      batch=batch,
      run=run,
      devices=devices,
      path=path,
      handle=cell,
      flops_per_image=flops,
      compile_s=compile_s,
      xla_memory=hlo.xla_memory(compiled),
      xla_flops_per_image=xla_flops / batch if xla_flops else None,
      host_transfers=hlo.host_transfers(text),
      se_fusion=hlo.se_fusion(text),
      hlo=text if keep_hlo else None,
  )


def _label(model_name: str, se: bool, path: str, label: Optional[str]):
  base = label or (model_name if se else f'{model_name} (SE off)')
  return base if path == LOOP else f'{base} [user jit]'


def training_config(
    model_name: str,
    batch: int,
    dtype,
    se: bool = True,
    model_overrides: Optional[dict] = None,
):
  """`base_config()` for `model_name` at this batch and compute dtype."""
  from se_flax.train.config import base_config

  config = base_config()
  config.batch_size = batch
  config.model.dtype = jnp.dtype(dtype).name
  config.model.name = model_name
  config.model.se = se
  config.lock()  # A misspelt override fails here.
  config.model.update(model_overrides or {})
  return config


def loop_step_variants(
    model_name: str,
    batch: int,
    image_size: int,
    dtype,
    se: bool = True,
    kinds: Sequence[str] = ('train', 'infer'),
    label: Optional[str] = None,
    keep_hlo: bool = False,
    model_overrides: Optional[dict] = None,
    config=None,
    num_classes: int = NUM_CLASSES,
    steps_per_epoch: Optional[int] = None,
) -> List[Variant]:
  """The training loop's train step and/or eval step of one model.

  The model, the state and the jitted steps come from the trainer
  (`config.build_model`, `loop.create_state`, `loop.jit_steps`), so this
  times what training runs, on every device. `config`: a config to take
  the model, batch, dtype and optimizer from (else `training_config` of
  the arguments; `model_overrides`: `config.model` fields, e.g.
  `{'se_position': '3x3'}`). `steps_per_epoch` shapes the schedule
  (default: ImageNet's 1,281,167 images).
  """
  from se_flax.train import config as config_lib
  from se_flax.train import loop, optim, sharding

  if config is None:
    config = training_config(model_name, batch, dtype, se, model_overrides)
  batch = config.batch_size
  devices = jax.device_count()
  if batch % devices:
    raise ValueError(
        f'batch {batch} is not a multiple of the {devices} ' 'devices'
    )
  model = config_lib.build_model(config, num_classes)
  label = _label(config.model.name, config.model.se, LOOP, label)
  flops = flops_per_image(model, image_size)
  mesh = sharding.create_mesh()
  batch_sharding = sharding.batch_sharding(mesh)
  schedule = optim.create_schedule(
      config, steps_per_epoch or max(1, 1_281_167 // batch)
  )
  tx = optim.create_optimizer(config, schedule)
  train_fn, eval_fn = loop.jit_steps(config, model, tx, schedule, mesh)
  state = loop.create_state(config, model, tx, image_size, mesh)
  variants = []
  if 'train' in kinds:
    batches = _synthetic_batches(
        batch, image_size, batch_sharding, num_classes=num_classes
    )
    cell = {'state': state, 'i': 0}

    def run_train(n: int, cell=cell, batches=batches):
      st, metrics = cell['state'], None
      for _ in range(n):
        st, metrics = cell['fn'](st, batches[cell['i'] % len(batches)])
        cell['i'] += 1
      jax.block_until_ready((st, metrics))
      cell['state'] = st

    # Evaluation below gets its own copy: the train step donates the state.
    variables = (
        jax.tree_util.tree_map(
            jnp.copy, {'params': state.params, 'batch_stats': state.batch_stats}
        )
        if 'infer' in kinds
        else None
    )
    variants.append(
        _compiled_variant(
            label,
            'train',
            batch,
            train_fn,
            (state, batches[0]),
            run_train,
            flops['train'],
            keep_hlo,
            LOOP,
            cell,
            devices,
            config.layer_rules,
        )
    )
  else:
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
  if 'infer' in kinds:
    batches = _synthetic_batches(
        batch,
        image_size,
        batch_sharding,
        seed=100,
        with_mask=True,
        num_classes=num_classes,
    )
    cell = {'i': 0}

    def run_infer(n: int, cell=cell, variables=variables, batches=batches):
      outs = []
      for _ in range(n):
        outs.append(cell['fn'](variables, batches[cell['i'] % len(batches)]))
        cell['i'] += 1
      jax.block_until_ready(outs)

    variants.append(
        _compiled_variant(
            label,
            'infer',
            batch,
            eval_fn,
            (variables, batches[0]),
            run_infer,
            flops['infer'],
            keep_hlo,
            LOOP,
            cell,
            devices,
            config.layer_rules,
        )
    )
  return variants


def user_step_variants(
    model_name: str,
    batch: int,
    image_size: int,
    dtype,
    se: bool = True,
    kinds: Sequence[str] = ('train', 'infer'),
    label: Optional[str] = None,
    keep_hlo: bool = False,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
) -> List[Variant]:
  """A notebook's train step and/or inference of one model, on one device.

  What a user writes after `create_model`: plain `jax.jit` (no donation,
  no compiler options), float32 NHWC inputs normalised beforehand, the
  same SGD (momentum, weight decay) as the training config.
  """
  model = registry.create_model(
      model_name,
      num_classes=NUM_CLASSES,
      dtype=jnp.dtype(dtype),
      se=True if se else None,
  )
  label = _label(model_name, se, USER, label)
  flops = flops_per_image(model, image_size)
  key = jax.random.key(0)
  images = normalize_images(
      jax.random.bits(key, (batch, image_size, image_size, 3), jnp.uint8),
      jnp.float32,
  )
  labels = jax.random.randint(key, (batch,), 0, NUM_CLASSES, jnp.int32)
  variables = jax.jit(lambda k: model.init(k, images[:1], train=False))(key)
  tx = optax.chain(
      optax.add_decayed_weights(weight_decay), optax.sgd(lr, momentum=momentum)
  )

  def train_step(params, batch_stats, opt_state, images, labels):
    def loss_fn(params):
      logits, updates = model.apply(
          {'params': params, 'batch_stats': batch_stats},
          images,
          train=True,
          mutable=['batch_stats'],
      )
      loss = optax.softmax_cross_entropy_with_integer_labels(
          logits.astype(jnp.float32), labels
      ).mean()
      return loss, updates['batch_stats']

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params
    )
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  def predict(variables, images):
    return model.apply(variables, images, train=False)

  variants = []
  if 'train' in kinds:
    cell = {
        'args': (
            variables['params'],
            variables['batch_stats'],
            tx.init(variables['params']),
        )
    }

    def run_train(n: int, cell=cell):
      out = None
      for _ in range(n):
        out = cell['fn'](*cell['args'], images, labels)
        cell['args'] = out[:3]
      jax.block_until_ready(out)

    variants.append(
        _compiled_variant(
            label,
            'train',
            batch,
            jax.jit(train_step),
            (*cell['args'], images, labels),
            run_train,
            flops['train'],
            keep_hlo,
            USER,
            cell,
        )
    )
  if 'infer' in kinds:
    cell = {}

    def run_infer(n: int, cell=cell):
      jax.block_until_ready([cell['fn'](variables, images) for _ in range(n)])

    variants.append(
        _compiled_variant(
            label,
            'infer',
            batch,
            jax.jit(predict),
            (variables, images),
            run_infer,
            flops['infer'],
            keep_hlo,
            USER,
            cell,
        )
    )
  return variants


def variants_for(
    paths: Sequence[str],
    model_name: str,
    batch: int,
    image_size: int,
    dtype,
    se: bool,
    kinds: Sequence[str],
    **kw,
) -> List[Variant]:
  """The variants of each path in `paths` (LOOP, USER), in that order."""
  builders = {LOOP: loop_step_variants, USER: user_step_variants}
  out = []
  for path in paths:
    out += builders[path](
        model_name, batch, image_size, dtype, se=se, kinds=kinds, **kw
    )
  return out
