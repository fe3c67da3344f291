"""Writes a small class-folder dataset of real photographs (no download).

    python tools/make_photo_folder.py ROOT [--train 24] [--val 8]

Classes are photographs that scikit-image ships in its wheel (brick, grass,
gravel: 512 px textures; hubble: the Hubble deep field): each class is tiles
cut at random positions and sizes (96-192 px) from one photograph, saved as
JPEG in ROOT/train/<class>/ and ROOT/val/<class>/. Train tiles come from the
left three quarters of a photograph and val tiles from the right quarter, so
no val pixel is seen in training. Needs scikit-image and Pillow (the fixture
venv, not requirements.txt).
"""

import argparse
import os

import numpy as np
from PIL import Image
from skimage import data

_PHOTOS = {
    'brick': data.brick,
    'grass': data.grass,
    'gravel': data.gravel,
    'hubble': data.hubble_deep_field,
}


def _rgb(image: np.ndarray) -> np.ndarray:
  return np.stack([image] * 3, -1) if image.ndim == 2 else image[..., :3]


def _tiles(image, count, x_range, rng):
  h, w = image.shape[:2]
  lo, hi = int(x_range[0] * w), int(x_range[1] * w)
  for _ in range(count):
    size = int(rng.integers(96, min(193, hi - lo + 1, h + 1)))
    x = int(rng.integers(lo, hi - size + 1))
    y = int(rng.integers(0, h - size + 1))
    yield image[y : y + size, x : x + size]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('root')
  parser.add_argument('--train', type=int, default=24)
  parser.add_argument('--val', type=int, default=8)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  rng = np.random.default_rng(args.seed)
  for name, load in _PHOTOS.items():
    image = _rgb(load())
    for split, count, x_range in (
        ('train', args.train, (0.0, 0.75)),
        ('val', args.val, (0.75, 1.0)),
    ):
      folder = os.path.join(args.root, split, name)
      os.makedirs(folder, exist_ok=True)
      for i, tile in enumerate(_tiles(image, count, x_range, rng)):
        Image.fromarray(tile).save(
            os.path.join(folder, f'{name}_{i:03d}.jpg'), quality=92
        )
  print(
      f'{len(_PHOTOS)} classes, {args.train}/{args.val} per class in', args.root
  )


if __name__ == '__main__':
  main()
