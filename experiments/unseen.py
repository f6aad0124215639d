"""Adapters for tasks the generator never saw (`llgbm-jax unseen`):
`python experiments/unseen.py --run-dir runs/unseen`."""

import sys

from llgbm_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["unseen", *sys.argv[1:]]))
