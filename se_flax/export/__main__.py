"""Export pretrained weights as StableHLO, a TF SavedModel or ONNX.

    python -m se_flax.export --pretrained seresnet50.a1_in1k \\
        --format stablehlo --output r50.stablehlo
    python -m se_flax.export --pretrained ./workdir --format savedmodel \\
        --output r50_savedmodel --batch 1 --preprocess --outputs probabilities

The export is reloaded in its own runtime and checked against se_flax
before it is written (`--no-check` skips that); see `se_flax.export`.
"""

import argparse
import sys
import time

from se_flax.export import FORMATS
from se_flax.export import export_checked
from se_flax.export import serving


def _batch(text: str):
  """'dynamic' -> None, else an integer >= 1."""
  if text == 'dynamic':
    return None
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value < 1:
    raise argparse.ArgumentTypeError(
        f"expected an integer >= 1 or 'dynamic', got {text!r}"
    )
  return value


def _pixels(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value < 1:
    raise argparse.ArgumentTypeError(f'expected pixels >= 1, got {text!r}')
  return value


def _parse(argv):
  parser = argparse.ArgumentParser(
      prog='python -m se_flax.export',
      description='Export a network with its weights, reloaded and checked.',
  )
  parser.add_argument(
      '--pretrained',
      required=True,
      help='a timm tag (seresnet50.a1_in1k), Hub repo, local file, '
      'se_flax .npz export or training workdir',
  )
  parser.add_argument('--format', required=True, choices=FORMATS)
  parser.add_argument(
      '--output',
      required=True,
      help='file (stablehlo, onnx) or directory (savedmodel) to create',
  )
  parser.add_argument(
      '--batch',
      type=_batch,
      default=None,
      help="a fixed batch size, or 'dynamic' (default)",
  )
  parser.add_argument(
      '--preprocess',
      action='store_true',
      help="uint8 RGB 0-255 NHWC input, the weights' mean/std inside",
  )
  parser.add_argument('--outputs', choices=serving.OUTPUTS, default='logits')
  parser.add_argument(
      '--image-size',
      '--image_size',
      type=_pixels,
      default=None,
      help="input side in pixels (default: the weights' eval size)",
  )
  parser.add_argument(
      '--model-name',
      '--model_name',
      default=None,
      help='architecture (or tag) for files that do not say',
  )
  parser.add_argument(
      '--overwrite', action='store_true', help='replace an existing output'
  )
  parser.add_argument(
      '--no-check',
      action='store_true',
      help='skip the reload and comparison with se_flax',
  )
  return parser.parse_args(argv)


def _expected_errors() -> tuple:
  """Failures printed in one line: options, paths, packages, and a damaged
  checkpoint (its module imported only when such a source was read)."""
  errors = (OSError, ValueError, ImportError, NotImplementedError)
  checkpoint = sys.modules.get('se_flax.train.checkpoint')
  return errors + ((checkpoint.CheckpointError,) if checkpoint else ())


def _run(args) -> int:
  started = time.perf_counter()
  try:
    done = export_checked(
        args.pretrained,
        args.format,
        args.output,
        batch=args.batch,
        preprocess=args.preprocess,
        outputs=args.outputs,
        image_size=args.image_size,
        model_name=args.model_name,
        check=not args.no_check,
        overwrite=args.overwrite,
    )
  except _expected_errors() as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  spec = done.spec
  batch = 'dynamic' if spec.batch is None else spec.batch
  print(done.path)
  print(
      f'{done.format}: input ({batch}, {spec.height}, {spec.width}, 3) '
      f'{spec.dtype}, {args.outputs}; {time.perf_counter() - started:.1f} s',
      file=sys.stderr,
  )
  for check in done.checks:
    print(f'checked {check}', file=sys.stderr)
  return 0


def main(argv=None) -> int:
  from se_flax.train import cli

  args = _parse(argv)
  cli.quiet_library_logs(verbosity=0)
  try:
    return _run(args)
  except KeyboardInterrupt:
    print('error: interrupted', file=sys.stderr)
    return 130


if __name__ == '__main__':
  sys.exit(main())
