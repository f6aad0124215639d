"""One teacher run scored at several checkpoints (`llgbm-jax pilot`):
`python experiments/teacher_pilot.py --task arc_e_cloze`."""

import sys

from llgbm_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["pilot", *sys.argv[1:]]))
