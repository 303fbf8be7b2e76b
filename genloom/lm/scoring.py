"""Scoring text under a causal language model: each token's log-probability given the tokens before it, and
the most likely alternatives at each position (what evaluation harnesses ask a server for: `echo` with
`logprobs` on /v1/completions).

A text longer than the model's context is scored in windows: every position is predicted from at most
`block_size` tokens before it, the windows advancing by half a context (lm-eval's rolling log-likelihood
does the same), so a position never sees less than half a context unless the text itself is shorter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..nn.lora import lora_modules, route_rows

__all__ = ["TokenScores", "score_tokens"]


@dataclass
class TokenScores:
    """`logprobs[i]`: log p(token i | tokens before it), None for the first token (nothing predicts it);
    `top[i]`: the `top_n` most likely tokens at position i as (token id, log-probability), best first (None for
    the first token)."""

    tokens: list[int]
    logprobs: list[float | None]
    top: list[list[tuple[int, float]] | None]


@torch.no_grad()
def score_tokens(model: nn.Module, tokens: list[int], top_n: int = 0, adapter: str | None = None) -> TokenScores:
    """Score `tokens` (one text) under `model`, routed through the LoRA adapter `adapter` where it has them."""
    if any(True for _ in lora_modules(model)):
        route_rows(model, [adapter])
    device = next(model.parameters()).device
    block = model.config.block_size
    ids = torch.tensor(tokens, device=device)
    logprobs: list[float | None] = [None]
    top: list[list[tuple[int, float]] | None] = [None]
    start, length = 1, len(tokens)
    while start < length:
        end = length if length <= block else min(length, start + max(1, block // 2))
        begin = max(0, end - block)
        window = model(ids[begin:end][None])[0].float().log_softmax(-1)       # (end - begin, V)
        predicted = window[start - 1 - begin:end - 1 - begin]                 # positions start..end-1
        logprobs += predicted.gather(1, ids[start:end, None])[:, 0].tolist()
        if top_n:
            values, indices = predicted.topk(min(top_n, predicted.shape[-1]), dim=-1)
            top += [list(zip(i, v)) for i, v in zip(indices.tolist(), values.tolist())]
        else:
            top += [[] for _ in range(end - start)]
        start = end
    return TokenScores(list(tokens), logprobs, top)
