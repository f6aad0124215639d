"""Thin script: `llgbm_jax.benchmarks.forward` (see its docstring; ``--help`` for the options)."""

from llgbm_jax.benchmarks.forward import main

if __name__ == "__main__":
    main()
