"""Thin script: `llgbm_jax.benchmarks.mesh` (see its docstring; ``--help`` for the options)."""

from llgbm_jax.benchmarks.mesh import main

if __name__ == "__main__":
    main()
