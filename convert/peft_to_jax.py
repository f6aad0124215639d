"""A PEFT adapter folder as an llgbm_jax LoRA file (`llgbm-jax convert peft-to-jax`):
`python convert/peft_to_jax.py ADAPTER OUT.safetensors`."""

import sys

from llgbm_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "peft-to-jax", *sys.argv[1:]]))
