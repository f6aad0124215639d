"""The ablation over supervision modes (`llgbm-jax ablations`):
`python experiments/ablations.py --run-dir runs/ablations`."""

import sys

from llgbm_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["ablations", *sys.argv[1:]]))
