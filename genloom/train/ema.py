"""An exponential moving average of the weights, the copy diffusion models and GANs are sampled from.

Averaging the weights of the last few thousand steps removes most of the step-to-step noise of the
optimizer; samples from the average are visibly cleaner (Song & Ermon 2020; Karras et al. 2022).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """`model` is the averaged copy; `update` pulls it towards the live weights after each step."""

    def __init__(self, live: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(live).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """Warm up the average: early weights are forgotten quickly (decay = (1 + step) / (10 + step))."""
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, live: nn.Module, step: int) -> None:
        weight = 1.0 - self.decay_at(step)
        averaged = [p for p in self.model.parameters()]
        current = [p.detach() for p in live.parameters()]
        torch._foreach_lerp_(averaged, current, weight)      # averaged += weight * (current - averaged)
        for mine, theirs in zip(self.model.buffers(), live.buffers()):
            mine.copy_(theirs)
