"""Fine-tuning: the merge of pretrained variables, the parameter groups
(backbone learning rate, frozen stages), frozen BN statistics, and
`init_from` runs end to end."""

import functools
import importlib.util
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import se_flax
from se_flax.train import config as config_lib
from se_flax.train import validation
from se_flax.train import finetune, loop, optim, steps

from tests.data import helpers as data_helpers
from tests.train.helpers import ROOT, assert_trees_equal, read_metrics
from tests.train.tiny_config import tiny_config

_SIZE = 32


def _variables(classes, seed):
  """seresnet_tiny variables (numpy) for `classes` <= 10 classes, a new
  copy on every call (one compiled init: the head is sliced)."""
  variables = jax.tree_util.tree_map(np.copy, _init(seed))
  fc = variables['params']['fc']
  fc['kernel'], fc['bias'] = fc['kernel'][:, :classes], fc['bias'][:classes]
  return variables


@functools.lru_cache(maxsize=None)
def _init(seed):
  return jax.device_get(_jitted_init()(jax.random.PRNGKey(seed)))


@functools.lru_cache(maxsize=None)
def _jitted_init():
  model = config_lib.build_model(_config(), 10)
  x = jnp.zeros((1, _SIZE, _SIZE, 3), jnp.float32)
  return jax.jit(lambda rng: model.init(rng, x, train=False))


def _config(**overrides):
  c = config_lib.base_config()
  c.model.name = 'seresnet_tiny'
  c.data.image_size = _SIZE
  c.batch_size = 16
  c.learning_rate = 0.1
  c.weight_decay = 1e-4
  for k, v in overrides.items():
    c[k] = v
  return c


def _without_head(variables):
  """What load_pretrained gives for another class count: no `fc`."""
  return {
      'params': {k: v for k, v in variables['params'].items() if k != 'fc'},
      'batch_stats': dict(variables['batch_stats']),
  }


@pytest.mark.parametrize('drop_head', [True, False])
def test_merge_replaces_the_head_and_loads_everything_else(drop_head):
  source, fresh = _variables(10, seed=1), _variables(5, seed=0)
  given = _without_head(source) if drop_head else source
  merged, report = finetune.merge_variables(fresh, given)
  assert_trees_equal(merged['params']['fc'], fresh['params']['fc'])
  assert_trees_equal(_without_head(merged), _without_head(source))
  assert report.reinitialised == ('params/fc/bias', 'params/fc/kernel')
  assert report.ignored == (() if drop_head else report.reinitialised)
  flat = finetune.flatten(fresh)
  assert len(report.loaded) == len(flat) - 2
  assert 'params/stem/conv1/kernel' in report.loaded
  assert 'batch_stats/stage4_block0/bn2/var' in report.loaded
  assert 're-initialised 2 (params/fc/bias, params/fc/kernel)' in (
      report.summary('src')
  )


def test_merge_of_the_same_class_count_loads_the_head_too():
  source, fresh = _variables(5, seed=1), _variables(5, seed=0)
  merged, report = finetune.merge_variables(fresh, source)
  assert_trees_equal(merged, source)
  assert report.reinitialised == report.ignored == ()


def _reshaped(variables, module, conv):
  """A copy with `module/conv/kernel` of half its output channels."""
  out = jax.tree_util.tree_map(lambda x: x, variables)
  kernel = out['params'][module][conv]['kernel']
  out['params'][module][conv]['kernel'] = kernel[..., : kernel.shape[-1] // 2]
  return out


def test_a_mismatch_outside_the_head_is_an_error_naming_the_leaf():
  source, fresh = _variables(10, seed=1), _variables(10, seed=0)
  bad = _reshaped(source, 'stage2_block0', 'downsample_conv')
  with pytest.raises(finetune.MergeMismatchError) as info:
    finetune.merge_variables(fresh, bad)
  message = str(info.value)
  assert 'params/stage2_block0/downsample_conv/kernel' in message
  assert 'init_allow_mismatch' in message
  missing = _without_head(source)
  del missing['batch_stats']['stem']
  missing['params']['extra'] = {'kernel': np.zeros(3, np.float32)}
  with pytest.raises(finetune.MergeMismatchError) as info:
    finetune.merge_variables(_variables(5, seed=0), missing)
  message = str(info.value)
  assert 'batch_stats/stem/bn1/mean: missing from the source' in message
  assert 'params/extra/kernel: in the source, not in the network' in message


def test_allowed_mismatches_keep_the_fresh_leaves():
  source, fresh = _variables(10, seed=1), _variables(10, seed=0)
  bad = _reshaped(source, 'stage2_block0', 'downsample_conv')
  bad['params']['extra'] = {'kernel': np.zeros(3, np.float32)}
  merged, report = finetune.merge_variables(fresh, bad, allow_mismatch=True)
  name = 'params/stage2_block0/downsample_conv/kernel'
  assert name in report.reinitialised and name in report.ignored
  assert 'params/extra/kernel' in report.ignored
  assert [m[0] for m in report.mismatched] == [name]
  np.testing.assert_array_equal(
      merged['params']['stage2_block0']['downsample_conv']['kernel'],
      fresh['params']['stage2_block0']['downsample_conv']['kernel'],
  )
  np.testing.assert_array_equal(
      merged['params']['fc']['kernel'], source['params']['fc']['kernel']
  )
  assert 'extra' not in merged['params']


def _batch(seed, n=16, classes=10):
  rng = np.random.default_rng(seed)
  return {
      'image': rng.integers(0, 256, (n, _SIZE, _SIZE, 3), np.uint8),
      'label': rng.integers(0, classes, (n,), np.int32),
  }


def _changed(before, after) -> dict:
  """Top-level module -> whether any of its leaves changed (or reshaped)."""
  return {
      k: any(
          np.shape(a) != np.shape(b) or not np.array_equal(a, b)
          for a, b in zip(
              jax.tree_util.tree_leaves(before[k]),
              jax.tree_util.tree_leaves(after[k]),
          )
      )
      for k in before
  }


def _timm_file(path, variables):
  """A timm-format .safetensors of seresnet_tiny `variables`."""
  from safetensors.numpy import save_file

  save_file(se_flax.convert.to_timm(variables, 'seresnet_tiny'), path)
  return path


def test_init_from_a_file_with_frozen_stages_and_bn(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  pretrained = _variables(10, seed=1)
  source = _timm_file(str(tmp_path / 'weights.safetensors'), pretrained)
  run = str(tmp_path / 'finetune')
  config = tiny_config(
      init_from=source,
      freeze_stages=2,
      freeze_bn_stats=True,
      ema_decay=0.9,
      num_train_steps=2,
  )
  config.data.synthetic_num_classes = 5
  result = loop.train_and_evaluate(config, run)
  assert 're-initialised 2 (params/fc/bias, params/fc/kernel)' in caplog.text
  state = jax.device_get(result.state)
  assert _changed(pretrained['params'], state.params) == {
      'stem': False,
      'stage1_block0': False,
      'stage2_block0': False,
      'stage3_block0': True,
      'stage4_block0': True,
      'fc': True,  # And of another shape.
  }
  # Loaded, then frozen: the pretrained statistics, bit for bit (EMA too).
  assert_trees_equal(state.batch_stats, pretrained['batch_stats'])
  assert_trees_equal(state.ema_batch_stats, pretrained['batch_stats'])
  assert result.eval_metrics['eval/num_examples'] == 20
  caplog.clear()
  again = loop.train_and_evaluate(config, run)  # Done already: no steps.
  assert f'init_from {source} ignored: resuming from step 2' in caplog.text
  assert_trees_equal(jax.device_get(again.state), state)


def _updates(config, params, grads, num_steps=2):
  """The optimizer's updates at each of `num_steps` steps (at the same
  `params` and `grads`, so that weight decay sees equal parameters)."""
  tx = optim.create_optimizer(config, optim.create_schedule(config, 10))
  opt_state, out = tx.init(params), []
  for _ in range(num_steps):
    updates, opt_state = tx.update(grads, opt_state, params)
    out.append(updates)
  return out


def test_backbone_lr_multiplier_scales_the_backbone_updates_only():
  params = _variables(10, seed=0)['params']
  grads = jax.tree_util.tree_map(
      lambda p: np.random.default_rng(p.size)
      .normal(size=p.shape)
      .astype(p.dtype),
      params,
  )
  recipe = dict(weight_decay=1e-2, nesterov=True, momentum=0.9)
  full = _updates(_config(**recipe), params, grads)
  quarter = _updates(
      _config(backbone_lr_multiplier=0.25, **recipe), params, grads
  )
  for f, q in zip(full, quarter):
    # SGD's update is linear in the learning rate (coupled decay, momentum
    # and Nesterov included): a quarter of it on the backbone.
    assert_trees_equal(q['fc'], f['fc'])
    backbone = lambda u: {k: v for k, v in u.items() if k != 'fc'}
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, 0.25 * b, rtol=1e-6),
        backbone(q),
        backbone(f),
    )
  head_only = _updates(_config(backbone_lr_multiplier=0.0), params, grads)[0]
  after = optax.apply_updates(params, head_only)
  changed = _changed(params, after)
  assert changed.pop('fc') and not any(changed.values())


def test_frozen_bn_uses_the_running_statistics_and_keeps_dropout():
  model = config_lib.build_model(_config(), 10)
  variables = _variables(10, seed=0)
  variables['batch_stats'] = _perturbed_stats(variables['batch_stats'])
  fc = variables['params']['fc']  # Initialised to zero logits.
  fc['kernel'] = np.random.default_rng(0).normal(size=fc['kernel'].shape)
  fc['kernel'] = fc['kernel'].astype(np.float32)
  images = jnp.asarray(_batch(5)['image'], jnp.float32) / 255.0
  forward = lambda model, freeze: steps._forward_train(
      model, variables, images, jax.random.PRNGKey(0), 0, freeze
  )
  frozen, stats = forward(model, True)
  assert stats is variables['batch_stats']
  # With dropout off, the eval-mode forward.
  np.testing.assert_allclose(
      frozen, model.apply(variables, images, train=False), rtol=1e-5, atol=1e-5
  )
  assert not np.allclose(frozen, forward(model, False)[0], atol=1e-3)
  dropped, _ = forward(model.clone(drop_rate=0.5), True)
  assert not np.allclose(dropped, frozen, atol=1e-3)  # Dropout stays on.


def _perturbed_stats(batch_stats):
  """Running statistics unlike a batch's, so that which BN mode ran shows
  in the logits."""
  rng = np.random.default_rng(0)
  return {
      module: {
          bn: {
              'mean': s['mean']
              + rng.normal(0, 0.3, s['mean'].shape).astype(np.float32),
              'var': s['var']
              * rng.uniform(0.5, 2.0, s['var'].shape).astype(np.float32),
          }
          for bn, s in norms.items()
      }
      for module, norms in batch_stats.items()
  }


@pytest.mark.parametrize(
    'field,value,message',
    [
        ('backbone_lr_multiplier', -0.1, 'backbone_lr_multiplier'),
        ('freeze_stages', -1, 'freeze_stages'),
        ('freeze_stages', 5, r'freeze_stages.*stages 1\.\.4'),
        ('init_from', ' ', 'init_from'),
    ],
)
def test_finetune_misconfiguration_is_named(field, value, message):
  config = _config()
  config[field] = value
  with pytest.raises(ValueError, match=message):
    validation.validate_config(config)


def test_freeze_stages_needs_a_staged_network():
  config = _config(freeze_stages=1)
  config.model.name = 'se_vgg16_bn'
  with pytest.raises(ValueError, match='stage<k>_ modules'):
    validation.validate_config(config)


def _finetune_config(root, source, **overrides):
  fields = dict(
      init_from=source,
      learning_rate=1.0,
      backbone_lr_multiplier=0.1,
      freeze_stages=1,
      num_train_steps=8,
      eval_batch_size=8,  # 15 val images: the last batch is padded.
  )
  config = tiny_config(**{**fields, **overrides})
  config.data.source = 'folder'
  config.data.folder_root = root
  return config


def _loss_at(workdir, step):
  (loss,) = [
      r['train/loss']
      for r in read_metrics(workdir)
      if r['step'] == step and 'train/loss' in r
  ]
  return loss


@pytest.mark.slow
def test_finetune_run_learns_and_resumes_bitwise(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  source = str(tmp_path / 'pretrained')
  loop.train_and_evaluate(tiny_config(num_train_steps=2), source)  # 10 classes
  root = data_helpers.write_colour_folder(str(tmp_path / 'images'))
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')

  full = loop.train_and_evaluate(_finetune_config(root, source), straight)
  assert 're-initialised 2 (params/fc/bias, params/fc/kernel)' in caplog.text
  # Loaded, then frozen (freeze_stages=1): the stem and stage 1 are still
  # the pretrained run's, bit for bit; the 3-class head is new.
  pretrained = se_flax.load_variables(source)
  final = jax.device_get(full.state.params)
  for module in ('stem', 'stage1_block0'):
    assert_trees_equal(final[module], pretrained['params'][module])
  assert final['fc']['kernel'].shape[-1] == 3
  print('fine-tuning loss', [_loss_at(straight, s) for s in (2, 4, 6, 8)])
  assert _loss_at(straight, 8) < 0.7 * _loss_at(straight, 2)
  assert full.eval_metrics['eval/num_examples'] == 15
  with open(os.path.join(straight, 'label_names.json')) as f:
    assert json.load(f) == list(data_helpers.COLOUR_CLASSES)

  loop.train_and_evaluate(
      _finetune_config(root, source, num_train_steps=4), resumed
  )
  caplog.clear()
  again = loop.train_and_evaluate(_finetune_config(root, source), resumed)
  assert f'init_from {source} ignored: resuming from step 4' in caplog.text
  assert 'leaves; re-initialised' not in caplog.text  # Nothing merged.
  assert_trees_equal(jax.device_get(full.state), jax.device_get(again.state))
  assert full.eval_metrics == again.eval_metrics


def test_finetune_config_validates():
  spec = importlib.util.spec_from_file_location(
      'finetune', os.path.join(ROOT, 'configs', 'finetune.py')
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert 'python train.py --config configs/finetune.py' in module.__doc__
  config = module.get_config()
  config.data.folder_root = '/data/images'
  config.lock()
  validation.validate_config(config)
  assert config.init_from and config.backbone_lr_multiplier < 1
