"""A decoder-only transformer language model covering the GPT-2 and Llama designs.

GPT-2 style: learned positions, LayerNorm with bias, GELU (tanh), tied embeddings.
Llama style: rotary positions, RMSNorm, SwiGLU, grouped-query attention, untied head.
Both are pre-norm: x + attn(norm(x)), then x + mlp(norm(x)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..core.config import require, validate
from ..core.registry import register
from ..nn.attention import CausalSelfAttention, KVCache, RotaryEmbedding
from ..nn.layers import MLP, make_norm, mlp_hidden_size

__all__ = ["TransformerConfig", "Transformer"]


@dataclass(frozen=True)
class TransformerConfig:
    kind: Literal["transformer"] = "transformer"
    vocab_size: int = 0                  # 0: taken from the tokenizer
    block_size: int = 256                # context length in tokens
    n_layer: int = 6
    n_head: int = 6
    n_kv_head: int = 0                   # key/value heads; 0 = n_head, fewer = grouped-query attention
    d_model: int = 384                   # width of the residual stream
    mlp: Literal["gelu", "gelu_tanh", "swiglu", "relu2"] = "gelu_tanh"
    mlp_hidden: int = 0                  # 0: 4*d_model, or 8/3*d_model rounded to 64 for swiglu
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = 1e-5
    position: Literal["learned", "rope"] = "learned"
    rope_theta: float = 10000.0
    bias: bool = True                    # biases in linear layers and LayerNorms
    tie_embeddings: bool = True          # the output head shares the token embedding matrix
    qk_norm: bool = False                # RMS-normalise queries and keys per head before attention
    dropout: float = 0.0
    init_std: float = 0.02

    def __post_init__(self) -> None:
        validate(self, "model")
        require(self.vocab_size >= 0, "model.vocab_size", "must be 0 (from the tokenizer) or positive")
        require(self.block_size >= 1, "model.block_size", "must be at least 1")
        require(1 <= self.n_layer <= 1024, "model.n_layer", "must be from 1 to 1024 (the deepest open models have ~126; a larger value is a typo)")
        require(self.n_head >= 1, "model.n_head", "must be at least 1")
        require(self.d_model % self.n_head == 0, "model.d_model",
                f"{self.d_model} is not divisible by model.n_head={self.n_head}")
        require(self.n_kv_head >= 0 and self.n_head % self.kv_heads == 0, "model.n_kv_head",
                f"must divide model.n_head={self.n_head} (or be 0 for n_head)")
        require(self.position != "rope" or self.head_dim % 2 == 0, "model.d_model",
                "rotary positions need an even head size (d_model / n_head)")
        require(0 <= self.dropout < 1, "model.dropout", "must be in [0, 1)")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.attn_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)
        self.attn = CausalSelfAttention(cfg.d_model, cfg.n_head, cfg.kv_heads, cfg.bias, cfg.qk_norm, cfg.norm_eps)
        self.mlp_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)
        self.mlp = MLP(cfg.d_model, cfg.mlp_hidden or mlp_hidden_size(cfg.d_model, cfg.mlp), cfg.mlp, cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, rotary, cache, layer, mask):
        x = x + self.dropout(self.attn(self.attn_norm(x), rotary, cache, layer, mask))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


class Transformer(nn.Module):
    output_modules = ("head",)  # not a hidden layer: optimizers such as Muon leave it to AdamW
    compile_regions = ("blocks",)  # torch.compile each block (all alike: compiled once) rather than the whole model

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        require(cfg.vocab_size > 0, "model.vocab_size", "is not set (it comes from the tokenizer)")
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_embed = nn.Embedding(cfg.block_size, cfg.d_model) if cfg.position == "learned" else None
        self.rotary = (RotaryEmbedding(cfg.head_dim, cfg.block_size, cfg.rope_theta)
                       if cfg.position == "rope" else None)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.final_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 initialisation: N(0, init_std), residual projections scaled by 1/sqrt(2 * n_layer)."""
        std = self.config.init_std
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                scale = 1 / math.sqrt(2 * self.config.n_layer) if name.endswith(("attn.proj", "mlp.down")) else 1.0
                nn.init.normal_(module.weight, std=std * scale)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)

    def num_parameters(self, include_embeddings: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if not include_embeddings:
            n -= self.embed.weight.numel() + (self.pos_embed.weight.numel() if self.pos_embed is not None else 0)
        return n

    def flops_per_token(self, context: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6N plus attention (PaLM appendix B)."""
        cfg = self.config
        context = context or cfg.block_size
        n = self.num_parameters(include_embeddings=False) + (0 if self.head is not None else self.embed.weight.numel())
        return 6 * n + 6 * cfg.n_layer * cfg.d_model * context

    def new_cache(self, batch: int, max_length: int | None = None, dtype: torch.dtype | None = None) -> KVCache:
        cfg = self.config
        param = self.embed.weight
        return KVCache(cfg.n_layer, batch, cfg.kv_heads, max_length or cfg.block_size, cfg.head_dim,
                       dtype or param.dtype, param.device)

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None,
                segments: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, vocab) for tokens (B, T). With a cache, tokens follow the cached positions.

        `segments` (B, T) packs several documents in a row: a token attends only to earlier tokens of
        its own segment, and positions restart at 0 where a segment begins.
        """
        B, T = tokens.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"{start + T} positions exceed the context length model.block_size={self.config.block_size}")
        positions = positions_abs = torch.arange(start, start + T, device=tokens.device)  # (T,)
        mask = None
        if segments is not None:
            if cache is not None:
                raise ValueError("segments are for training on packed documents, not for decoding with a cache")
            causal = torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril()
            mask = ((segments[:, :, None] == segments[:, None, :]) & causal)[:, None]        # (B, 1, T, T)
            previous = F.pad(segments, (1, 0), value=-2)[:, :-1]
            begins = torch.where(segments != previous, positions[None, :], 0)                # (B, T)
            positions = positions[None, :] - begins.cummax(dim=1).values                     # (B, T)
        if cache is not None and (cache.key_mask is not None or (start > 0 and T > 1)):
            # (T, S): query i (at start + i) sees keys 0 .. start + i.
            mask = torch.ones(T, start + T, dtype=torch.bool, device=tokens.device).tril(diagonal=start)
            if cache.key_mask is not None:
                mask = mask[None, None] & cache.key_mask[:, None, None, : start + T]  # (B, 1, T, S)
                # A padding query still sees itself, so no row of the softmax is empty (NaN).
                keys = torch.arange(start + T, device=tokens.device)
                mask = mask | (keys[None, :] == positions_abs[:, None])
                # Left-padded rows count positions from their first real token.
                pad = (~cache.key_mask[:, :start + T]).sum(-1, keepdim=True)           # (B, 1)
                positions = (positions[None, :] - pad).clamp(min=0)                      # (B, T)
        x = self.embed(tokens)                                                   # (B, T, d)
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions)
        rotary = self.rotary(positions) if self.rotary is not None else None
        x = self.dropout(x)
        for layer, block in enumerate(self.blocks):
            x = block(x, rotary, cache, layer, mask)
        if cache is not None:
            cache.length += T
        x = self.final_norm(x)
        if self.head is not None:
            return self.head(x)                                                  # (B, T, vocab)
        return F.linear(x, self.embed.weight)                                    # tied to the embedding


@register("model", "transformer", TransformerConfig)
def build_transformer(config: TransformerConfig, run=None) -> Transformer:
    return Transformer(config)
