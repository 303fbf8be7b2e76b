"""Conditioning blocks shared by the diffusion denoisers: noise-level, class and caption embeddings."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["timestep_features", "ConditionEmbedding", "TextCondition"]


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of (possibly fractional) timesteps (Vaswani et al. 2017, sec. 3.5): (B,) -> (B, dim)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * frequencies[None]                         # (B, half)
    features = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        features = torch.cat([features, torch.zeros_like(features[:, :1])], dim=-1)
    return features


class ConditionEmbedding(nn.Module):
    """One vector per example from the timestep and the class label.

    Label `num_classes` is the "no label" class that conditioning dropout trains, so one model
    denoises both with and without a label (classifier-free guidance, Ho & Salimans 2022).
    """

    def __init__(self, dim: int, num_classes: int, frequency_dim: int = 256, factors: tuple[int, ...] = ()):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.time = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.num_classes = num_classes
        # With `factors` (e.g. (10, 4): class = digit x 4 + direction) a class is the sum of one embedding per
        # factor, so what the classes share (the digit's shape) is learned from all of them; the last row of
        # the table is "no label".
        self.factors = tuple(factors) if num_classes > 0 and len(factors) > 1 else ()
        if self.factors and math.prod(self.factors) != num_classes:
            raise ValueError(f"label factors {self.factors} multiply to {math.prod(self.factors)}, not the "
                             f"{num_classes} classes")
        rows = sum(self.factors) if self.factors else num_classes
        self.label = nn.Embedding(rows + 1, dim) if num_classes > 0 else None

    def forward(self, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        embedding = self.time(timestep_features(t, self.frequency_dim).to(self.time[0].weight.dtype))  # (B, dim)
        if self.label is not None:
            if labels is None:
                labels = torch.full_like(t, self.num_classes, dtype=torch.long)
            embedding = embedding + (self._factor_embedding(labels) if self.factors else self.label(labels))
        return embedding

    def _factor_embedding(self, labels: torch.Tensor) -> torch.Tensor:
        none = labels == self.num_classes
        rest, total, offset = labels.clamp(max=self.num_classes - 1), 0, 0
        for size, stride in zip(self.factors, _strides(self.factors)):
            total = total + self.label((rest // stride) % size + offset)
            offset += size
        return torch.where(none[:, None], self.label(torch.full_like(labels, offset)), total)


def _strides(factors: tuple[int, ...]) -> list[int]:
    """Mixed-radix place values, the first factor most significant: (10, 4) -> [4, 1]."""
    return [math.prod(factors[i + 1:]) for i in range(len(factors))]


class TextCondition(nn.Module):
    """Caption token ids -> (text tokens (B, L, text_dim), mask (B, L), pooled vector (B, embed_dim)).

    The tokens feed cross-attention (UNet) or join the image tokens (DiT); the pooled vector is added
    to the timestep embedding. `null_caption` is the "no text" input that conditioning dropout trains
    and classifier-free guidance uses as its unconditional branch.
    """

    def __init__(self, encoder: str, vocab_size: int, length: int, dim: int, layers: int, heads: int,
                 embed_dim: int):
        super().__init__()
        from .text_encoders import JointTextEncoder, MiniLMTextEncoder

        null = torch.zeros(length, dtype=torch.long)
        if encoder == "minilm":
            self.encoder = MiniLMTextEncoder(dim)
            null[:2] = torch.tensor([101, 102])       # [CLS] [SEP]: the WordPiece encoding of ""
        else:
            self.encoder = JointTextEncoder(vocab_size, length, dim, layers, heads)
            null[0] = 1                               # <empty>
        self.register_buffer("null_caption", null, persistent=False)
        self.pooled = nn.Sequential(nn.Linear(dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))

    def forward(self, ids: torch.Tensor | None, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from .text_encoders import masked_mean

        if ids is None:
            ids = self.null_caption.expand(batch, -1)
        tokens, mask = self.encoder(ids)
        return tokens, mask, self.pooled(masked_mean(tokens, mask))
