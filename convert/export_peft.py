"""An llgbm_jax LoRA file as a PEFT folder (`llgbm-jax convert export-peft`):
`python convert/export_peft.py LORA.safetensors OUT_FOLDER`."""

import sys

from llgbm_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "export-peft", *sys.argv[1:]]))
