"""Self-attention: causal (rotary positions, grouped-query heads, a key/value cache, sliding windows, logit
soft-capping) for language models, and full (every token sees every token) for image denoisers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .layers import RMSNorm

__all__ = ["RotaryEmbedding", "RopeScaling", "rope_frequencies", "KVCache", "CausalSelfAttention", "SelfAttention",
           "CrossAttention", "apply_rotary", "softcapped_attention"]


@dataclass(frozen=True)
class RopeScaling:
    """How rotary frequencies are stretched to reach past the context a model was trained on.

    linear: every frequency divided by `factor` (position interpolation, Chen et al. 2023).
    ntk: the base theta raised to theta * factor^(dim / (dim - 2)) ("NTK-aware" scaling, bloc97 2023): the
    lowest frequency is interpolated by `factor`, the highest kept.
    llama3: low frequencies divided by `factor`, high ones kept, a smooth ramp between (Llama 3.1).
    yarn: per-frequency blend of interpolation and extrapolation with a ramp set by `beta_fast` /
    `beta_slow` rotations, and cos/sin scaled by `attention_factor` (Peng et al. 2023).
    longrope: a rescale factor per frequency, `short_factor` up to `original_context` positions and
    `long_factor` once a forward pass reaches past them (Ding et al. 2024, Phi-3), cos/sin scaled by
    `attention_factor`.
    `attention_factor` 0 means the value the method's paper derives from `factor`.
    """

    kind: Literal["none", "linear", "ntk", "llama3", "yarn", "longrope"] = "none"
    factor: float = 1.0
    original_context: int = 0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    truncate: bool = True
    attention_factor: float = 0.0
    short_factor: tuple[float, ...] = ()
    long_factor: tuple[float, ...] = ()


def rope_frequencies(dim: int, theta: float, scaling: RopeScaling | None = None
                     ) -> tuple[torch.Tensor, float, torch.Tensor | None]:
    """Inverse frequencies (dim/2,) in float64, the cos/sin scale, and (longrope) the long-context frequencies."""
    exponents = torch.arange(0, dim, 2, dtype=torch.float64) / dim
    inv_freq = 1.0 / (theta ** exponents)
    kind = scaling.kind if scaling is not None else "none"
    if kind == "none":
        return inv_freq, 1.0, None
    s = scaling
    if kind == "linear":
        return inv_freq / s.factor, 1.0, None
    if kind == "ntk":
        return 1.0 / ((theta * s.factor ** (dim / (dim - 2))) ** exponents), 1.0, None
    if kind == "llama3":
        low_wavelen, high_wavelen = s.original_context / s.low_freq_factor, s.original_context / s.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
        smooth = (s.original_context / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
        blended = (1 - smooth) * scaled / s.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, blended, scaled), 1.0, None
    if kind == "yarn":
        def rotations_dim(rotations: float) -> float:  # the dimension whose wavelength fits `rotations` times
            return dim * math.log(s.original_context / (rotations * 2 * math.pi)) / (2 * math.log(theta))
        low, high = rotations_dim(s.beta_fast), rotations_dim(s.beta_slow)
        if s.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / ((high - low) or 0.001)).clamp(0, 1)
        keep = 1 - ramp                                   # 1: extrapolate (high frequencies), 0: interpolate
        freqs = inv_freq / s.factor * (1 - keep) + inv_freq * keep
        factor = s.attention_factor or (0.1 * math.log(s.factor) + 1.0 if s.factor > 1 else 1.0)
        return freqs, factor, None
    if kind == "longrope":
        short = inv_freq / torch.tensor(s.short_factor, dtype=torch.float64)
        long = inv_freq / torch.tensor(s.long_factor, dtype=torch.float64)
        factor = s.attention_factor or (math.sqrt(1 + math.log(s.factor) / math.log(s.original_context))
                                        if s.factor > 1 else 1.0)
        return short, factor, long
    raise ValueError(f"unknown rotary scaling {kind!r}")


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021), in the "rotate half" layout used by Llama.

    The head dimension is split into two halves (x1, x2); position p rotates each pair
    (x1_i, x2_i) by the angle p * theta^(-2i/d), or by the stretched frequencies of `scaling`.
    """

    def __init__(self, head_dim: int, max_positions: int, theta: float = 10000.0, scaling: RopeScaling | None = None):
        super().__init__()
        inv_freq, factor, long_inv_freq = rope_frequencies(head_dim, theta, scaling)
        for suffix, freqs in (("", inv_freq), ("_long", long_inv_freq)):
            if freqs is None:
                continue
            angles = torch.outer(torch.arange(max_positions, dtype=torch.float64), freqs)  # (P, hs/2)
            angles = torch.cat([angles, angles], dim=-1)                                   # (P, hs)
            cos, sin = angles.cos(), angles.sin()
            if factor != 1.0:
                cos, sin = cos * factor, sin * factor
            self.register_buffer("cos" + suffix, cos.float(), persistent=False)
            self.register_buffer("sin" + suffix, sin.float(), persistent=False)
        self.long_from = scaling.original_context if long_inv_freq is not None else 0

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for integer `positions` of shape (T,) or (B, T).

        With longrope, a pass that reaches past the original context uses the long-context frequencies
        for all its positions (as `transformers` does)."""
        if self.long_from and int(positions.max()) >= self.long_from:
            return self.cos_long[positions], self.sin_long[positions]
        return self.cos[positions], self.sin[positions]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, nh, T, hs) by cos/sin of shape (T, d) or (B, T, d); with d < hs only the first d dims
    of each head turn (partial rotary), the rest pass through."""
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, hs)
    if cos.shape[-1] < x.shape[-1]:
        d = cos.shape[-1]
        return torch.cat([apply_rotary(x[..., :d], cos, sin), x[..., d:]], dim=-1)
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


def softcapped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                         scale: float, cap: float) -> torch.Tensor:
    """Attention whose logits are squashed to (-cap, cap) by cap * tanh(logits / cap) before the softmax
    (Gemma 2); `mask` None means causal. q (B, nh, T, hs); k, v (B, nkv, S, hs)."""
    nh, nkv = q.shape[1], k.shape[1]
    if nkv != nh:
        k, v = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)
    scores = (q @ k.transpose(-2, -1)) * scale                                     # (B, nh, T, S)
    scores = torch.tanh(scores / cap) * cap
    T, S = q.shape[2], k.shape[2]
    if mask is None and T > 1:
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.float().softmax(-1).to(q.dtype) @ v


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
    """Multi-head attention over earlier positions; `n_kv_head < n_head` shares keys/values (GQA).

    Keyword switches (their defaults are genloom's own models): `head_dim` (0: dim / n_head); `qkv_bias` /
    `proj_bias` (None: `bias`); `qk_norm_weight` ("none": RMS-normalise each head without weights, "head":
    with a learned weight per head dimension, "full": over the whole q and k projections with a weight per
    channel, before they are split into heads); `norm_offset` (those weights scale by 1 + w); `scale` (0:
    1/sqrt(head_dim)); `softcap` (0: off); `window` (keys a query sees, itself included; 0: all; the masks
    come from the model, the window only lets a cached pass skip keys no query can see).
    """

    def __init__(self, dim: int, n_head: int, n_kv_head: int, bias: bool, qk_norm: bool, norm_eps: float, *,
                 head_dim: int = 0, qkv_bias: bool | None = None, proj_bias: bool | None = None,
                 qk_norm_weight: Literal["none", "head", "full"] = "none", norm_offset: bool = False,
                 scale: float = 0.0, softcap: float = 0.0, window: int = 0):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, head_dim or dim // n_head
        hs = self.head_dim
        self.qkv = nn.Linear(dim, (n_head + 2 * n_kv_head) * hs, bias=bias if qkv_bias is None else qkv_bias)
        self.proj = nn.Linear(n_head * hs, dim, bias=bias if proj_bias is None else proj_bias)
        self.qk_norm = qk_norm
        self.norm_eps = norm_eps
        self.qk_norm_weight = qk_norm_weight if qk_norm else "none"
        if self.qk_norm_weight != "none":
            q_dim, k_dim = (hs, hs) if self.qk_norm_weight == "head" else (n_head * hs, n_kv_head * hs)
            self.q_norm = RMSNorm(q_dim, norm_eps, offset=norm_offset)
            self.k_norm = RMSNorm(k_dim, norm_eps, offset=norm_offset)
        self.scale, self.softcap, self.window = scale, softcap, window

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None,
                cache: KVCache | None, layer: int, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, _ = x.shape
        nh, nkv, hs = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.qkv(x).split([nh * hs, nkv * hs, nkv * hs], dim=-1)
        if self.qk_norm_weight == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(B, T, nh, hs).transpose(1, 2)   # (B, nh, T, hs)
        k = k.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        if self.qk_norm_weight == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        elif self.qk_norm and self.qk_norm_weight == "none":
            q = F.rms_norm(q, (hs,), eps=self.norm_eps)
            k = F.rms_norm(k, (hs,), eps=self.norm_eps)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if cache is not None:
            k, v = cache.update(layer, k, v)       # (B, nkv, S, hs), S = cached + T
            first = k.shape[2] - T - self.window + 1   # keys before the first query's window
            if self.window and mask is not None and first > 0:
                k, v, mask = k[:, :, first:], v[:, :, first:], mask[..., first:]
        if self.softcap:
            y = softcapped_attention(q, k, v, mask, self.scale or hs ** -0.5, self.softcap)
        else:
            # mask None and T > 1: plain causal attention over this window alone.
            causal = mask is None and T > 1
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=self.scale or None,
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
