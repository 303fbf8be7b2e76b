"""A diffusion transformer denoiser (Peebles & Xie 2023, "DiT").

The image is cut into patches, each patch becomes a token with a fixed 2-D sine-cosine position, and
transformer blocks process the tokens. The timestep + class embedding enters every block through
adaLN-Zero: it produces the shift, scale and gate of each sub-layer, with the gates initialised to
zero so every block starts as the identity (sec. 3.2 of the paper). A text model adds the caption's pooled
vector to that embedding and appends the caption's tokens to the image tokens, so attention mixes both.
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
from ..nn.attention import SelfAttention
from ..nn.conditioning import ConditionEmbedding, TextCondition

__all__ = ["DiTConfig", "DiT", "sincos_positions_2d", "add_output_layers", "output_patches"]


@dataclass(frozen=True)
class DiTConfig:
    kind: Literal["dit"] = "dit"
    image_size: int = 0              # 0: from the data
    channels: int = 0                # image channels; 0: from the data
    num_classes: int = 0             # 0: from the data (0 there too = unconditional)
    label_factors: tuple[int, ...] = ()   # classes as a product (sound kind x register): one embedding per
                                          # factor, summed; (): from the data ([0]: one embedding per class)
    vector_dim: int = 0              # a conditioning vector per example (a speaker embedding); 0: from the data
    vector_tokens: int = 0           # > 0: the vector also becomes this many tokens beside the image's (through
                                     # a small MLP), which attention reads at every block
    patch_size: int = 2              # side of the square patch that becomes one token
    d_model: int = 256
    n_layer: int = 6
    n_head: int = 4
    mlp_ratio: float = 4.0           # hidden width of the MLP as a multiple of d_model
    dropout: float = 0.0
    text_vocab_size: int = 0         # caption tokens; 0: from the data (0 there too = no text conditioning)
    text_length: int = 0             # caption length in tokens; 0: from the data
    text_encoder: Literal["joint", "minilm"] = "joint"   # joint: trained with the denoiser; minilm: pretrained, frozen
    text_dim: int = 128              # width of the text tokens (projected to d_model and joined to the image's)
    text_layers: int = 2             # transformer blocks of the joint text encoder
    text_heads: int = 4
    autoencoder: str = ""            # latent diffusion: a genloom autoencoder run or diffusers AutoencoderKL
                                     # folder; the model then works on its (scaled) latents

    def __post_init__(self) -> None:
        validate(self, "model")
        require(0 <= self.text_layers <= 64, "model.text_layers", "must be from 0 to 64")
        require(self.patch_size >= 1, "model.patch_size", "must be at least 1")
        require(self.image_size % self.patch_size == 0, "model.image_size",
                f"{self.image_size} is not divisible by model.patch_size={self.patch_size}")
        require(1 <= self.n_layer <= 1024, "model.n_layer", "must be from 1 to 1024 (the deepest open models have ~126; a larger value is a typo)")
        require(self.n_head >= 1 and self.d_model % self.n_head == 0, "model.d_model",
                f"{self.d_model} is not divisible by model.n_head={self.n_head}")
        require(self.vector_tokens >= 0, "model.vector_tokens", "must be >= 0")
        require(self.d_model % 4 == 0, "model.d_model", "must be divisible by 4 (2-D sine-cosine positions)")
        require(0 <= self.dropout < 1, "model.dropout", "must be in [0, 1)")
        require(self.text_vocab_size == 0 or self.num_classes == 0, "model.num_classes",
                "a model is conditioned on classes or on captions, not both")
        require(self.text_dim % self.text_heads == 0, "model.text_dim",
                f"{self.text_dim} is not divisible by model.text_heads={self.text_heads}")


def sincos_positions_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed positions of a grid x grid of tokens: half the features encode the row, half the column."""
    quarter = dim // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(grid, dtype=torch.float64)
    angles = coords[:, None] * frequencies[None]                              # (grid, quarter)
    axis = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)           # (grid, dim / 2)
    rows = axis[:, None, :].expand(grid, grid, dim // 2)
    cols = axis[None, :, :].expand(grid, grid, dim // 2)
    return torch.cat([rows, cols], dim=-1).reshape(grid * grid, dim).float()  # (grid*grid, dim)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


def add_output_layers(module: nn.Module, dim: int, out: int) -> None:
    """The last layer of a DiT (and of the video DiT): a norm modulated by the condition and a linear map to
    `out` values per token, both zero-initialised so the network starts by predicting zero."""
    module.final_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
    module.final_modulation = nn.Linear(dim, 2 * dim)
    module.final = nn.Linear(dim, out)
    for layer in (module.final_modulation, module.final):
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)


def output_patches(module: nn.Module, tokens: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
    """tokens (B, N, D), condition (B, D) -> (B, N, out) through the layers of `add_output_layers`."""
    shift, scale = module.final_modulation(F.silu(condition)).chunk(2, dim=-1)
    return module.final(_modulate(module.final_norm(tokens), shift, scale))


class DiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attention = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim))
        self.modulation = nn.Linear(dim, 6 * dim)   # shift, scale, gate for attention and for the MLP
        nn.init.zeros_(self.modulation.weight)      # adaLN-Zero
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, condition: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.silu(condition)).chunk(6, dim=-1)
        x = x + gate1[:, None] * self.attention(_modulate(self.norm1(x), shift1, scale1), mask)
        return x + gate2[:, None] * self.mlp(_modulate(self.norm2(x), shift2, scale2))


class DiT(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        if not (cfg.image_size and cfg.channels):
            raise ConfigError("model.image_size and model.channels must be set (they come from the data)")
        self.config = cfg
        p, grid = cfg.patch_size, cfg.image_size // cfg.patch_size
        self.patchify = nn.Conv2d(cfg.channels, cfg.d_model, kernel_size=p, stride=p)
        self.register_buffer("positions", sincos_positions_2d(cfg.d_model, grid), persistent=False)
        self.condition = ConditionEmbedding(cfg.d_model, cfg.num_classes, factors=cfg.label_factors)
        # a vector (zeros = none) projected and added to the timestep and class embedding
        self.vector = nn.Linear(cfg.vector_dim, cfg.d_model) if cfg.vector_dim else None
        self.vector_tokens = None
        if cfg.vector_dim and cfg.vector_tokens:
            self.vector_tokens = nn.Sequential(nn.Linear(cfg.vector_dim, cfg.d_model), nn.SiLU(),
                                               nn.Linear(cfg.d_model, cfg.vector_tokens * cfg.d_model))
        self.text = None
        if cfg.text_vocab_size:   # caption tokens join the image tokens (as in SD3's joint attention)
            self.text = TextCondition(cfg.text_encoder, cfg.text_vocab_size, cfg.text_length, cfg.text_dim,
                                      cfg.text_layers, cfg.text_heads, cfg.d_model)
            self.text_tokens = nn.Linear(cfg.text_dim, cfg.d_model)
        self.blocks = nn.ModuleList(DiTBlock(cfg.d_model, cfg.n_head, cfg.mlp_ratio, cfg.dropout)
                                    for _ in range(cfg.n_layer))
        add_output_layers(self, cfg.d_model, p * p * cfg.channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None,
                vector: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W) noisy images, t (B,) timesteps -> (B, C, H, W). `labels`: (B,) classes (num_classes =
        none) for a class-conditional model, (B, L) caption token ids (None = no caption) for a text model.
        `vector` (B, vector_dim): the conditioning vector of a model with one (None = zeros = none)."""
        B, C, H, W = x.shape
        p = self.config.patch_size
        tokens = self.patchify(x).flatten(2).transpose(1, 2) + self.positions  # (B, N, D), N = (H/p)(W/p)
        N, mask = tokens.shape[1], None
        if self.text is not None:
            context, text_mask, pooled = self.text(labels, B)
            condition = self.condition(t, None) + pooled                      # (B, D)
            tokens = torch.cat([tokens, self.text_tokens(context)], dim=1)    # (B, N + L, D)
            mask = torch.cat([text_mask.new_ones(B, N), text_mask], dim=1)
        else:
            condition = self.condition(t, labels)                             # (B, D)
        if self.vector is not None:
            if vector is None:
                vector = condition.new_zeros(B, self.config.vector_dim)
            condition = condition + self.vector(vector.to(condition.dtype))
            if self.vector_tokens is not None:
                extra = self.vector_tokens(vector.to(tokens.dtype)).view(B, self.config.vector_tokens, -1)
                tokens = torch.cat([tokens, extra], dim=1)
                if mask is not None:
                    mask = torch.cat([mask, mask.new_ones(B, extra.shape[1])], dim=1)
        for block in self.blocks:
            tokens = block(tokens, condition, mask)
        tokens = tokens[:, :N]
        patches = output_patches(self, tokens, condition)                     # (B, N, p*p*C)
        patches = patches.view(B, H // p, W // p, p, p, C)
        return patches.permute(0, 5, 1, 3, 2, 4).reshape(B, C, H, W)          # (B, C, H, W)


@register("model", "dit", DiTConfig)
def build_dit(config: DiTConfig, run=None) -> DiT:
    return DiT(config)
