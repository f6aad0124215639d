"""The ``llgbm-jax`` command line (`main`)."""

from llgbm_jax.cli.main import main

__all__ = ["main"]
