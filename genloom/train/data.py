"""The data side of the training loop: the DataModule protocol every content type's data implements, and the
deterministic train/validation split they share."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

__all__ = ["DataModule", "split_examples", "SPLITS"]

SPLITS = ("train", "val")


def split_examples(count: int, val_fraction: float, seed: int) -> dict[str, torch.Tensor]:
    """Example ids of the train and validation splits: a seeded shuffle, at least one example in each."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    num_val = min(count - 1, max(1, round(count * val_fraction)))
    return {"train": order[:-num_val], "val": order[-num_val:]}


class DataModule(Protocol):
    """Examples for training and validation, addressed by integer indices."""

    item_name: str  # what `items_per_example` counts, for throughput ("tok", "img")

    def prepare(self) -> None:
        """Build or open cached data (called on rank 0 first, then on the others)."""

    def model_settings(self) -> dict[str, Any]:
        """Model config values the data decides (e.g. vocab_size)."""

    def save_assets(self, folder: Path) -> None:
        """Write what a checkpoint needs to read new inputs (tokenizer, codec)."""

    @property
    def items_per_example(self) -> int: ...

    def sample_indices(self, generator: torch.Generator, n: int) -> torch.Tensor:
        """`n` random training examples, drawn only from `generator`."""

    def val_indices(self, n: int) -> torch.Tensor:
        """The same `n` validation examples every time."""

    def batch(self, indices: torch.Tensor, split: str = "train") -> Any:
        """The examples at `indices` as tensors on the CPU."""
