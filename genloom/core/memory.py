"""Fail fast, before allocating: how much memory a piece of work needs against what the machine has.

A run whose model, batch or data cannot fit should stop at once with one line saying what it needs and
what there is, not climb to many gigabytes and die in an allocation traceback (or be killed). Callers
count what they are about to allocate and call `require`. `limit()` is the memory available now (Linux:
MemAvailable; a CUDA device: its free memory), or the user's `--max-memory` (`train.max_memory`, GB).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError

__all__ = ["available_bytes", "limit", "require", "gigabytes"]


def available_bytes(device: str = "cpu") -> int | None:
    """Memory that can be allocated now on `device` (None when it cannot be told)."""
    if str(device).startswith("cuda"):
        try:
            import torch

            free, _ = torch.cuda.mem_get_info(None if str(device) == "cuda" else str(device))
            return int(free)
        except Exception:
            return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def limit(max_memory_gb: float = 0.0, device: str = "cpu") -> int | None:
    """The bytes a piece of work may use: `max_memory_gb` when given (> 0), else what is available."""
    if max_memory_gb and max_memory_gb > 0:
        return int(max_memory_gb * 1024**3)
    return available_bytes(device)


def gigabytes(nbytes: float) -> str:
    return f"{nbytes / 1024**3:,.1f} GB" if nbytes >= 0.1 * 1024**3 else f"{nbytes / 1024**2:,.0f} MB"


def require(nbytes: float, what: str, hint: str, max_memory_gb: float = 0.0, device: str = "cpu") -> None:
    """Raise a ConfigError naming `what` when `nbytes` do not fit in `limit()`; `hint` says what to change."""
    allowed = limit(max_memory_gb, device)
    if allowed is None or nbytes <= allowed:
        return
    source = f"--max-memory {max_memory_gb:g} GB" if max_memory_gb and max_memory_gb > 0 else \
        f"{gigabytes(allowed)} available on this machine"
    raise ConfigError(f"{what} needs about {gigabytes(nbytes)}, more than the {source}; {hint}")
