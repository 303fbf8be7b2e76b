"""The small base every content type's handle shares: what `genloom.load(DIR)` returns.

A handle holds a checkpoint's folder, its run config and the model on a device, draws (and remembers)
seeds, and switches between the LoRA adapters loaded with it. Each content package's `handle.py` adds
the methods of its kind (`generate`, `evaluate`, ...). Every method takes its first one or two arguments
by position and the rest by keyword, with the same names everywhere: `num_samples`, `seed`, `steps`,
`guidance`, `progress`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from .core.errors import GenloomError
from .nn.lora import use_adapter

__all__ = ["Handle", "EvalRequest", "score_with"]


class Handle:
    """A loaded checkpoint: `path`, `config` (the run's RunConfig), `model` (in eval mode), its `device`,
    the seed of the last call (`last_seed`) and the LoRA adapters loaded with it."""

    last_seed: int | None = None
    adapters: list[str] = []          # names of the loaded adapters (set by `genloom.load`)
    adapter: str | None = None        # the one applied by default (None: the base model)

    def __init__(self, path: str | Path, config: Any, model: torch.nn.Module):
        self.path, self.config, self.model = Path(path), config, model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def draw_seed(self, seed: int | None = None) -> int:
        """`seed`, or a fresh random one when it is None; either way kept in `last_seed` (to be reported)."""
        self.last_seed = secrets.randbelow(2**31) if seed is None else int(seed)
        return self.last_seed

    def use_adapter(self, name: str | None) -> None:
        """Apply the loaded adapter `name` to later generations (None: the base model alone)."""
        if name is not None and name not in self.adapters:
            raise GenloomError(f"no adapter named {name!r} is loaded with {self.path} "
                               f"(loaded: {', '.join(self.adapters) or 'none'})")
        use_adapter(self.model, name)
        self.adapter = name

    def set_adapters(self, names: list[str]) -> None:
        """Record the adapters `genloom.load` attached: one is applied by default, several leave the base."""
        self.adapters = list(names)
        self.adapter = names[0] if len(names) == 1 else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


@dataclass(frozen=True)
class EvalRequest:
    """What `genloom eval` was asked for. None means "not given": each content type fills in its own
    default and refuses, by name, any option that does not apply to its models (`check`)."""

    task: str | None = None            # a named evaluation: safety, concept, code
    tasks: str | None = None           # --task code: the task file
    data: str | None = None            # other data to score on
    num_samples: int | None = None
    steps: int | None = None
    sampler: str | None = None
    guidance: float | None = None
    guidances: tuple[float, ...] | None = None
    seed: int | None = None
    inception: str | None = None       # FID Inception weights
    unsafe_sandbox: bool = False       # --task code: run generated code without OS isolation
    pairs: str | None = None           # --task bias: a CrowS-Pairs-format CSV of sentence pairs
    progress: bool = True

    OPTION_NAMES = {"task": "--task", "tasks": "--tasks", "data": "--data", "num_samples": "--num-samples",
                    "steps": "--steps", "sampler": "--sampler", "guidance": "--guidance", "guidances": "--guidances",
                    "seed": "--seed", "inception": "--inception", "unsafe_sandbox": "--unsafe-sandbox",
                    "pairs": "--pairs"}

    def given(self) -> list[str]:
        return [f.name for f in fields(self) if f.name != "progress" and getattr(self, f.name) not in (None, False)]

    def check(self, allowed: set[str] | tuple[str, ...], what: str) -> None:
        """Refuse the options that were given but that `what` (e.g. "a music model") cannot honour."""
        extra = [name for name in self.given() if name not in allowed]
        if extra:
            names = ", ".join(self.OPTION_NAMES[name] for name in extra)
            usable = ", ".join(self.OPTION_NAMES[name] for name in self.OPTION_NAMES if name in allowed) or "none"
            raise GenloomError(f"{names}: not an option for {what} (its options: {usable})")

    def get(self, name: str, default: Any) -> Any:
        value = getattr(self, name)
        return default if value is None else value


def score_with(handle: Handle, request: EvalRequest, what: str, defaults: dict[str, Any]):
    """`genloom eval` of a content type without named tasks: the options in `defaults` (their default where
    not given; None leaves the handle's own) go to `handle.evaluate`; any other option is refused by name."""
    if request.task is not None:
        raise GenloomError(f"--task {request.task!r}: {what} has no named tasks (the tasks are safety, concept, "
                           "code, and hallucination, understanding, bias, consistency and context for text models; "
                           "bias for text-to-image and consistency for music models)")
    request.check(set(defaults), what)
    options = {name: request.get(name, default) for name, default in defaults.items()}
    options = {("data_path" if name == "data" else name): value for name, value in options.items() if value is not None}
    return handle.evaluate(**options, progress=request.progress)
