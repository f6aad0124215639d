"""Build the task data folder where a network exists (`llgbm-jax prepare-data`):
`python experiments/prepare_data.py --out data`."""

import sys

from llgbm_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare-data", *sys.argv[1:]]))
