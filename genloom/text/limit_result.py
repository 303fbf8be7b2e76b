"""What every limits task returns (`LimitsResult`: summary lines, JSON figures, a plot) and the small helpers the
tasks of `limits.py` and `limits_long.py` share."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..core.errors import GenloomError
from ..core.figures import pyplot, save_figure
from .biographies import Biographies, generate

__all__ = ["LimitsResult", "biographies_of", "sample_of", "pct"]


def biographies_of(handle) -> Biographies | None:
    """The people a model trained on builtin:biographies read about (None for any other text model)."""
    data = handle.config.data
    path = getattr(data, "path", "")
    if isinstance(path, str) and path.startswith("builtin:biographies"):
        return generate(0, both_ways=getattr(data, "both_ways", False))
    return None


def sample_of(items: list, n: int, seed: int) -> list:
    """At most n of `items`, drawn with `seed` (all of them when there are no more)."""
    return items if len(items) <= n else random.Random(seed).sample(items, n)


@dataclass
class LimitsResult:
    task: str
    figures: dict                                  # the headline numbers
    details: dict = field(default_factory=dict)    # curves, tables, examples
    lines: list[str] = field(default_factory=list)
    draw: Callable | None = None                   # (figures, details, matplotlib axes) -> None

    def summary(self) -> str:
        return "\n".join([f"task: {self.task}", *self.lines])

    def to_json(self) -> dict:
        return {"task": self.task, **self.figures, "details": self.details}

    def plot(self, path: str | Path) -> Path | None:
        """Draw the task's figure as a PNG (needs matplotlib); None when there is nothing to draw."""
        if self.draw is None:
            return None
        plt = pyplot()
        if plt is None:
            raise GenloomError("the plot needs matplotlib: pip install 'genloom[plots]' (the JSON report was "
                               "written)")
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        self.draw(self.figures, self.details, axes)
        return save_figure(fig, path, f"genloom eval --task {self.task}", dpi=110)


def pct(x) -> str:
    """A share as a percentage with one decimal ("n/a" for none)."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"
