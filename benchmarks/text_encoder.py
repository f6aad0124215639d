"""Thin script: `llgbm_jax.benchmarks.text_encoder` (see its docstring; ``--help`` for the options)."""

from llgbm_jax.benchmarks.text_encoder import main

if __name__ == "__main__":
    main()
