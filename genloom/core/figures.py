"""Matplotlib for the evaluation reports' PNGs: the pyplot module on the file-only Agg backend (or None when
matplotlib is not installed), and one way to title, lay out, write and close a figure."""

from __future__ import annotations

from pathlib import Path

__all__ = ["pyplot", "save_figure"]


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), or None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(fig, path: str | Path, title: str, dpi: int = 100) -> Path:
    """Title the figure, lay it out, write it to `path` (a PNG) and free it."""
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
