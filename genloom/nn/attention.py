"""Self-attention: causal (rotary positions, grouped-query heads, a key/value cache) for language models,
and full (every token sees every token) for image denoisers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RotaryEmbedding", "KVCache", "CausalSelfAttention", "SelfAttention", "CrossAttention", "apply_rotary"]


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021), in the "rotate half" layout used by Llama.

    The head dimension is split into two halves (x1, x2); position p rotates each pair
    (x1_i, x2_i) by the angle p * theta^(-2i/d).
    """

    def __init__(self, head_dim: int, max_positions: int, theta: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float64), inv_freq)  # (P, hs/2)
        angles = torch.cat([angles, angles], dim=-1)                                      # (P, hs)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for integer `positions` of shape (T,) or (B, T)."""
        return self.cos[positions], self.sin[positions]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, nh, T, hs) by cos/sin of shape (T, hs) or (B, T, hs)."""
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, hs)
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class KVCache:
    """Keys and values of past positions, preallocated for `max_length` positions per sequence.

    Every layer writes its new keys and values at `length`; the model advances `length` once per
    forward pass. `key_mask` (B, max_length), when set, marks which key positions a row may attend
    to (left-padded batches of prompts of different lengths).
    """

    def __init__(self, n_layer: int, batch: int, n_kv_head: int, max_length: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (batch, n_kv_head, max_length, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.max_length = max_length
        self.length = 0
        self.key_mask: torch.Tensor | None = None

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nkv, T, hs) after the cached positions; return all keys and values so far."""
        end = self.length + k.shape[2]
        if end > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} positions; {end} were asked for")
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep (and repeat) the given batch rows, e.g. to follow beams."""
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]
        if self.key_mask is not None:
            self.key_mask = self.key_mask[rows]


class CausalSelfAttention(nn.Module):
    """Multi-head attention over earlier positions; `n_kv_head < n_head` shares keys/values (GQA)."""

    def __init__(self, dim: int, n_head: int, n_kv_head: int, bias: bool, qk_norm: bool, norm_eps: float):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, dim // n_head
        self.qkv = nn.Linear(dim, (n_head + 2 * n_kv_head) * self.head_dim, bias=bias)
        self.proj = nn.Linear(n_head * self.head_dim, dim, bias=bias)
        self.qk_norm = qk_norm
        self.norm_eps = norm_eps

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None,
                cache: KVCache | None, layer: int, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, _ = x.shape
        nh, nkv, hs = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.qkv(x).split([nh * hs, nkv * hs, nkv * hs], dim=-1)
        q = q.view(B, T, nh, hs).transpose(1, 2)   # (B, nh, T, hs)
        k = k.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        if self.qk_norm:
            q = F.rms_norm(q, (hs,), eps=self.norm_eps)
            k = F.rms_norm(k, (hs,), eps=self.norm_eps)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if cache is not None:
            k, v = cache.update(layer, k, v)       # (B, nkv, S, hs), S = cached + T
        # mask None and T > 1: plain causal attention over this window alone.
        causal = mask is None and T > 1
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           enable_gqa=nkv != nh)  # (B, nh, T, hs)
        return self.proj(y.transpose(1, 2).reshape(B, T, nh * hs))


class SelfAttention(nn.Module):
    """Multi-head attention in which every token sees every other (image patches, feature-map pixels)."""

    def __init__(self, dim: int, n_head: int, qk_norm: bool = True, eps: float = 1e-6):
        super().__init__()
        if dim % n_head:
            raise ValueError(f"attention width {dim} is not divisible by {n_head} heads")
        self.n_head, self.head_dim, self.qk_norm, self.eps = n_head, dim // n_head, qk_norm, eps
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, D); `mask` (B, N), when given, marks the tokens that may be attended to."""
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x (B, nh, N, hs)
        if self.qk_norm:   # keeps attention logits bounded: stabler training at high learning rates
            q = F.rms_norm(q, (self.head_dim,), eps=self.eps)
            k = F.rms_norm(k, (self.head_dim,), eps=self.eps)
        attn_mask = mask[:, None, None, :] if mask is not None else None                         # (B, 1, 1, N)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)                         # (B, nh, N, hs)
        return self.proj(y.transpose(1, 2).reshape(B, N, D))


class CrossAttention(nn.Module):
    """Queries from one sequence (feature-map pixels), keys and values from another (text tokens).

    `mask` (B, L) marks the context tokens that may be attended to (False = padding).
    """

    def __init__(self, dim: int, context_dim: int, n_head: int, eps: float = 1e-6):
        super().__init__()
        n_head = n_head if dim % n_head == 0 else 1
        self.n_head, self.head_dim, self.eps = n_head, dim // n_head, eps
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, D = x.shape
        L = context.shape[1]
        q = self.q(x).view(B, N, self.n_head, self.head_dim).transpose(1, 2)                       # (B, nh, N, hs)
        k, v = self.kv(context).view(B, L, 2, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)  # 2 x (B, nh, L, hs)
        q = F.rms_norm(q, (self.head_dim,), eps=self.eps)
        k = F.rms_norm(k, (self.head_dim,), eps=self.eps)
        attn_mask = mask[:, None, None, :] if mask is not None else None                          # (B, 1, 1, L)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)                          # (B, nh, N, hs)
        return self.proj(y.transpose(1, 2).reshape(B, N, D))
