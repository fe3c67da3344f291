"""Entry point of the untuned se_flax worker (see `workers.serve_jax`)."""

import json
import sys

from se_flax.benchmark import workers

if __name__ == '__main__':
  workers.serve_jax(json.loads(sys.argv[1]))
