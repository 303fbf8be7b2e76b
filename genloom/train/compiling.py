"""torch.compile for training: what is compiled, where compiled code is kept, and whether it pays.

* **What**: the whole model (or its DDP wrapper); validation and samples stay eager. Compiling block by
  block was measured too: a third less compile time on a cold cache, but steps only 1.05x faster than eager
  against 1.30x for the whole model (which also fuses the rotary tables, the final norm and the head), so it
  lost at every budget (BENCHMARKS.md, "cold starts").
* **Where**: Inductor's caches go to `<genloom cache>/compile/inductor` (unless `TORCHINDUCTOR_CACHE_DIR` is
  set), so compiled kernels survive reboots that empty /tmp and a second run of a recipe starts in seconds.
* **Whether** (`train.compile = "auto"`): a budget in seconds is spent either way, so compiling pays only
  when the faster steps after it make up for the time it takes: with `R` seconds left, a compile of `C`
  seconds and steps `s` times faster, compile when `(R - C) * s > R`. The run times its first eager steps,
  and takes `C` and `s` from what an earlier run of the same model measured on this machine
  (`compile/records.json`), else from the figures measured for genloom's recipes on a cold cache
  (`COLD_COMPILE_S`, `PRIOR_SPEEDUP`). After compiling it measures both and keeps them for the next run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any

import torch
from torch import nn

from ..core.cache import cache_folder
from ..core.io import write_json_atomic

__all__ = ["use_persistent_cache", "compile_for_training", "AutoCompile"]

log = logging.getLogger(__name__)

# Measured on genloom's shakespeare-char model (2-core EPYC, empty caches; BENCHMARKS.md, "cold starts"):
COLD_COMPILE_S = 18.0      # seconds a first compile costs (forward + backward)
PRIOR_SPEEDUP = 1.25       # compiled steps over eager ones (measured 1.30x), before this machine has measured its own
_EAGER_WINDOW = (3, 12)    # steps timed eagerly (the first ones allocate and are slower)
_COMPILED_WINDOW = 12      # compiled steps timed after the compile


# Whether the user chose Inductor's folder (torch itself writes the variable once it has compiled anything).
_USER_CACHE_DIR = "TORCHINDUCTOR_CACHE_DIR" in os.environ


def use_persistent_cache() -> None:
    """Keep Inductor's compiled code in genloom's cache folder (unless the user chose a folder)."""
    if not _USER_CACHE_DIR:
        folder = cache_folder("compile", "inductor")
        folder.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)


def compile_for_training(wrapper: nn.Module) -> nn.Module:
    """The model (or its DDP wrapper) compiled for training steps, its code kept in genloom's cache."""
    use_persistent_cache()
    return torch.compile(wrapper)


def _records_path():
    return cache_folder("compile") / "records.json"


class AutoCompile:
    """The `train.compile = "auto"` decision for one run (see the module docstring)."""

    def __init__(self, identity: dict[str, Any]):
        self.key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:20]
        self.record = self._read().get(self.key)
        self.eager_times: list[float] = []
        self.compiled_times: list[float] = []
        self.decided = False
        self.compiled = False
        self.first_compiled_step: float | None = None

    @staticmethod
    def _read() -> dict[str, Any]:
        try:
            records = json.loads(_records_path().read_text(encoding="utf-8"))
            return records if isinstance(records, dict) else {}
        except (OSError, ValueError):
            return {}

    def expected(self) -> tuple[float, float, str]:
        if self.record:
            return float(self.record["compile_s"]), float(self.record["speedup"]), "measured by an earlier run"
        return COLD_COMPILE_S, PRIOR_SPEEDUP, "genloom's cold-cache figures"

    def observe_eager(self, step: int, seconds: float) -> None:
        if _EAGER_WINDOW[0] <= step < _EAGER_WINDOW[1]:
            self.eager_times.append(seconds)

    def ready(self, step: int) -> bool:
        return not self.decided and step >= _EAGER_WINDOW[1]

    def decide(self, remaining: float) -> bool:
        """True to compile now, given `remaining` seconds of budget."""
        self.decided = True
        compile_s, speedup, source = self.expected()
        self.compiled = (remaining - compile_s) * speedup > remaining
        log.info("compile=auto: %s (%.0f s left; a compile of ~%.0f s and %.2fx faster steps, %s)",
                 "compiling" if self.compiled else "staying eager", remaining, compile_s, speedup, source)
        return self.compiled

    def observe_compiled(self, seconds: float) -> None:
        """Time the compiled steps: the first one holds the compile; then a window of plain ones."""
        if self.first_compiled_step is None:
            self.first_compiled_step = seconds
            return
        if len(self.compiled_times) < _COMPILED_WINDOW:
            self.compiled_times.append(seconds)
            if len(self.compiled_times) == _COMPILED_WINDOW:
                self._save()

    def _save(self) -> None:
        eager = sorted(self.eager_times)[len(self.eager_times) // 2]
        compiled = sorted(self.compiled_times)[len(self.compiled_times) // 2]
        record = {"compile_s": round(max(0.0, self.first_compiled_step - compiled), 2),
                  "speedup": round(eager / max(compiled, 1e-9), 3), "eager_step_s": round(eager, 4),
                  "compiled_step_s": round(compiled, 4)}
        log.info("compile=auto: measured %.1f s to compile, steps %.2fx faster (kept for the next run)",
                 record["compile_s"], record["speedup"])
        records = self._read()
        records[self.key] = record
        try:
            path = _records_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, records)
        except OSError:
            pass
