"""``python -m llgbm_jax``: the command line."""

import sys

from llgbm_jax.cli import main

sys.exit(main())
