"""PEFT check of a zoo's teachers (`llgbm-jax verify zoo`): `python experiments/verify_zoo.py --zoo-dir zoo`."""

import sys

from llgbm_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["verify", "zoo", *sys.argv[1:]]))
