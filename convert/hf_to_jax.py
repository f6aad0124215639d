"""A base model as an llgbm_jax checkpoint (`llgbm-jax convert hf-to-jax`):
`python convert/hf_to_jax.py smollm2-135m-instruct checkpoints/smollm2`."""

import sys

from llgbm_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "hf-to-jax", *sys.argv[1:]]))
