"""Thin script: `llgbm_jax.benchmarks.gemm` (see its docstring; ``--help`` for the options)."""

from llgbm_jax.benchmarks.gemm import main

if __name__ == "__main__":
    main()
