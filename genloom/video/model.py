"""A video diffusion transformer with factorised space-time attention.

Each frame is cut into patches as the image DiT cuts an image, with the same 2-D positions; every layer is
a spatial DiT block (attention among the patches of one frame — the image model's block, unchanged) then a
temporal block (the same block type, attending across the frames at one patch position, with 1-D frame
positions). Both are adaLN-Zero: their gates start at zero, so a new temporal block is the identity and a
freshly initialised model maps a clip of identical frames to identical frames.

Extending footage: the network also sees the known frames — the clean context frames and a mask channel
saying which frames are given — concatenated to the noisy clip; in training a random number of leading
frames (sometimes none) is given, and the loss covers the frames to be generated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..core.config import require, validate
from ..core.errors import ConfigError
from ..core.registry import register
from ..diffusion.dit import (
    DiTBlock,
    add_output_layers,
    output_patches,
    sincos_positions_2d,
)
from ..nn.conditioning import ConditionEmbedding

__all__ = ["VideoDiTConfig", "VideoDiT", "sincos_positions_1d"]


@dataclass(frozen=True)
class VideoDiTConfig:
    kind: Literal["video_dit"] = "video_dit"
    image_size: int = 0              # frame side; 0: from the data
    channels: int = 0                # 0: from the data
    frames: int = 0                  # frames per clip; 0: from the data
    num_classes: int = 0             # 0: from the data
    label_factors: tuple[int, ...] = ()   # classes as a product (digit x direction): one embedding per factor,
                                          # summed; (): from the data ([0]: one embedding per class)
    patch_size: int = 2
    d_model: int = 192
    n_layer: int = 4                 # each layer: one spatial and one temporal block
    n_head: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        validate(self, "model")
        require(self.patch_size >= 1, "model.patch_size", "must be at least 1")
        require(1 <= self.n_layer <= 1024, "model.n_layer", "must be from 1 to 1024")
        require(self.image_size % self.patch_size == 0, "model.image_size",
                f"{self.image_size} is not divisible by model.patch_size={self.patch_size}")
        require(self.n_head >= 1 and self.d_model % self.n_head == 0, "model.d_model",
                f"{self.d_model} is not divisible by model.n_head={self.n_head}")
        require(not self.label_factors or all(f >= 0 for f in self.label_factors), "model.label_factors",
                "must be class counts such as [10, 4] (their product is model.num_classes)")
        if self.num_classes and len(self.label_factors) > 1:
            product = 1
            for f in self.label_factors:
                product *= f
            require(product == self.num_classes, "model.label_factors",
                    f"{list(self.label_factors)} multiply to {product}, not the {self.num_classes} classes")
        require(self.d_model % 4 == 0, "model.d_model", "must be divisible by 4 (sine-cosine positions)")


def sincos_positions_1d(dim: int, length: int) -> torch.Tensor:
    half = dim // 2
    frequencies = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / half)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * frequencies[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).float()         # (length, dim)


class VideoDiT(nn.Module):
    def __init__(self, cfg: VideoDiTConfig):
        super().__init__()
        if not (cfg.image_size and cfg.channels and cfg.frames):
            raise ConfigError("model.image_size, model.channels and model.frames must be set (they come from the data)")
        self.config = cfg
        p, grid = cfg.patch_size, cfg.image_size // cfg.patch_size
        # input: the noisy clip, the known frames (zero where unknown) and a mask channel
        self.patchify = nn.Conv2d(2 * cfg.channels + 1, cfg.d_model, kernel_size=p, stride=p)
        self.register_buffer("positions", sincos_positions_2d(cfg.d_model, grid), persistent=False)
        self.register_buffer("frame_positions", sincos_positions_1d(cfg.d_model, cfg.frames), persistent=False)
        self.condition = ConditionEmbedding(cfg.d_model, cfg.num_classes, factors=cfg.label_factors)
        self.spatial = nn.ModuleList(DiTBlock(cfg.d_model, cfg.n_head, cfg.mlp_ratio, cfg.dropout)
                                     for _ in range(cfg.n_layer))
        self.temporal = nn.ModuleList(DiTBlock(cfg.d_model, cfg.n_head, cfg.mlp_ratio, cfg.dropout)
                                      for _ in range(cfg.n_layer))
        add_output_layers(self, cfg.d_model, p * p * cfg.channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None,
                context: torch.Tensor | None = None, known: torch.Tensor | None = None,
                independent: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, T, H, W) noisy clips, t (B,) -> (B, C, T, H, W). `context` (B, C, T, H, W): the given
        frames (anything where not given), `known` (B, T) bool: which frames are given (None: none).
        `independent` (B,) bool: examples whose frames are separate images (joint image training): the
        temporal blocks pass them through unchanged, so each frame is denoised on its own."""
        B, C, T, H, W = x.shape
        p = self.config.patch_size
        if known is None:
            known = torch.zeros(B, T, dtype=torch.bool, device=x.device)
            context = torch.zeros_like(x)
        mask = known[:, None, :, None, None].to(x.dtype)                          # (B, 1, T, 1, 1)
        inputs = torch.cat([x, context * mask, mask.expand(B, 1, T, H, W)], dim=1)  # (B, 2C+1, T, H, W)
        frames = inputs.transpose(1, 2).reshape(B * T, 2 * C + 1, H, W)
        tokens = self.patchify(frames).flatten(2).transpose(1, 2) + self.positions  # (B*T, N, D)
        N, D = tokens.shape[1], tokens.shape[2]
        tokens = tokens.view(B, T, N, D)
        when = self.frame_positions[:T].repeat(N, 1).view(N, T, D)               # frame positions, per patch
        condition = self.condition(t, labels)                                    # (B, D)
        spatial_condition = condition.repeat_interleave(T, dim=0)                # (B*T, D)
        temporal_condition = condition.repeat_interleave(N, dim=0)               # (B*N, D)
        for spatial, temporal in zip(self.spatial, self.temporal):
            tokens = spatial(tokens.reshape(B * T, N, D), spatial_condition).view(B, T, N, D)
            # each patch position over time; the frame positions enter the temporal block only (and leave
            # after it), so a temporal block at its zero initialisation changes nothing
            across = tokens.transpose(1, 2) + when                               # (B, N, T, D)
            across = temporal(across.reshape(B * N, T, D), temporal_condition).view(B, N, T, D) - when
            if independent is not None:
                across = torch.where(independent[:, None, None, None], tokens.transpose(1, 2), across)
            tokens = across.transpose(1, 2)
        patches = output_patches(self, tokens.reshape(B, T * N, D), condition)   # (B, T*N, p*p*C)
        patches = patches.view(B, T, H // p, W // p, p, p, C)
        return patches.permute(0, 6, 1, 2, 4, 3, 5).reshape(B, C, T, H, W)


@register("model", "video_dit", VideoDiTConfig)
def build_video_dit(config: VideoDiTConfig, run=None) -> VideoDiT:
    return VideoDiT(config)
