"""Thin script: `llgbm_jax.benchmarks.accelerator` (see its docstring; ``--help`` for the options)."""

from llgbm_jax.benchmarks.accelerator import main

if __name__ == "__main__":
    main()
