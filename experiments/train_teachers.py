"""Build the teacher zoo (`llgbm-jax zoo`): `python experiments/train_teachers.py --preset cpu --zoo-dir zoo`."""

import sys

from llgbm_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["zoo", *sys.argv[1:]]))
