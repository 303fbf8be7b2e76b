"""Norms and feed-forward blocks shared by the model families."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RMSNorm", "make_norm", "MLP", "mlp_hidden_size", "GATED"]

Activation = Literal["gelu", "gelu_tanh", "swiglu", "relu2", "geglu", "geglu_tanh"]
GATED = ("swiglu", "geglu", "geglu_tanh")   # activation(gate) * value


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019): x / rms(x) * weight, computed in fp32.

    `offset=True` scales by (1 + weight) instead, with the weight starting at 0 (Gemma's layout).
    """

    def __init__(self, dim: int, eps: float = 1e-6, offset: bool = False):
        super().__init__()
        self.eps, self.offset = eps, offset
        self.weight = nn.Parameter(torch.zeros(dim) if offset else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        if self.offset:
            return (normed * (1.0 + self.weight.float())).to(x.dtype)
        return self.weight * normed.to(x.dtype)


def make_norm(kind: Literal["layernorm", "rmsnorm"], dim: int, eps: float, bias: bool,
              offset: bool = False) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps, bias=bias)
    return RMSNorm(dim, eps=eps, offset=offset)


def mlp_hidden_size(dim: int, activation: Activation, multiple_of: int = 64) -> int:
    """4*dim, or for gated activations (SwiGLU, GeGLU) 2/3 of that (same parameter count), rounded up to
    `multiple_of`."""
    if activation not in GATED:
        return 4 * dim
    hidden = int(8 * dim / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class MLP(nn.Module):
    """Position-wise feed-forward: up-projection, activation, down-projection.

    For the gated ones (Shazeer 2020: SwiGLU with SiLU, GeGLU with GELU, exact or tanh-approximated)
    `up` holds the gate and the value side by side: [gate; value].
    """

    def __init__(self, dim: int, hidden: int, activation: Activation, bias: bool):
        super().__init__()
        self.activation = activation
        self.up = nn.Linear(dim, 2 * hidden if activation in GATED else hidden, bias=bias)
        self.down = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if self.activation == "swiglu":
            gate, value = h.chunk(2, dim=-1)
            h = F.silu(gate) * value
        elif self.activation in ("geglu", "geglu_tanh"):
            gate, value = h.chunk(2, dim=-1)
            h = F.gelu(gate, approximate="tanh" if self.activation == "geglu_tanh" else "none") * value
        elif self.activation == "gelu":
            h = F.gelu(h)
        elif self.activation == "gelu_tanh":
            h = F.gelu(h, approximate="tanh")
        else:  # relu2: ReLU squared (So et al. 2021, "Primer")
            h = F.relu(h).square()
        return self.down(h)
