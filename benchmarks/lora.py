"""Thin script: `llgbm_jax.benchmarks.lora` (see its docstring; ``--help`` for the options)."""

from llgbm_jax.benchmarks.lora import main

if __name__ == "__main__":
    main()
