"""Top-k predictions of pretrained weights on image files.

    python -m se_flax.predict --pretrained seresnet50.a1_in1k cat.jpg dog.png
    python -m se_flax.predict --pretrained /path/to/workdir --json img.jpg

Each image gets the weights' own eval preprocessing (`PretrainedConfig`:
size, crop_pct, interpolation, mean/std; timm's test size by default).
In a notebook:

    pretrained = se_flax.load_pretrained('seresnet50.a1_in1k')
    se_flax.predict.predict(pretrained, ['cat.jpg'])  # [[Prediction, ...]]
"""

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from typing import Optional, Sequence

import jax
import numpy as np

from se_flax.pretrained import load as load_lib
from se_flax.pretrained import preprocess


@dataclasses.dataclass(frozen=True)
class Prediction:
  """One of an image's top-k classes."""

  class_id: int
  probability: float
  label: Optional[str]  # Unique name (ImageNet: synset id), if known.
  description: Optional[str]  # Human-readable name, if known.

  @property
  def name(self) -> str:
    return self.description or self.label or f'class {self.class_id}'


class NonFiniteOutputError(ValueError):
  """The model's outputs hold NaN or infinity: the weights are damaged."""


@functools.partial(jax.jit, static_argnums=0)
def _softmax_logits(model, variables, images):
  # Compiled once per model object and input shape, so repeated calls on
  # one `Pretrained` reuse the program.
  return jax.nn.softmax(model.apply(variables, images, train=False), axis=-1)


def probabilities(
    pretrained: load_lib.Pretrained,
    images: Sequence,
    *,
    use_test_size: bool = True,
    batch_size: int = 16,
) -> np.ndarray:
  """Class probabilities (N, classes) float32 for images or image paths."""
  if 'fc' not in pretrained.variables['params']:
    raise ValueError(
        'These weights have no classifier (loaded with a new num_classes)'
    )
  if len(images) == 0:  # pylint: disable=g-explicit-length-test
    return np.zeros((0, pretrained.model.num_classes), np.float32)
  out = []
  for start in range(0, len(images), batch_size):
    x = preprocess.eval_batch(
        images[start : start + batch_size], pretrained.config, use_test_size
    )
    real = len(x)
    if len(images) > batch_size and real < batch_size:
      # One batch shape for every call: pad the last batch, drop the padding.
      x = np.concatenate(
          [x, np.zeros((batch_size - real, *x.shape[1:]), x.dtype)]
      )
    probs = np.asarray(
        _softmax_logits(pretrained.model, pretrained.variables, x)
    )[:real]
    _check_finite(probs, pretrained, images[start : start + real])
    out.append(probs)
  return np.concatenate(out)


def _nonfinite_weights(variables) -> list[str]:
  leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
  return [
      jax.tree_util.keystr(path, simple=True, separator='/')
      for path, leaf in leaves
      if not np.isfinite(np.asarray(leaf)).all()
  ]


def _check_finite(probs, pretrained, images) -> None:
  """Refuses NaN/inf outputs: they would print as 'nan%' for every class."""
  bad = ~np.isfinite(probs).all(axis=-1)
  if not bad.any():
    return
  first = images[int(np.argmax(bad))]
  where = (
      os.fspath(first) if isinstance(first, (str, os.PathLike)) else 'an image'
  )
  weights = _nonfinite_weights(pretrained.variables)
  cause = (
      f'{len(weights)} weight array(s) hold NaN or inf ({weights[0]}, ...)'
      if weights
      else 'the weights are finite, so the input or the computation is not'
  )
  raise NonFiniteOutputError(
      f'{pretrained.source}: the logits are not finite (NaN or inf) for '
      f'{where}: {cause}'
  )


def predict(
    pretrained: load_lib.Pretrained,
    images: Sequence,
    *,
    top_k: int = 5,
    use_test_size: bool = True,
) -> list[list[Prediction]]:
  """The `top_k` (>= 1) classes of each image, most probable first."""
  if top_k < 1:
    raise ValueError(f'top_k must be >= 1, got {top_k}')
  probs = probabilities(pretrained, images, use_test_size=use_test_size)
  cfg = pretrained.config
  results = []
  for row in probs:
    top = np.argsort(-row, kind='stable')[:top_k]
    results.append(
        [
            Prediction(
                class_id=int(i),
                probability=float(row[i]),
                label=cfg.label_names[i] if cfg.label_names else None,
                description=(
                    cfg.label_descriptions[i]
                    if cfg.label_descriptions
                    else None
                ),
            )
            for i in top
        ]
    )
  return results


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value < 1:
    raise argparse.ArgumentTypeError(f'must be an integer >= 1, got {text!r}')
  return value


def _parse(argv):
  parser = argparse.ArgumentParser(
      prog='python -m se_flax.predict',
      description='Top-k classes of images under pretrained weights.',
  )
  parser.add_argument(
      '--pretrained',
      required=True,
      help='a timm tag (seresnet50.a1_in1k), Hub repo, local file, '
      'or training workdir',
  )
  parser.add_argument(
      '--model-name',
      default=None,
      help='architecture (or tag) for files that do not say',
  )
  parser.add_argument('--revision', default=None, help='Hub revision')
  parser.add_argument(
      '--top-k',
      type=_positive_int,
      default=5,
      help='classes shown per image (>= 1; default 5)',
  )
  parser.add_argument(
      '--train-size',
      action='store_true',
      help="use the training input size instead of timm's test size",
  )
  parser.add_argument('--json', action='store_true', help='JSON lines out')
  parser.add_argument('images', nargs='+', help='image files (JPEG, PNG, ...)')
  return parser.parse_args(argv)


def _expected_errors() -> tuple:
  """The failures `main` reports in one line (evaluated as they happen)."""
  errors = (OSError, ValueError, ImportError, NotImplementedError)
  # A damaged export or workdir raises CheckpointError; its module (and
  # Orbax) is imported only when such a source is read.
  checkpoint = sys.modules.get('se_flax.train.checkpoint')
  return errors + ((checkpoint.CheckpointError,) if checkpoint else ())


def _error(message: str) -> None:
  try:  # stderr may be a closed pipe too
    print(f'error: {message}', file=sys.stderr)
  except OSError:
    pass


def _show(args, pretrained, results) -> None:
  for path, preds in zip(args.images, results):
    if args.json:
      print(
          json.dumps(
              {
                  'image': path,
                  'pretrained': pretrained.source,
                  'top_k': [dataclasses.asdict(p) for p in preds],
              }
          )
      )
    else:
      print(path)
      for p in preds:
        print(f'  {p.probability:7.2%}  {p.name}')


def _run(args) -> int:
  started = time.perf_counter()
  try:
    pretrained = load_lib.load_pretrained(
        args.pretrained, model_name=args.model_name, revision=args.revision
    )
    loaded = time.perf_counter()
    results = predict(
        pretrained,
        args.images,
        top_k=args.top_k,
        use_test_size=not args.train_size,
    )
  # OSError: also the Hub client's HTTP and connection errors.
  except _expected_errors() as e:
    _error(str(e))
    return 2
  done = time.perf_counter()
  _show(args, pretrained, results)
  if not args.json:
    print(
        f'({pretrained.model_name} from {pretrained.source}; loaded in '
        f'{loaded - started:.1f} s, predicted in {done - loaded:.1f} s)',
        file=sys.stderr,
    )
  return 0


def main(argv=None) -> int:
  from se_flax.train import cli

  args = _parse(argv)
  cli.quiet_library_logs(verbosity=0)
  try:
    return _run(args)
  except KeyboardInterrupt:
    _error('interrupted')
    return 130
  except BrokenPipeError:
    # The reader left (`| head`): stop, as a program stopped by SIGPIPE
    # would (141 = 128 + SIGPIPE), rather than predict for nobody.
    cli.discard_output(sys.stdout.fileno())
    return 141


if __name__ == '__main__':
  sys.exit(main())
