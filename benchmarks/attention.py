"""Thin script: `llgbm_jax.benchmarks.attention` (see its docstring; ``--help`` for the options)."""

from llgbm_jax.benchmarks.attention import main

if __name__ == "__main__":
    main()
