"""Thin script: `llgbm_jax.benchmarks.deltas` (see its docstring; ``--help`` for the options)."""

from llgbm_jax.benchmarks.deltas import main

if __name__ == "__main__":
    main()
