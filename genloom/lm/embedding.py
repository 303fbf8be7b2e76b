"""Text embeddings from a causal language model: one vector per text, pooled from the hidden states the
model's head reads (the output of its final norm, `d_model` numbers per token).

Pooling: "mean" averages every token of the text (the prompt prefix, e.g. a beginning-of-sequence token,
included); "last" takes the last token's vector, the only one that has seen the whole text in a causal model.
With `normalize` each vector is scaled to length 1 (as OpenAI's embeddings are), so a dot product is the
cosine similarity.

Texts are batched padded on the right: a causal model's real tokens never attend to padding after them, so
each text's vectors are what it gives alone (up to float rounding between batch sizes).
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import GenloomError
from ..nn.lora import lora_modules, route_rows

__all__ = ["POOLINGS", "Pooling", "embed_tokens"]

Pooling = Literal["mean", "last"]
POOLINGS: tuple[str, ...] = ("mean", "last")
BATCH_ROWS = 16           # texts run through the model together


def _final_hidden(model: nn.Module) -> nn.Module:
    norm = getattr(model, "final_norm", None)
    if not isinstance(norm, nn.Module):
        raise GenloomError(f"{type(model).__name__} has no final_norm layer to take embeddings from")
    return norm


@torch.no_grad()
def embed_tokens(model: nn.Module, texts: Sequence[Sequence[int]], pooling: Pooling = "mean",
                 normalize: bool = True, adapter: str | None = None) -> torch.Tensor:
    """(N, d_model) float32 embeddings of token-id texts under `model` (each text at most `block_size` tokens),
    routed through the LoRA adapter `adapter` where the model has adapters."""
    if pooling not in POOLINGS:
        raise GenloomError(f"pooling={pooling!r}: choose one of {', '.join(POOLINGS)}")
    block = model.config.block_size
    for i, text in enumerate(texts):
        if not text:
            raise GenloomError(f"text {i} has no tokens; an embedding needs at least one")
        if len(text) > block:
            raise GenloomError(f"text {i} has {len(text)} tokens; the model reads at most {block} "
                               "(model.block_size) at once")
    device = next(model.parameters()).device
    captured: list[torch.Tensor] = []
    hook = _final_hidden(model).register_forward_hook(lambda module, args, output: captured.append(output))
    out = []
    try:
        for start in range(0, len(texts), BATCH_ROWS):
            rows = [list(t) for t in texts[start:start + BATCH_ROWS]]
            lengths = torch.tensor([len(r) for r in rows], device=device)                 # (B,)
            tokens = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long, device=device)   # (B, T)
            for row, text in enumerate(rows):
                tokens[row, :len(text)] = torch.tensor(text, dtype=torch.long)
            if any(True for _ in lora_modules(model)):
                route_rows(model, [adapter] * len(rows))
            captured.clear()
            model(tokens)
            hidden = captured[-1].float()                                                 # (B, T, d)
            if pooling == "last":
                pooled = hidden[torch.arange(len(rows), device=device), lengths - 1]      # (B, d)
            else:
                real = (torch.arange(tokens.shape[1], device=device)[None, :] < lengths[:, None]).float()  # (B, T)
                pooled = (hidden * real[:, :, None]).sum(1) / lengths[:, None].float()
            out.append(F.normalize(pooled, dim=-1) if normalize else pooled)
    finally:
        hook.remove()
    return torch.cat(out).cpu()
