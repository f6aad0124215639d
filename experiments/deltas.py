"""Behavioural deltas of a zoo's adapters (`llgbm-jax deltas`): `python experiments/deltas.py --zoo-dir zoo`."""

import sys

from llgbm_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["deltas", *sys.argv[1:]]))
