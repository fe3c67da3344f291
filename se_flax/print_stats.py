"""Prints parameters and MACs of registered models as a markdown table.

python -m se_flax.print_stats                   # every model, 224 px
python -m se_flax.print_stats seresnet50 --image-size 288
"""

import argparse

from se_flax.models import list_models
from se_flax.models.stats import format_table


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('models', nargs='*', help='names (default: all)')
  parser.add_argument('--image-size', type=int, default=224)
  args = parser.parse_args(argv)
  print(format_table(args.models or list_models(), args.image_size))


if __name__ == '__main__':
  main()
