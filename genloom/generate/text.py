"""Sampling tokens from a causal language model, with a KV cache and per-sample generators.

Every row of a batch draws from its own `torch.Generator`, so sample i of a batch seeded with
`seed + i` is the same text as a single sample seeded with `seed + i`.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from ..data.tokenizers import END_OF_TEXT, TextTokenizer

__all__ = ["filter_logits", "sample_next", "generate_tokens", "start_token", "TextStream", "sample_text"]


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Scale by temperature and mask tokens outside the top-k / nucleus (Holtzman et al. 2020) with -inf."""
    logits = logits.float() / max(temperature, 1e-8)
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens ranked above it already hold top_p of the mass.
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, generators: list[torch.Generator], temperature: float = 1.0,
                top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """One token per row of `logits` (B, V); temperature 0 means greedy."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = filter_logits(logits, temperature, top_k, top_p).softmax(-1)
    return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators)])


@torch.no_grad()
def generate_tokens(model: nn.Module, prompt: torch.Tensor, max_new_tokens: int,
                    generators: list[torch.Generator], temperature: float = 1.0, top_k: int = 0,
                    top_p: float = 1.0, use_cache: bool = True) -> Iterator[torch.Tensor]:
    """Yield the next token (B,) of every row, `max_new_tokens` times, after prompt (B, T).

    Past the context length the model sees the most recent `block_size` tokens; with the cache,
    the window is moved by half a context at a time and the cache refilled.
    """
    block = model.config.block_size
    tokens = prompt
    cache = None
    pending = tokens[:, -block:]  # what the model has not seen yet
    for _ in range(max_new_tokens):
        if use_cache:
            if cache is None or cache.length + pending.shape[1] > block:
                cache = model.new_cache(tokens.shape[0], block)
                pending = tokens[:, -(block // 2 if tokens.shape[1] >= block else block):]
            logits = model(pending, cache)[:, -1]
        else:
            logits = model(tokens[:, -block:])[:, -1]
        next_token = sample_next(logits, generators, temperature, top_k, top_p)  # (B,)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        pending = next_token[:, None]
        yield next_token


def start_token(tokenizer: TextTokenizer) -> int:
    """What an empty prompt starts from: a newline for character models, end-of-text for BPE."""
    for piece in (END_OF_TEXT, "\n", "Ċ"):
        token = tokenizer.token_id(piece)
        if token is not None:
            return token
    return 0


class TextStream:
    """Turns a growing list of token ids into new text, holding back half-decoded UTF-8."""

    def __init__(self, tokenizer: TextTokenizer):
        self.tokenizer, self.ids, self.emitted = tokenizer, [], 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        new, self.emitted = text[self.emitted:], len(text)
        return new

    def text(self) -> str:
        return self.tokenizer.decode(self.ids)


def encode_prompt(tokenizer: TextTokenizer, prompt: str) -> list[int]:
    ids = tokenizer.encode(prompt) if prompt else []
    return ids or [start_token(tokenizer)]


def sample_text(model: nn.Module, tokenizer: TextTokenizer, prompt: str, max_new_tokens: int, seed: int,
                temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Iterator[str]:
    """Stream the continuation of `prompt` as text pieces."""
    device = next(model.parameters()).device
    prompt_ids = torch.tensor([encode_prompt(tokenizer, prompt)], device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    stream = TextStream(tokenizer)
    for token in generate_tokens(model, prompt_ids, max_new_tokens, [generator], temperature, top_k, top_p):
        piece = stream.push(int(token[0]))
        if piece:
            yield piece
