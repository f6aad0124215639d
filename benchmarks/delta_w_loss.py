"""Thin script: `llgbm_jax.benchmarks.delta_w_loss` (see its docstring; ``--help`` for the options)."""

from llgbm_jax.benchmarks.delta_w_loss import main

if __name__ == "__main__":
    main()
