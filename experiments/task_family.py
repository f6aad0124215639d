"""Teachers for the generated task family (`llgbm-jax family`):
`python experiments/task_family.py --zoo-dir zoo_family`."""

import sys

from llgbm_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["family", *sys.argv[1:]]))
