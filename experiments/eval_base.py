"""Base-model accuracy per task (`llgbm-jax base-accuracy`): `python experiments/eval_base.py --data-dir DATA`."""

import sys

from llgbm_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["base-accuracy", *sys.argv[1:]]))
