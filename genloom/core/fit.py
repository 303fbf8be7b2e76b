"""The one small-network training loop, and the one learning-rate schedule.

genloom trains a handful of small networks beside its models: the feature classifiers behind the
content types' metrics, and helper networks such as a speaker encoder or a neural vocoder. They all
train the same way, through `fit`: AdamW, the schedule below, optional gradient
clipping, a progress bar with the loss. Each caller's `loss_fn(model)` draws its own batch from its own
`torch.Generator`, so a network is the same from run to run.

`lr_schedule` is also the schedule of the one big training loop (`genloom.train.trainer.lr_factor`).
"""

from __future__ import annotations

import math
from typing import Callable, TypeVar

import torch
from torch import Tensor, nn

__all__ = ["fit", "lr_schedule"]

Model = TypeVar("Model", bound=nn.Module)


def lr_schedule(step: int, steps: int, warmup: int, floor: float = 0.0, time_fraction: float = 0.0,
                decay: str = "cosine") -> float:
    """The learning rate at `step` as a fraction of its peak: a linear warm-up over the first `warmup` steps
    (from 1/warmup to 1), then a decay over the remaining `steps - warmup` (or over wall time, when
    `time_fraction` of it has gone by further than the steps) down to `floor`. `decay` is the shape of the
    fall: "cosine" (half a cosine), "linear", or "constant" (no fall: the peak to the end)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    progress = min(1.0, max(progress, time_fraction))
    if decay == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * progress))
    elif decay == "linear":
        factor = 1 - progress
    else:
        factor = 1.0
    return floor + (1 - floor) * factor


def fit(model: Model, loss_fn: Callable[[Model], Tensor], steps: int, *, lr: float, weight_decay: float = 0.0,
        warmup_fraction: float = 0.1, floor: float = 0.0, grad_clip: float | None = None, desc: str = "training",
        progress: bool = True) -> Model:
    """Train `model` for `steps` AdamW steps on `loss_fn(model)` (a scalar; the function draws its own batch)
    and return it in eval mode with its parameters frozen.

    The learning rate follows `lr_schedule`: a linear warm-up over `warmup_fraction` of the steps (at least one
    step when the fraction is above 0), then half a cosine down to `floor` x `lr`. `grad_clip` caps the
    gradients' global norm. Training runs under `torch.enable_grad()`, so callers may be scoring under
    `no_grad`; the parameters that require gradients when it starts are the ones trained."""
    from tqdm.auto import tqdm

    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    warmup = max(1, int(steps * warmup_fraction)) if warmup_fraction > 0 else 0
    model.train()
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
    with torch.enable_grad():
        for step in bar:
            for group in optimizer.param_groups:
                group["lr"] = lr * lr_schedule(step, steps, warmup, floor)
            loss = loss_fn(model)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
            optimizer.step()
            if progress:
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return model.eval().requires_grad_(False)
