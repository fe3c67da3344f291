"""Chooses the input source named by `config.data.source`.

'tfds' and 'tiny_imagenet' use the tf.data pipeline, 'folder' the image
folder source (`data/folder.py`; TensorFlow imported only then);
'synthetic' needs no TensorFlow. All sources yield the same per-process
batches: `image` uint8 NHWC, `label` int32, plus `mask` for eval.
"""

import dataclasses
from typing import Callable, Iterable, Iterator, Optional, Tuple

import jax
import ml_collections

from se_flax.data import synthetic


@dataclasses.dataclass
class Inputs:
  """What the loop needs from a data source.

  `train(start_step)` gives the batches from global step `start_step` on;
  `eval()` one padded pass over the eval split. `label_names[i]` names
  label i where the source knows names (TFDS ClassLabel names, the folder
  source's sorted class folders), else None.
  """

  num_train_examples: int
  num_eval_examples: int
  num_classes: int
  image_size: int
  train: Callable[[int], Iterator[dict]]
  eval: Callable[[], Iterable[dict]]
  label_names: Optional[Tuple[str, ...]] = None


SOURCES = ('tfds', 'synthetic', 'tiny_imagenet', 'folder')


def create_inputs(config: ml_collections.ConfigDict) -> Inputs:
  data = config.data
  eval_batch = config.eval_batch_size or config.batch_size
  process = dict(
      process_index=jax.process_index(), process_count=jax.process_count()
  )
  if data.source == 'synthetic':
    return _synthetic_inputs(config, eval_batch, **process)
  if data.source not in SOURCES:
    raise ValueError(
        f'config.data.source must be one of {SOURCES}, got {data.source!r}'
    )
  if data.source == 'folder':
    from se_flax.data import folder  # TensorFlow from here on.

    scan = folder.scan_folder(data.folder_root)  # Bad folders raise here.
    return _streamed_inputs(
        config, data, folder, scan.info(), eval_batch, process, scan=scan
    )
  from se_flax.data import pipeline  # TensorFlow from here on.

  if data.source == 'tiny_imagenet':
    data = _with_tiny_imagenet(data)
  return _streamed_inputs(
      config, data, pipeline, pipeline.dataset_info(data), eval_batch, process
  )


def _streamed_inputs(
    config, data, source, info, eval_batch, process, **source_kwargs
):
  """Inputs of a tf.data source module (`pipeline` or `folder`).

  Both modules offer create_train_iterator / create_eval_iterator with the
  same arguments; source_kwargs are extra ones (the folder's scan).
  """
  eval_iterable = source.create_eval_iterator(
      data, global_batch_size=eval_batch, **process, **source_kwargs
  )
  return Inputs(
      num_train_examples=info.num_train_examples,
      num_eval_examples=info.num_eval_examples,
      num_classes=info.num_classes,
      image_size=data.image_size,
      train=lambda start_step: source.create_train_iterator(
          data,
          global_batch_size=config.batch_size,
          seed=config.seed,
          start_step=start_step,
          **process,
          **source_kwargs,
      ),
      eval=lambda: eval_iterable,
      label_names=info.label_names,
  )


def _with_tiny_imagenet(data: ml_collections.ConfigDict):
  """Makes (or reuses) the tiny ImageNet and points the config at it."""
  from se_flax.data.tiny_imagenet import make_tiny_imagenet

  tiny = data.tiny
  make = lambda: make_tiny_imagenet(
      tiny.root,
      num_classes=tiny.num_classes,
      train_per_class=tiny.train_per_class,
      val_per_class=tiny.val_per_class,
      image_size=tiny.image_size,
  )
  if jax.process_index() == 0:
    data_dir, manual_dir = make()
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices('tiny_imagenet_ready')
    data_dir, manual_dir = make()  # Reuses the copy process 0 made.
  data = ml_collections.ConfigDict(data.to_dict())
  data.data_dir, data.manual_dir = data_dir, manual_dir
  return data


def _synthetic_inputs(config, eval_batch, *, process_index, process_count):
  """Random pixels; the global batches depend on (seed, step) alone."""
  data = config.data
  common = dict(
      image_size=data.image_size,
      num_classes=data.synthetic_num_classes,
      seed=config.seed,
      process_index=process_index,
      process_count=process_count,
  )
  return Inputs(
      num_train_examples=data.synthetic_train_examples,
      num_eval_examples=data.synthetic_eval_examples,
      num_classes=data.synthetic_num_classes,
      image_size=data.image_size,
      train=lambda start_step: synthetic.create_synthetic_iterator(
          global_batch_size=config.batch_size, start_step=start_step, **common
      ),
      eval=lambda: synthetic.create_synthetic_eval(
          num_examples=data.synthetic_eval_examples,
          global_batch_size=eval_batch,
          **common,
      ),
  )
