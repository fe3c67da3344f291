"""`train_and_evaluate`: the training loop, readable top to bottom.

Setup (config check, mesh, data, model, state, checkpoint restore) is split
into small functions; the loop itself only steps, logs, evaluates, saves.
"""

import dataclasses
import functools
import json
import math
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from se_flax import layers, runtime
from se_flax.train import checkpoint, finetune, mixup, multihost, nonfinite
from se_flax.train import object_store_lock, optim, paths
from se_flax.train import preemption as preemption_lib
from se_flax.train import resume, run_record, sharding, steps, workdir_lock
from se_flax.train import writers
from se_flax.train.config import build_model, with_absolute_paths
from se_flax.train.validation import validate_config
from se_flax.train.inputs import Inputs, create_inputs
from se_flax.train.state import TrainState


@dataclasses.dataclass
class TrainResult:
  """What `train_and_evaluate` returns, for notebooks and tests."""

  state: TrainState
  train_metrics: dict  # The last logged window.
  eval_metrics: dict  # The last evaluation ({} if none ran).
  preempted: bool  # Stopped by SIGTERM or Ctrl-C, state saved.
  stop_signal: Optional[str] = None  # 'SIGTERM' | 'SIGINT' when preempted.


def _write_config(config, workdir: str) -> None:
  if jax.process_index() == 0:
    paths.write_atomic(
        paths.workdir_path(workdir) / 'config.json',
        config.to_json_best_effort(indent=2, sort_keys=True),
    )


def _write_label_names(inputs: Inputs, workdir: str) -> None:
  """`label_names.json`: the class names, index = class id (if known)."""
  names = getattr(inputs, 'label_names', None)
  if names is not None and jax.process_index() == 0:
    paths.write_atomic(
        paths.workdir_path(workdir) / checkpoint.LABEL_NAMES,
        json.dumps(list(names), indent=1),
    )


def _init_fn(config, model, tx, image_size: int):
  """`init(rng, pretrained=None) -> TrainState`; `pretrained` variables
  are merged into the fresh ones (`finetune.merge_variables`)."""

  def init(rng, pretrained=None):
    params_rng, state_rng = jax.random.split(rng)
    x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    variables = model.init(params_rng, x, train=False)
    if pretrained is not None:
      variables, _ = finetune.merge_variables(
          variables, pretrained, allow_mismatch=config.init_allow_mismatch
      )
    return TrainState.create(
        variables, tx, state_rng, use_ema=config.ema_decay > 0
    )

  return init


def create_state(
    config, model, tx, image_size: int, mesh, pretrained=None
) -> TrainState:
  """Initialises the replicated state directly on the devices.

  `pretrained`: host (numpy) variables to start from (fine-tuning); the
  leaves that fit replace the fresh ones, and the EMA starts from them.
  """
  init = jax.jit(
      _init_fn(config, model, tx, image_size),
      out_shardings=sharding.replicated(mesh),
  )
  rng = jax.random.PRNGKey(config.seed)
  if pretrained is None:
    return init(rng)
  return init(rng, _replicate(pretrained, mesh))


def _replicate(tree, mesh):
  """Host arrays, equal on every process, as replicated global arrays."""
  replicated = sharding.replicated(mesh)
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_callback(
          np.shape(x), replicated, lambda index: np.asarray(x)[index]
      ),
      tree,
  )


def abstract_state(config, model, tx, image_size: int, mesh) -> TrainState:
  """Shapes, dtypes and (replicated) shardings of the state; no compute."""
  shapes = jax.eval_shape(
      _init_fn(config, model, tx, image_size), jax.random.PRNGKey(config.seed)
  )
  replicated = sharding.replicated(mesh)
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      shapes,
  )


def jit_steps(
    config, model, tx, schedule, mesh, compiler_options: Any = 'default'
):
  """`(train_fn, eval_fn)`: the jitted steps over `mesh`.

  `train_fn(state, batch) -> (state, metrics)` donates the state;
  `eval_fn(variables, batch) -> metric sums`. Both take the batch
  sharded on 'data' and everything else replicated. `compiler_options`:
  'default' is `runtime.compiler_options()`, None XLA's defaults, or a dict.
  """
  if compiler_options == 'default':
    compiler_options = runtime.compiler_options()
  replicated = sharding.replicated(mesh)
  batch_sharding = sharding.batch_sharding(mesh)
  dtype = jnp.dtype(config.model.dtype)
  train_fn = jax.jit(
      functools.partial(
          steps.train_step,
          model=model,
          tx=tx,
          schedule=schedule,
          label_smoothing=config.label_smoothing,
          loss=config.loss,
          bce_target_threshold=config.bce_target_threshold,
          mixup=mixup.from_config(config, model.num_classes),
          mixup_groups=mesh.devices.size,
          ema_decay=config.ema_decay,
          bn_groups=config.model.bn_groups,
          freeze_bn_stats=config.freeze_bn_stats,
          dtype=dtype,
      ),
      in_shardings=(replicated, batch_sharding),
      out_shardings=(replicated, replicated),
      donate_argnums=0,
      compiler_options=compiler_options,
  )
  eval_fn = jax.jit(
      functools.partial(steps.eval_step, model=model, dtype=dtype),
      in_shardings=(replicated, batch_sharding),
      out_shardings=replicated,
      compiler_options=compiler_options,
  )
  return train_fn, eval_fn


def _steps_per_epoch(config, inputs: Inputs) -> int:
  return max(1, inputs.num_train_examples // config.batch_size)


def _num_train_steps(config, steps_per_epoch: int) -> int:
  if config.num_train_steps > 0:
    return config.num_train_steps
  return int(math.ceil(config.num_epochs * steps_per_epoch))


def _meta(config, step: int, run: dict) -> dict:
  # The data position is a function of (seed, step, global batch).
  return {
      'step': step,
      'seed': config.seed,
      'batch_size': config.batch_size,
      'examples_seen': step * config.batch_size,
      'model': config.model.name,
      'run': run,
      'config': json.loads(config.to_json_best_effort()),
  }


def evaluate(
    eval_fn, state: TrainState, inputs: Inputs, batch_sharding, ema: bool
) -> dict:
  """Loss, top-1 and top-5 over every example of the eval split once."""
  sums = None
  for batch in sharding.prefetch_to_mesh(inputs.eval(), batch_sharding):
    out = eval_fn(state.variables(ema), batch)
    sums = out if sums is None else jax.tree_util.tree_map(jnp.add, sums, out)
  sums = jax.device_get(sums)
  count = int(sums['count'])
  if count != inputs.num_eval_examples:
    logging.warning(
        'Evaluated %d examples of %d (undecodable ones are ' 'skipped)',
        count,
        inputs.num_eval_examples,
    )
  return {
      'loss': float(sums['loss_sum']) / max(count, 1),
      'top1': float(sums['top1_count']) / max(count, 1),
      'top5': float(sums['top5_count']) / max(count, 1),
      'num_examples': count,
  }


def _summarise(
    fetched: list,
    timed_steps: int,
    seconds: float,
    data_seconds: float,
    batch_size: int,
) -> dict:
  """Means over a window of per-step metrics (on the host), plus throughput.

  `seconds` must be measured after the window's results were fetched, so
  the steps have finished; throughput covers the `timed_steps` after
  compilation only.
  """
  summary = {
      k: float(np.mean([m[k] for m in fetched]))
      for k in fetched[0]
      if k != 'finite'
  }
  summary['nonfinite_steps'] = int(sum(not m['finite'] for m in fetched))
  if timed_steps:
    images_per_sec = timed_steps * batch_size / seconds
    summary['images_per_sec'] = images_per_sec
    summary['images_per_sec_per_device'] = images_per_sec / jax.device_count()
    summary['step_time_ms'] = 1e3 * seconds / timed_steps
    summary['data_wait_fraction'] = data_seconds / seconds
  return summary


def _device_memory() -> dict:
  """GiB in use and at peak on the first local device, where JAX tells."""
  stats = jax.local_devices()[0].memory_stats() or {}
  return {
      name: stats[key] / 2**30
      for name, key in (
          ('device_memory_gib', 'bytes_in_use'),
          ('device_memory_peak_gib', 'peak_bytes_in_use'),
      )
      if key in stats
  }


def _data_counters(train_batches) -> dict:
  """Counts of bad input the train iterator met (where it keeps them)."""
  out = {}
  for attr, name in (
      ('num_skipped', 'undecodable_images'),
      ('num_corrupt_records', 'corrupt_records'),
  ):
    if hasattr(train_batches, attr):
      out[name] = int(getattr(train_batches, attr))
  return out


def _lock_workdir(workdir: str):
  """One lock per run, held by process 0; every process learns the outcome.

  Object-store workdirs (gs://, s3://) get an `ObjectStoreLock`
  (conditional writes stand in for an exclusive create).
  """
  lock, error = None, None
  if jax.process_index() == 0:
    try:  # Any failure is broadcast, or the other processes would wait.
      lock = (
          object_store_lock.ObjectStoreLock(workdir)
          if paths.is_url(workdir)
          else workdir_lock.WorkdirLock(workdir)
      )
      lock.acquire()
    except (workdir_lock.WorkdirInUseError, ValueError, OSError) as e:
      lock, error = None, e
  if jax.process_count() > 1:
    ok = multihost.broadcast_ints([error is None])[0]
    if not ok and error is None:
      error = workdir_lock.WorkdirInUseError(
          f'{workdir}/{workdir_lock.LOCK_NAME}',
          None,
          0.0,
          message=f'Process 0 could not lock {workdir} (process 0 says '
          'why: another trainer uses it, or the workdir is unusable)',
      )
  if error is not None:
    raise error
  return lock


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str
) -> TrainResult:
  """Trains and evaluates; resumes from the newest intact checkpoint.

  Args:
    config: a `base_config()`-shaped ConfigDict (see configs/).
    workdir: checkpoints, TensorBoard summaries and config.json go here.

  Returns:
    A `TrainResult` with the final state and the last metrics.

  Raises:
    workdir_lock.WorkdirInUseError: another live trainer holds `workdir`.
    resume.ResumeMismatchError: the config changes the stored run.
    resume.NoIntactCheckpointError: checkpoints exist, none is usable.
    nonfinite.NonFiniteStepError: a non-finite step under 'stop'.
  """
  _configure_runtime()
  multihost.initialize_distributed(config)
  validate_config(config)
  config = with_absolute_paths(config)
  if config.compilation_cache_dir:
    # Process-wide by nature (JAX has one cache); set from the run config.
    jax.config.update('jax_compilation_cache_dir', config.compilation_cache_dir)
  lock = _lock_workdir(workdir)
  try:
    # From setup to the last save on disk: a signal during setup stops the
    # run before it compiles; one during the final save cannot cut it.
    # The layers read their rules when the steps are traced, inside.
    with (
        preemption_lib.PreemptionWatcher() as preemption,
        layers.layer_rules(config.layer_rules),
    ):
      return _train(config, workdir, preemption)
  finally:
    if lock is not None:
      lock.release()


def _configure_runtime() -> None:
  """What train.py does first, done here when nothing did it yet."""
  if runtime.current() is not None:
    return
  if not runtime.backends_started():
    logging.info('%s', runtime.configure().describe())
  elif jax.default_backend() == 'cpu':
    logging.warning(
        'se_flax.configure_runtime() was not called before JAX '
        "started: CPU steps run with glibc's default malloc, "
        'which can make them 1.3x slower (README, "In a '
        'notebook")'
    )


def _train(config, workdir: str, preemption) -> TrainResult:
  mesh = sharding.create_mesh()
  batch_sharding = sharding.batch_sharding(mesh)

  inputs = create_inputs(config)
  steps_per_epoch = _steps_per_epoch(config, inputs)
  num_steps = _num_train_steps(config, steps_per_epoch)
  eval_every = max(1, int(round(config.eval_every_epochs * steps_per_epoch)))
  model = build_model(config, inputs.num_classes)
  schedule = optim.create_schedule(config, steps_per_epoch)
  tx = optim.create_optimizer(config, schedule)
  run = resume.fingerprint(
      config,
      num_classes=inputs.num_classes,
      train_steps=num_steps,
      process_count=jax.process_count(),
      num_train_examples=inputs.num_train_examples,
      label_names=inputs.label_names,
  )

  ckpt = checkpoint.Checkpoints(
      workdir, keep=config.keep_checkpoints, async_save=config.async_checkpoints
  )
  writer = None
  try:
    created = []

    def create():
      created.append(True)
      pretrained = None
      if config.init_from:
        pretrained = finetune.load_init_from(
            config, model, inputs.image_size, inputs.num_classes
        )
      return create_state(
          config, model, tx, inputs.image_size, mesh, pretrained
      )

    run_record.check_processes_agree(run)
    run_record.check_earlier_attempt(config, ckpt, run)
    state = resume.restore_or_create(
        config,
        ckpt,
        abstract_state(config, model, tx, inputs.image_size, mesh),
        create,
        run,
    )
    start_step = int(state.step)
    if config.init_from and not created:
      logging.info(
          'init_from %s ignored: resuming from step %d of this workdir',
          config.init_from,
          start_step,
      )
    _write_config(config, workdir)
    _write_label_names(inputs, workdir)
    _log_param_groups(config, state.params)
    train_fn, eval_fn = jit_steps(config, model, tx, schedule, mesh)
    writer = writers.create_writer(workdir, jax.process_index() == 0)
    if start_step == 0:
      writer.write_hparams(_flat_hparams(config))
    _log_run(config, state, inputs, num_steps, steps_per_epoch, workdir)
    # `(step, state) -> eval summary`, the same at every evaluation.
    evaluate_and_keep_best = functools.partial(
        _evaluate_and_keep_best,
        eval_fn=eval_fn,
        inputs=inputs,
        batch_sharding=batch_sharding,
        ckpt=ckpt,
        writer=writer,
        run=run,
        config=config,
    )
    if start_step >= num_steps:
      return _finish_or_report_done(
          state, evaluate_and_keep_best, ckpt, workdir
      )
    run_record.clear_final(workdir)
    result = _loop(
        config,
        state,
        start_step,
        num_steps,
        eval_every,
        train_fn,
        evaluate_and_keep_best,
        inputs,
        batch_sharding,
        ckpt,
        writer,
        run,
        workdir,
        preemption,
    )
    ckpt.wait()
    if result.preempted:
      logging.warning(
          '%s: step %d is saved; exiting',
          result.stop_signal,
          int(result.state.step),
      )
    else:  # Evaluated and saved, all of it on disk.
      run_record.write_final(workdir, num_steps, result.eval_metrics)
    return result
  finally:
    _close(ckpt, writer)


def _log_run(config, state, inputs, num_steps, steps_per_epoch, workdir):
  """Two lines: the model and data, then the steps and where they run."""
  num_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
  data = config.data.source + (
      f' {config.data.name}' if config.data.source == 'tfds' else ''
  )
  logging.info(
      '%s, %.2fM params, %d classes; data: %s, %d training '
      'examples at %d px',
      config.model.name,
      num_params / 1e6,
      inputs.num_classes,
      data,
      inputs.num_train_examples,
      inputs.image_size,
  )
  logging.info(
      '%d steps (%d per epoch) from step %d, global batch %d on '
      '%d devices; config in %s',
      num_steps,
      steps_per_epoch,
      int(state.step),
      config.batch_size,
      jax.device_count(),
      paths.workdir_path(workdir) / 'config.json',
  )


def _finish_or_report_done(
    state, evaluate_and_keep_best, ckpt, workdir
) -> TrainResult:
  """A restart at the last step: redoes the final evaluation and best save
  if they did not complete (killed, disk full), else says there is nothing
  to do."""
  step = int(state.step)
  final = run_record.read_final(workdir)
  if final is not None and final['step'] == step:
    logging.info(
        'Nothing to do: the run finished at step %d (final evaluation and '
        'saves in %s)',
        step,
        paths.workdir_path(workdir) / run_record.FINAL,
    )
    return TrainResult(state, {}, final.get('eval', {}), False)
  logging.warning(
      'Step %d, the last, is restored but its final evaluation or best save '
      'did not complete: doing them now',
      step,
  )
  eval_summary = evaluate_and_keep_best(step, state)
  ckpt.wait()
  run_record.write_final(workdir, step, eval_summary)
  return TrainResult(state, {}, eval_summary, False)


def _evaluate_and_keep_best(
    step, state, eval_fn, inputs, batch_sharding, ckpt, writer, run, config
) -> dict:
  """Evaluates `state`, logs it, and keeps it as best if its top-1 beats
  the kept one (not when the eval loss is not finite)."""
  eval_summary = _evaluate_all(eval_fn, state, inputs, batch_sharding, config)
  writer.write_scalars(step, eval_summary)
  if not np.isfinite(eval_summary['eval/loss']):
    logging.warning(
        'Step %d: eval loss is %s; not a best checkpoint',
        step,
        eval_summary['eval/loss'],
    )
  elif ckpt.save_best(
      step, state, _meta(config, step, run), eval_summary['eval/top1']
  ):
    logging.info(
        'New best top-1 %.4f: saved %s',
        eval_summary['eval/top1'],
        ckpt.step_dir(step, best=True),
    )
  return eval_summary


def _log_param_groups(config, params) -> None:
  """What the fine-tuning options make of the parameters (when used)."""
  if config.backbone_lr_multiplier == 1.0 and not config.freeze_stages:
    return
  groups = optim.param_groups(params, config.freeze_stages)
  sizes = {'head': 0, 'backbone': 0, 'frozen': 0}
  for group, leaf in zip(
      jax.tree_util.tree_leaves(groups), jax.tree_util.tree_leaves(params)
  ):
    sizes[group] += leaf.size
  frozen = sorted(
      k for k, g in groups.items() if 'frozen' in jax.tree_util.tree_leaves(g)
  )
  logging.info(
      'Parameter groups: head (fc) %s parameters at the scheduled rate, '
      'backbone %s at x%g, frozen %s (%s)',
      f'{sizes["head"]:,}',
      f'{sizes["backbone"]:,}',
      config.backbone_lr_multiplier,
      f'{sizes["frozen"]:,}',
      ', '.join(frozen) or 'none',
  )


def _close(ckpt, writer) -> None:
  """Closes without letting a second error hide the first one."""
  for close in (
      ckpt.close,
      getattr(writer, 'flush', None),
      getattr(writer, 'close', None),
  ):
    if close is None:
      continue
    try:
      close()
    except Exception as e:  # pylint: disable=broad-except
      logging.error('While shutting down: %s', e)


def _loop(
    config,
    state,
    start_step,
    num_steps,
    eval_every,
    train_fn,
    evaluate_and_keep_best,
    inputs,
    batch_sharding,
    ckpt,
    writer,
    run,
    workdir,
    preemption,
) -> TrainResult:
  progress = writers.Progress(num_steps, writer)
  train_batches = inputs.train(start_step)
  batches = sharding.prefetch_to_mesh(
      train_batches, batch_sharding, config.prefetch_batches
  )
  finite_watch = nonfinite.FiniteWatch(
      config.nonfinite == 'stop', nonfinite.MAX_LAG, start_step or None, workdir
  )
  train_summary, eval_summary, preempted = {}, {}, False
  window, timed_steps, data_seconds = [], 0, 0.0
  window_start = time.perf_counter()

  if multihost.any_process(preemption.requested):
    # Signalled during setup: the restored state is on disk already.
    return TrainResult(state, {}, {}, True, preemption.signal_name)
  for step in range(start_step, num_steps):
    t = time.perf_counter()
    batch = next(batches)
    data_seconds += time.perf_counter() - t
    state, metrics = train_fn(state, batch)
    window.append(metrics)
    finite_watch.push(step + 1, metrics['finite'])
    if step == start_step:
      jax.block_until_ready(state)
      writer.write_scalars(
          step + 1, {'compile_seconds': time.perf_counter() - window_start}
      )
      timed_steps, data_seconds = 0, 0.0
      window_start = time.perf_counter()
      progress.start(step + 1)
    else:
      timed_steps += 1
    done = step + 1
    if done % config.log_every_steps == 0 or done == num_steps:
      fetched = jax.device_get(window)  # Waits for the window's steps.
      train_summary = _summarise(
          fetched,
          timed_steps,
          time.perf_counter() - window_start,
          data_seconds,
          config.batch_size,
      )
      train_summary['skipped_steps'] = int(state.skipped_steps)
      if train_summary['nonfinite_steps'] == len(fetched):
        logging.warning(
            'Every step of the last %d was non-finite and '
            'skipped (%d in all): the run is not training',
            len(fetched),
            train_summary['skipped_steps'],
        )
      train_summary.update(_data_counters(train_batches))
      train_summary.update(_device_memory())
      writer.write_scalars(
          done, {f'train/{k}': v for k, v in train_summary.items()}
      )
      progress.update(done)
      window, timed_steps, data_seconds = [], 0, 0.0
      window_start = time.perf_counter()
    # One process: the flag is local, read every step. Several: agreeing
    # is a cross-host round trip, so only every N steps (and at the end).
    if (
        jax.process_count() == 1
        or done % config.preemption_check_every_steps == 0
    ):
      preempted = multihost.any_process(preemption.requested)
    evaluating = done % eval_every == 0 or done == num_steps
    saving = (
        done % config.checkpoint_every_steps == 0
        or done == num_steps
        or preempted
    )
    if evaluating or saving:
      finite_watch.drain()  # Nothing after a non-finite step is saved.
      # Eval and save time is not step time: start its clock once the
      # dispatched steps are done.
      jax.block_until_ready(state)
      pause_start = time.perf_counter()
    if saving:  # Before the best: on a filling disk, resuming matters.
      ckpt.save(done, state, _meta(config, done, run))
      finite_watch.last_saved = done
      logging.info('checkpoint: step %d to %s', done, ckpt.step_dir(done))
    if evaluating:
      eval_summary = evaluate_and_keep_best(done, state)
    if evaluating or saving:
      window_start += time.perf_counter() - pause_start
    if preempted:
      break
  return TrainResult(
      state,
      train_summary,
      eval_summary,
      preempted,
      preemption.signal_name if preempted else None,
  )


def _evaluate_all(eval_fn, state, inputs, batch_sharding, config) -> dict:
  summary = {
      f'eval/{k}': v
      for k, v in evaluate(
          eval_fn, state, inputs, batch_sharding, ema=False
      ).items()
  }
  if config.ema_decay > 0:
    summary.update(
        {
            f'eval_ema/{k}': v
            for k, v in evaluate(
                eval_fn, state, inputs, batch_sharding, ema=True
            ).items()
        }
    )
  return summary  # The writer logs it.


def _flat_hparams(config) -> dict[str, Any]:
  flat = {}

  def walk(prefix, node):
    for k, v in node.items():
      if isinstance(v, ml_collections.ConfigDict):
        walk(f'{prefix}{k}.', v)
      elif isinstance(v, (int, float, str, bool)):
        flat[prefix + k] = v

  walk('', config)
  return flat
