"""Weight-only int8 quantization for fast decoding on CPUs.

Decoding one token at a time reads every weight once per step, so its speed is set by memory
bandwidth. Storing linear weights as int8 with one fp32 scale per output row (absmax / 127) reads
4x fewer bytes than fp32; activations stay in bf16. This is the "q8_0"-style trade that llama.cpp
makes: a small rounding error in exchange for speed. Training never uses it.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Int8Linear", "quantize_int8", "int8_available"]


def int8_available() -> bool:
    return hasattr(torch, "_weight_int8pack_mm")


class Int8Linear(nn.Module):
    """y = x W^T (+ b) with W stored as int8 rows and per-row scales."""

    def __init__(self, linear: nn.Linear | None = None, weight: torch.Tensor | None = None):
        super().__init__()
        weight = (linear.weight if linear is not None else weight).detach().float()
        scale = weight.abs().amax(dim=1).clamp_min(1e-12) / 127.0                 # (out,)
        self.register_buffer("weight", torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(torch.bfloat16))
        bias = linear.bias if linear is not None else None
        self.register_buffer("bias", bias.detach().float().clone() if bias is not None else None)
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1]).to(torch.bfloat16).contiguous()            # (M, in)
        y = torch._weight_int8pack_mm(flat, self.weight, self.scale).to(x.dtype)   # (M, out)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear (and a tied output head) of an eval-mode model by int8 weights, in place."""
    if not int8_available():
        from ..core.errors import GenloomError
        raise GenloomError(f"int8 decoding needs torch._weight_int8pack_mm, which torch {torch.__version__} lacks")
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, child_name, Int8Linear(child))
    if getattr(model, "head", "absent") is None and hasattr(model, "embed"):
        model.head = Int8Linear(weight=model.embed.weight)  # tied: quantize a copy for the output side
    model.quantized = "int8"
    return model

