"""Figures: matplotlib without a display, saved atomically as PNG."""

from __future__ import annotations

from llgbm_jax.utils.io import atomic_file


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str, dpi: int = 110) -> str:
    """Lay out ``fig``, write it to ``path`` as PNG (atomically), close it; returns ``path``."""
    fig.tight_layout()
    with atomic_file(path, ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    pyplot().close(fig)
    return path
