"""A decoder-only transformer language model covering the GPT-2 and Llama designs and their descendants.

GPT-2 style: learned positions, LayerNorm with bias, GELU (tanh), tied embeddings.
Llama style: rotary positions, RMSNorm, SwiGLU, grouped-query attention, untied head.
Both are pre-norm: x + attn(norm(x)), then x + mlp(norm(x)).

A few switches, all off by default, cover today's open-weights families (genloom/lm/hf.py maps each one):
rotary scaling (linear, Llama 3, YaRN, LongRoPE) and partial rotary; biases on q/k/v only; a head size of its
own; QK-norm with learned weights, per head or over the whole projection; sliding-window attention on all
layers or all but some, with its own rotary base; sandwich or output-only norms; RMSNorm scaling by 1 + w;
embeddings scaled by sqrt(d_model); a fixed attention scale; soft-capped attention and output logits.
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
from ..nn.attention import CausalSelfAttention, KVCache, RopeScaling, RotaryEmbedding
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
    mlp: Literal["gelu", "gelu_tanh", "swiglu", "relu2", "geglu", "geglu_tanh"] = "gelu_tanh"
    mlp_hidden: int = 0                  # 0: 4*d_model, or 8/3*d_model rounded to 64 for the gated ones (*glu)
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = 1e-5
    position: Literal["learned", "rope"] = "learned"
    rope_theta: float = 10000.0
    bias: bool = True                    # biases in linear layers and LayerNorms
    tie_embeddings: bool = True          # the output head shares the token embedding matrix
    qk_norm: bool = False                # RMS-normalise queries and keys per head before attention
    dropout: float = 0.0
    init_std: float = 0.02
    # -- switches for imported open-weights families (genloom/lm/hf.py); the defaults are genloom's own models
    head_size: int = 0                   # size of each attention head; 0: d_model / n_head (Gemma: 256)
    attn_bias: Literal["default", "qkv", "all", "none"] = "default"  # default: as `bias`; qkv: q/k/v only (Qwen2)
    qk_norm_weight: Literal["none", "head", "full"] = "none"  # learned qk_norm weights: per head dimension
    #                                      (Qwen3, Gemma 3) or over the whole q/k projection (OLMo-2)
    norm_offset: bool = False            # RMSNorm scales by (1 + weight), the weight starting at 0 (Gemma)
    block_norms: Literal["pre", "sandwich", "post"] = "pre"  # x + f(norm(x)); x + norm(f(norm(x))) (Gemma 2/3);
    #                                      x + norm(f(x)) (OLMo-2)
    embed_scale: bool = False            # token embeddings times sqrt(d_model) (Gemma)
    attn_scale: float = 0.0              # attention logits scale; 0: 1/sqrt(head size)
    attn_softcap: float = 0.0            # attention logits -> cap * tanh(logits / cap) (Gemma 2); 0 = off
    logit_softcap: float = 0.0           # the same on the output logits; 0 = off
    sliding_window: int = 0              # keys a query sees, itself included (Mistral, Gemma); 0 = the whole context
    global_layers: tuple[int, ...] = ()  # layers that see the whole context despite sliding_window (Gemma: every
    #                                      2nd or 6th)
    rope_local_theta: float = 0.0        # rotary base of the windowed layers, unscaled (Gemma 3); 0: as the others
    rotary_dim: int = 0                  # rotate only the first rotary_dim dims of each head (Phi); 0: all of them
    rope_scaling: Literal["none", "linear", "ntk", "llama3", "yarn", "longrope"] = "none"  # stretched rotary frequencies
    rope_factor: float = 1.0             # how much longer than rope_original_context the context becomes
    rope_original_context: int = 0       # the context the model was pre-trained on (llama3, yarn, longrope)
    rope_low_freq_factor: float = 1.0    # llama3
    rope_high_freq_factor: float = 4.0   # llama3
    rope_beta_fast: float = 32.0         # yarn
    rope_beta_slow: float = 1.0          # yarn
    rope_truncate: bool = True           # yarn: round the ramp's ends to whole dimensions
    rope_attention_factor: float = 0.0   # yarn/longrope cos/sin scale; 0: derived from rope_factor
    rope_short_factor: tuple[float, ...] = ()  # longrope: one factor per frequency, up to rope_original_context
    rope_long_factor: tuple[float, ...] = ()   # longrope: past it
    family: str = ""                     # the Hugging Face model_type it was imported from (export writes that one)

    def __post_init__(self) -> None:
        validate(self, "model")
        require(self.vocab_size >= 0, "model.vocab_size", "must be 0 (from the tokenizer) or positive")
        require(self.block_size >= 1, "model.block_size", "must be at least 1")
        require(1 <= self.n_layer <= 1024, "model.n_layer", "must be from 1 to 1024 (the deepest open models have ~126; a larger value is a typo)")
        require(self.n_head >= 1, "model.n_head", "must be at least 1")
        require(self.head_size > 0 or self.d_model % self.n_head == 0, "model.d_model",
                f"{self.d_model} is not divisible by model.n_head={self.n_head}")
        require(self.head_size >= 0, "model.head_size", "must be 0 (d_model / n_head) or positive")
        require(self.n_kv_head >= 0 and self.n_head % self.kv_heads == 0, "model.n_kv_head",
                f"must divide model.n_head={self.n_head} (or be 0 for n_head)")
        require(self.position != "rope" or self.head_dim % 2 == 0, "model.d_model",
                "rotary positions need an even head size (d_model / n_head)")
        require(0 <= self.dropout < 1, "model.dropout", "must be in [0, 1)")
        require(0 <= self.rotary_dim <= self.head_dim and self.rotary_dim % 2 == 0, "model.rotary_dim",
                f"must be 0 (the whole head) or an even number up to the head size {self.head_dim}")
        require(self.sliding_window >= 0, "model.sliding_window", "must be 0 (off) or positive")
        require(all(0 <= i < self.n_layer for i in self.global_layers), "model.global_layers",
                f"must be layer numbers from 0 to {self.n_layer - 1}")
        require(self.attn_scale >= 0 and self.attn_softcap >= 0 and self.logit_softcap >= 0, "model.attn_scale",
                "attn_scale, attn_softcap and logit_softcap must be 0 (off) or positive")
        if self.rope_scaling != "none":
            require(self.position == "rope", "model.rope_scaling", "needs model.position=rope")
            require(self.rope_factor > 0, "model.rope_factor", "must be positive")
            require(self.rope_scaling in ("linear", "ntk") or self.rope_original_context > 0, "model.rope_original_context",
                    f"must be set for rope_scaling={self.rope_scaling}")
        if self.rope_scaling == "longrope":
            half = (self.rotary_dim or self.head_dim) // 2
            require(len(self.rope_short_factor) == half and len(self.rope_long_factor) == half,
                    "model.rope_short_factor",
                    f"longrope needs {half} short and {half} long factors (one per frequency)")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.head_size or self.d_model // self.n_head

    def windowed(self, layer: int) -> bool:
        """Whether this layer attends to the last `sliding_window` positions only."""
        return self.sliding_window > 0 and layer not in self.global_layers

    def rope(self) -> RopeScaling | None:
        if self.rope_scaling == "none":
            return None
        return RopeScaling(self.rope_scaling, self.rope_factor, self.rope_original_context, self.rope_low_freq_factor,
                           self.rope_high_freq_factor, self.rope_beta_fast, self.rope_beta_slow, self.rope_truncate,
                           self.rope_attention_factor, self.rope_short_factor, self.rope_long_factor)


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig, layer: int = 0):
        super().__init__()
        def norm() -> nn.Module:
            return make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias, cfg.norm_offset)
        pre, post = cfg.block_norms != "post", cfg.block_norms != "pre"
        self.attn_norm = norm() if pre else nn.Identity()
        qkv_bias = {"default": None, "qkv": True, "all": True, "none": False}[cfg.attn_bias]
        proj_bias = {"default": None, "qkv": False, "all": True, "none": False}[cfg.attn_bias]
        self.attn = CausalSelfAttention(
            cfg.d_model, cfg.n_head, cfg.kv_heads, cfg.bias, cfg.qk_norm, cfg.norm_eps, head_dim=cfg.head_dim,
            qkv_bias=qkv_bias, proj_bias=proj_bias, qk_norm_weight=cfg.qk_norm_weight, norm_offset=cfg.norm_offset,
            scale=cfg.attn_scale, softcap=cfg.attn_softcap, window=cfg.sliding_window if cfg.windowed(layer) else 0)
        self.attn_post_norm = norm() if post else None
        self.mlp_norm = norm() if pre else nn.Identity()
        self.mlp = MLP(cfg.d_model, cfg.mlp_hidden or mlp_hidden_size(cfg.d_model, cfg.mlp), cfg.mlp, cfg.bias)
        self.mlp_post_norm = norm() if post else None
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, rotary, cache, layer, mask):
        h = self.attn(self.attn_norm(x), rotary, cache, layer, mask)
        x = x + self.dropout(h if self.attn_post_norm is None else self.attn_post_norm(h))
        h = self.mlp(self.mlp_norm(x))
        return x + self.dropout(h if self.mlp_post_norm is None else self.mlp_post_norm(h))


class Transformer(nn.Module):
    output_modules = ("head",)  # not a hidden layer: optimizers such as Muon leave it to AdamW

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        require(cfg.vocab_size > 0, "model.vocab_size", "is not set (it comes from the tokenizer)")
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_embed = nn.Embedding(cfg.block_size, cfg.d_model) if cfg.position == "learned" else None
        rope = cfg.position == "rope"
        self.rotary = (RotaryEmbedding(cfg.rotary_dim or cfg.head_dim, cfg.block_size, cfg.rope_theta, cfg.rope())
                       if rope else None)
        # Windowed layers with a rotary base of their own (Gemma 3: 10k locally, 1M with scaling globally).
        self.rotary_local = (RotaryEmbedding(cfg.rotary_dim or cfg.head_dim, cfg.block_size, cfg.rope_local_theta)
                             if rope and cfg.rope_local_theta and cfg.sliding_window else None)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, layer) for layer in range(cfg.n_layer))
        self.final_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias, cfg.norm_offset)
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

    @property
    def cache_refill_at(self) -> int:
        """A cache filled with at most this many positions is recomputed when the text grows past them (LongRoPE
        rotates every position by its long-context frequencies then, as transformers' Phi-3 does); 0: never."""
        return self.rotary.long_from if self.rotary is not None else 0

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
        cfg = self.config
        x = self.embed(tokens)                                                   # (B, T, d)
        if cfg.embed_scale:
            x = x * torch.tensor(cfg.d_model ** 0.5, dtype=x.dtype)
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions)
        rotary = self.rotary(positions) if self.rotary is not None else None
        rotary_local = self.rotary_local(positions) if self.rotary_local is not None else rotary
        local_mask = mask
        if cfg.sliding_window and start + T > cfg.sliding_window:
            # Query i (at start + i) sees keys start + i - window + 1 .. start + i (cache slots: with
            # left padding or packed segments, slot distance is position distance).
            queries = torch.arange(start, start + T, device=tokens.device)[:, None]
            keys = torch.arange(start + T, device=tokens.device)[None, :]
            band = (keys <= queries) & (keys > queries - cfg.sliding_window)    # (T, S)
            local_mask = band if mask is None else mask & band
        x = self.dropout(x)
        for layer, block in enumerate(self.blocks):
            local = cfg.windowed(layer)
            x = block(x, rotary_local if local else rotary, cache, layer, local_mask if local else mask)
        if cache is not None:
            cache.length += T
        x = self.final_norm(x)
        logits = self.head(x) if self.head is not None else F.linear(x, self.embed.weight)  # (B, T, vocab)
        if cfg.logit_softcap:
            logits = torch.tanh(logits / cfg.logit_softcap) * cfg.logit_softcap
        return logits


@register("model", "transformer", TransformerConfig)
def build_transformer(config: TransformerConfig, run=None) -> Transformer:
    return Transformer(config)
