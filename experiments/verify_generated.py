"""PEFT check of a run's generated adapters (`llgbm-jax verify generated`):
`python experiments/verify_generated.py --run-dir runs/delta_w`."""

import sys

from llgbm_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["verify", "generated", *sys.argv[1:]]))
