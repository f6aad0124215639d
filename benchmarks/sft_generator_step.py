"""Thin script: `llgbm_jax.benchmarks.sft_generator_step` (see its docstring; ``--help`` for the options)."""

from llgbm_jax.benchmarks.sft_generator_step import main

if __name__ == "__main__":
    main()
