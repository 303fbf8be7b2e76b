"""A UNet denoiser for diffusion models (Ho et al. 2020; Dhariwal & Nichol 2021, "ADM").

Residual blocks whose normalisation is scaled and shifted by a timestep + class embedding, self-attention
at low resolutions, and skip connections from each downsampling level to the matching upsampling level.
`forward(x, t, labels)` predicts what the noise process asks for (eps, x0 or v) at timestep `t`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..core.config import require, validate
from ..core.errors import ConfigError
from ..core.registry import register
from ..nn.attention import CrossAttention, SelfAttention
from ..nn.conditioning import ConditionEmbedding, TextCondition

__all__ = ["UNetConfig", "UNet"]


@dataclass(frozen=True)
class UNetConfig:
    kind: Literal["unet"] = "unet"
    image_size: int = 0                  # 0: from the data
    channels: int = 0                    # image channels; 0: from the data
    num_classes: int = 0                 # 0: from the data (0 there too = unconditional)
    base_channels: int = 64              # feature channels at full resolution
    channel_mults: tuple[int, ...] = (1, 2, 2)   # channels per level as multiples of base_channels; halves the size per level
    blocks_per_level: int = 2            # residual blocks per level (on the way down; one more on the way up)
    attention_resolutions: tuple[int, ...] = (8,)  # feature-map sizes that get self-attention
    attention_heads: int = 4
    dropout: float = 0.0
    patch_size: int = 1                  # >1: fold p x p pixel patches into channels first (4x less work at p=2)
    text_vocab_size: int = 0             # caption tokens; 0: from the data (0 there too = no text conditioning)
    text_length: int = 0                 # caption length in tokens; 0: from the data
    text_encoder: Literal["joint", "minilm"] = "joint"   # joint: trained with the denoiser; minilm: pretrained, frozen
    text_dim: int = 128                  # width of the text tokens
    text_layers: int = 2                 # transformer blocks of the joint text encoder
    text_heads: int = 4
    coordinates: bool = False            # feed x, y coordinate maps to the first layer (CoordConv, Liu et al. 2018):
                                         # lets attention tell left from right (prompts that name places)
    autoencoder: str = ""                # latent diffusion: a genloom autoencoder run or diffusers AutoencoderKL
                                         # folder; the model then works on its (scaled) latents

    def __post_init__(self) -> None:
        validate(self, "model")
        require(0 <= self.text_layers <= 64, "model.text_layers", "must be from 0 to 64")
        require(self.base_channels >= 8, "model.base_channels", "must be at least 8")
        require(len(self.channel_mults) >= 1 and all(m >= 1 for m in self.channel_mults), "model.channel_mults",
                "must be a non-empty list of positive integers, e.g. [1, 2, 2]")
        require(1 <= self.blocks_per_level <= 64, "model.blocks_per_level", "must be from 1 to 64")
        require(0 <= self.dropout < 1, "model.dropout", "must be in [0, 1)")
        require(self.patch_size >= 1, "model.patch_size", "must be at least 1")
        require(self.text_vocab_size == 0 or self.num_classes == 0, "model.num_classes",
                "a model is conditioned on classes or on captions, not both")
        require(self.text_dim % self.text_heads == 0, "model.text_dim",
                f"{self.text_dim} is not divisible by model.text_heads={self.text_heads}")
        factor = 2 ** (len(self.channel_mults) - 1) * self.patch_size
        require(self.image_size % factor == 0, "model.image_size",
                f"{self.image_size} must be divisible by {factor} (patch_size {self.patch_size}, and "
                f"{len(self.channel_mults)} levels halve it {len(self.channel_mults) - 1} times); change "
                f"model.channel_mults, model.patch_size or data.image_size")


def _groups(channels: int) -> int:
    """GroupNorm groups: 32 where the channels allow it (Wu & He 2018), fewer for narrow layers."""
    return next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)


class ResidualBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, then a norm modulated by the embedding (scale, shift) -> SiLU -> conv."""

    def __init__(self, in_channels: int, out_channels: int, embed_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_channels), in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.modulation = nn.Linear(embed_dim, 2 * out_channels)
        self.norm2 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)    # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, embedding: torch.Tensor, text=None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))                                  # (B, out, H, W)
        scale, shift = self.modulation(F.silu(embedding))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over the pixels of a feature map, then (text models) cross-attention from the pixels
    to the caption's tokens (Rombach et al. 2022), each as a residual."""

    def __init__(self, channels: int, heads: int, text_dim: int = 0):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        heads = heads if channels % heads == 0 else 1
        self.attention = SelfAttention(channels, heads)
        self.cross = CrossAttention(channels, text_dim, heads) if text_dim else None
        self.cross_norm = nn.LayerNorm(channels) if text_dim else None
        for layer in (self.attention, self.cross):
            if layer is not None:
                nn.init.zeros_(layer.proj.weight)
                nn.init.zeros_(layer.proj.bias)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor | None = None, text=None) -> torch.Tensor:
        B, C, H, W = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)                     # (B, H*W, C)
        h = x.flatten(2).transpose(1, 2) + self.attention(tokens)
        if self.cross is not None and text is not None:
            context, mask = text                                             # (B, L, text_dim), (B, L)
            h = h + self.cross(self.cross_norm(h), context, mask)
        return h.transpose(1, 2).reshape(B, C, H, W).contiguous(memory_format=torch.channels_last)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor | None = None, text=None) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor | None = None, text=None) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """A residual block, optionally followed by attention (one step of a UNet level)."""

    def __init__(self, block: ResidualBlock, attention: AttentionBlock | None):
        super().__init__()
        self.block, self.attention = block, attention

    def forward(self, x: torch.Tensor, embedding: torch.Tensor, text=None) -> torch.Tensor:
        x = self.block(x, embedding)
        return self.attention(x, embedding, text) if self.attention is not None else x


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        if not (cfg.image_size and cfg.channels):
            raise ConfigError("model.image_size and model.channels must be set (they come from the data)")
        self.config = cfg
        embed_dim = 4 * cfg.base_channels
        self.condition = ConditionEmbedding(embed_dim, cfg.num_classes)
        text_dim = cfg.text_dim if cfg.text_vocab_size else 0
        self.text = TextCondition(cfg.text_encoder, cfg.text_vocab_size, cfg.text_length, cfg.text_dim,
                                  cfg.text_layers, cfg.text_heads, embed_dim) if text_dim else None
        p = cfg.patch_size
        self.input = nn.Conv2d(cfg.channels * p * p + 2 * cfg.coordinates, cfg.base_channels, 3, padding=1)

        def level(cin: int, cout: int, size: int) -> Level:
            attention = AttentionBlock(cout, cfg.attention_heads, text_dim) if size in cfg.attention_resolutions else None
            return Level(ResidualBlock(cin, cout, embed_dim, cfg.dropout), attention)

        channels, size = cfg.base_channels, cfg.image_size // p
        skips = [channels]
        self.down = nn.ModuleList()
        for i, mult in enumerate(cfg.channel_mults):
            for _ in range(cfg.blocks_per_level):
                self.down.append(level(channels, mult * cfg.base_channels, size))
                channels = mult * cfg.base_channels
                skips.append(channels)
            if i < len(cfg.channel_mults) - 1:
                self.down.append(Downsample(channels))
                skips.append(channels)
                size //= 2
        self.middle = nn.ModuleList([ResidualBlock(channels, channels, embed_dim, cfg.dropout),
                                     AttentionBlock(channels, cfg.attention_heads, text_dim),
                                     ResidualBlock(channels, channels, embed_dim, cfg.dropout)])
        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(cfg.channel_mults))):
            for _ in range(cfg.blocks_per_level + 1):
                self.up.append(level(channels + skips.pop(), mult * cfg.base_channels, size))
                channels = mult * cfg.base_channels
            if i > 0:
                self.up.append(Upsample(channels))
                size *= 2
        self.output = nn.Sequential(nn.GroupNorm(_groups(channels), channels), nn.SiLU(),
                                    nn.Conv2d(channels, cfg.channels * p * p, 3, padding=1))
        nn.init.zeros_(self.output[-1].weight)
        nn.init.zeros_(self.output[-1].bias)
        # Channels-last convolutions are several times faster on CPUs (oneDNN) and use tensor cores on GPUs.
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W) noisy images, t (B,) timesteps -> (B, C, H, W). `labels`: (B,) classes (num_classes =
        none) for a class-conditional model, (B, L) caption token ids (None = no caption) for a text model."""
        text = None
        if self.text is not None:
            context, mask, pooled = self.text(labels, x.shape[0])
            text, labels = (context, mask), None
        embedding = self.condition(t, labels)                                # (B, 4 * base)
        if text is not None:
            embedding = embedding + pooled
        p = self.config.patch_size
        if p > 1:
            x = F.pixel_unshuffle(x, p)                                      # (B, C*p*p, H/p, W/p)
        if self.config.coordinates:
            B, _, h, w = x.shape
            ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)[:, None].expand(h, w)
            xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)[None, :].expand(h, w)
            x = torch.cat([x, torch.stack([xs, ys]).expand(B, 2, h, w)], dim=1)
        h = self.input(x.contiguous(memory_format=torch.channels_last))
        skips = [h]
        for module in self.down:
            h = module(h, embedding, text)
            skips.append(h)
        for module in self.middle:
            h = module(h, embedding, text)
        for module in self.up:
            if isinstance(module, Upsample):
                h = module(h)
            else:
                h = module(torch.cat([h, skips.pop()], dim=1), embedding, text)
        h = self.output(h)
        return F.pixel_shuffle(h, p) if p > 1 else h


@register("model", "unet", UNetConfig)
def build_unet(config: UNetConfig, run=None) -> UNet:
    return UNet(config)
