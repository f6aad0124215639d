"""The main job (`llgbm-jax train`): build the teacher zoo, train a generator on it, judge its adapters.

    python experiments/delta_w.py                                  # the embedded default, CPU
    python experiments/delta_w.py --seed 1 --output-dir runs/seed1
    python experiments/delta_w.py --help                           # every option

The library function is `llgbm_jax.evaluation.main_job.run`."""

import sys

from llgbm_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
