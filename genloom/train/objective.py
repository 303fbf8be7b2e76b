"""The contract between the one training loop and every model family."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Protocol

import torch
from torch import nn

from .data import DataModule

__all__ = ["Objective", "DataModule", "unwrap_model"]




class Objective(Protocol):
    """The loss of a batch. Each phase has its own optimizer (a GAN has two; a language model one).

    Optional: `lr_scales` ({phase: factor}) scales a phase's learning rate (a GAN's two time-scale
    rule); `begin_step(step)` is called before each optimizer step (e.g. for penalties applied every
    k steps), so that what an objective does at a step depends only on the step and resumes exactly.
    `setup(model)` runs once after the model is built, `setup_data(data)` once with the prepared data module
    (e.g. for a network the data provides, such as an autoencoder's perceptual features).
    """

    phases: tuple[str, ...]

    def phase_parameters(self, phase: str, model: nn.Module) -> Iterable[nn.Parameter]:
        """The parameters that `phase`'s optimizer updates."""

    def loss(self, phase: str, model: nn.Module, batch: Any) -> torch.Tensor:
        """A scalar loss to minimise for `phase` on `batch` (mean over the batch)."""

    def eval_loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The validation loss of `batch` (mean over the batch)."""

    def write_samples(self, model: nn.Module, data: DataModule, folder: Path, step: int, length: int,
                      prompt: str) -> str:
        """Write a few samples under `folder` and return a short text to show the user."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """The genloom model under torch.compile / DistributedDataParallel wrappers (the one with `config`)."""
    while not hasattr(model, "config"):
        model = getattr(model, "_orig_mod", None) or model.module
    return model
