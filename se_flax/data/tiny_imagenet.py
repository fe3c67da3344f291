"""A tiny ImageNet, in ImageNet's own archive format, for tests and quickstart.

`make_tiny_imagenet(root)` writes `ILSVRC2012_img_train.tar` (one inner tar
of JPEGs per synset, named like n01440764.tar) and `ILSVRC2012_img_val.tar`
(`ILSVRC2012_val_%08d.JPEG` files) for the first K synsets of TFDS's label
list, then builds `imagenet2012` from them with TFDS's real builder, so the
production pipeline runs on it unchanged (1000-way labels included).

Validation labels: TFDS labels the val archive positionally, zipping
`sorted(tar.getnames())` with its `validation_labels.txt` (the official
ground truth, line n-1 for ILSVRC2012_val_n). The K classes' images are
scattered through that list, so each chosen image keeps its official number
and label, and every skipped number up to the last chosen one is stood in for
by an empty directory entry of the same name: it keeps the positions aligned,
and TFDS's archive reader skips directories. So the labels TFDS assigns are
exactly the ones drawn.

Images are learnable: a class-coloured background with class-oriented
stripes, random brightness, phase and aspect ratio, plus pixel noise; a small
CNN separates 10 classes in a few hundred steps at 32-64 px. With
`image_size=433, noise=16` the JPEGs have ImageNet's typical size and bytes
(~500x375, ~110 kB at quality 90).
"""

import io
import json
import math
import os
import tarfile
from typing import List, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from se_flax.data import prepare as prepare_lib
from se_flax.data import tf_setup

_LABELS = 'datasets/imagenet2012/labels.txt'
_VAL_LABELS = 'datasets/imagenet2012/validation_labels.txt'
_PARAMS_FILE = 'tiny_imagenet.json'
_GOLDEN = (math.sqrt(5) - 1) / 2


def _tfds_lines(relpath: str) -> List[str]:
  return tfds.core.tfds_path(relpath).read_text().split()


def synsets() -> List[str]:
  """TFDS's 1000 ImageNet synsets in label order (n01440764 is label 0)."""
  return _tfds_lines(_LABELS)


def validation_labels() -> List[str]:
  """Synset of ILSVRC2012_val_{n}.JPEG at index n - 1 (50,000 entries)."""
  return _tfds_lines(_VAL_LABELS)


def class_image(
    rng: np.random.Generator,
    label: int,
    num_classes: int,
    height: int,
    width: int,
    noise: float,
) -> np.ndarray:
  """Draws one image of class `label`: uint8 [height, width, 3] RGB."""
  hue = label / num_classes
  # Hue wheel in RGB, with a random brightness per image.
  base = 0.5 + 0.4 * np.cos(2 * np.pi * (hue - np.array([0, 1, 2]) / 3))
  base = 255 * base * rng.uniform(0.7, 1.0)
  angle = np.pi * ((label * _GOLDEN) % 1.0)
  cycles = 3 + 2 * (label % 3)  # stripes across the shorter side
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  along = (xx * np.cos(angle) + yy * np.sin(angle)) / min(height, width)
  stripes = np.sin(2 * np.pi * cycles * along + rng.uniform(0, 2 * np.pi))
  image = base * (0.75 + 0.25 * stripes[..., None])
  image += rng.normal(0, noise, image.shape)
  return np.clip(image, 0, 255).astype(np.uint8)


def _jpeg(image: np.ndarray, quality: int) -> bytes:
  return tf.io.encode_jpeg(image, quality=quality).numpy()


def _random_shape(rng: np.random.Generator, size: int) -> Tuple[int, int]:
  ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
  return round(size / math.sqrt(ratio)), round(size * math.sqrt(ratio))


def corrupt_bytes(jpeg: bytes) -> bytes:
  """An undecodable JPEG: valid header, body cut short (a failed copy)."""
  return jpeg[: max(len(jpeg) // 3, 200)]


def _add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def _val_numbers(
    wanted: Sequence[str], per_class: int
) -> List[Tuple[int, str]]:
  """(n, synset) of the first `per_class` val images of each wanted synset."""
  left = {s: per_class for s in wanted}
  chosen = []
  for n, synset in enumerate(validation_labels(), start=1):
    if left.get(synset, 0) > 0:
      left[synset] -= 1
      chosen.append((n, synset))
      if not any(left.values()):
        return chosen
  raise ValueError(f'val_per_class={per_class} exceeds the 50 per class.')


def write_archives(
    manual_dir: str,
    *,
    num_classes: int,
    train_per_class: int,
    val_per_class: int,
    image_size: int,
    seed: int,
    noise: float = 12.0,
    quality: int = 90,
    num_corrupt: int = 0,
) -> None:
  """Writes the two ImageNet archives into `manual_dir`.

  Args:
    manual_dir: output directory (created).
    num_classes: K; the first K synsets of TFDS's list.
    train_per_class / val_per_class: images per class and split.
    image_size: geometric-mean side; aspect ratios vary in [3/4, 4/3].
    seed: the archives are a function of all arguments.
    noise: pixel-noise std, 0..255 units (sets the JPEG size).
    quality: JPEG quality.
    num_corrupt: images per split (of class 0) replaced by undecodable
      bytes, to exercise skip-and-count.
  """
  tf_setup.hide_accelerators_from_tf()  # before the first (JPEG) op
  os.makedirs(manual_dir, exist_ok=True)
  wanted = synsets()[:num_classes]
  rng = np.random.default_rng(seed)

  def draw(label: int, corrupt: bool) -> bytes:
    h, w = _random_shape(rng, image_size)
    data = _jpeg(class_image(rng, label, num_classes, h, w, noise), quality)
    return corrupt_bytes(data) if corrupt else data

  train_path = os.path.join(manual_dir, prepare_lib.TRAIN_TAR)
  with tarfile.open(train_path, 'w') as outer:
    for label, synset in enumerate(wanted):
      inner_bytes = io.BytesIO()
      with tarfile.open(fileobj=inner_bytes, mode='w') as inner:
        for i in range(train_per_class):
          corrupt = label == 0 and i < num_corrupt
          _add_file(inner, f'{synset}_{i + 1}.JPEG', draw(label, corrupt))
      _add_file(outer, f'{synset}.tar', inner_bytes.getvalue())

  chosen = dict(_val_numbers(wanted, val_per_class))
  label_of = {s: i for i, s in enumerate(wanted)}
  corrupt_left = num_corrupt
  val_path = os.path.join(manual_dir, prepare_lib.VAL_TAR)
  with tarfile.open(val_path, 'w') as tar:
    for n in range(1, max(chosen) + 1):
      name = f'ILSVRC2012_val_{n:08d}.JPEG'
      if n not in chosen:
        gap = tarfile.TarInfo(name)
        gap.type = tarfile.DIRTYPE
        tar.addfile(gap)
        continue
      label = label_of[chosen[n]]
      corrupt = label == 0 and corrupt_left > 0
      corrupt_left -= corrupt
      _add_file(tar, name, draw(label, corrupt))


def make_tiny_imagenet(
    root_dir: str,
    *,
    num_classes: int = 10,
    train_per_class: int = 30,
    val_per_class: int = 10,
    image_size: int = 96,
    seed: int = 0,
    noise: float = 12.0,
    num_corrupt: int = 0,
    num_shards: int = 2,
) -> Tuple[str, str]:
  """Writes the archives and prepares `imagenet2012` from them with TFDS.

  Reuses a copy already prepared in `root_dir` with the same arguments.

  Args:
    root_dir: working directory; gets `manual/` and `tfds/`.
    num_classes: K, at most 1000; labels are 0..K-1 of the 1000.
    train_per_class: train images per class.
    val_per_class: val images per class, at most 50.
    image_size: geometric-mean image side, pixels.
    seed: seed of the drawing.
    noise: pixel-noise std (0..255 units).
    num_corrupt: undecodable images per split (see `write_archives`).
    num_shards: record files per split, so multi-file reading is exercised.

  Returns:
    (data_dir, manual_dir), e.g. for `config.data.data_dir`.

  Raises:
    ValueError: root_dir holds a copy made with other arguments.
  """
  params = dict(
      num_classes=num_classes,
      train_per_class=train_per_class,
      val_per_class=val_per_class,
      image_size=image_size,
      seed=seed,
      noise=noise,
      num_corrupt=num_corrupt,
      num_shards=num_shards,
  )
  data_dir = os.path.join(root_dir, 'tfds')
  manual_dir = os.path.join(root_dir, 'manual')
  params_path = os.path.join(root_dir, _PARAMS_FILE)
  if os.path.exists(params_path):
    with open(params_path) as f:
      previous = json.load(f)
    if previous != params:
      raise ValueError(
          f'{root_dir} holds a tiny ImageNet made with {previous}, not '
          f'{params}; use another directory.'
      )
  else:
    os.makedirs(root_dir, exist_ok=True)
    write_archives(
        manual_dir,
        **{k: v for k, v in params.items() if k != 'num_shards'},
    )
    with open(params_path, 'w') as f:
      json.dump(params, f)
  prepare_lib.prepare(
      prepare_lib.IMAGENET,
      data_dir=data_dir,
      manual_dir=manual_dir,
      num_shards=num_shards,
  )
  return data_dir, manual_dir
