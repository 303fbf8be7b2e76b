"""Continuous batching for text decoding: sequences join and leave a running batch between steps.

A server decodes every active request together, one token per row per step. A new request is prefilled
on its own and its KV cache merged into the batch's: the shorter of the two caches is shifted right and
its first positions masked, exactly like left padding, so each row's positions (counted from its first
real token) and attention are what they would be alone. Finished rows are dropped from the cache, and the
padding every remaining row masks with them. When the cache is full (the longest row's text reaches the
context length), every row is re-prefilled from its most recent half context, as `generate_tokens` does
for a single batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..nn.attention import KVCache
from ..nn.lora import lora_modules, route_rows
from .constraints import mask_logits
from .decoding import Sampling, left_pad, process_logits, sample_next
from .watermarking import mark_logits

__all__ = ["Sequence", "ContinuousBatch"]


@dataclass
class Sequence:
    """One row: its token ids so far (prompt first), sampling settings and random generator."""

    tokens: list[int]
    sampling: Sampling
    generator: torch.Generator
    owner: Any = None                        # whatever the caller wants back with each token
    adapter: str | None = None               # the LoRA adapter this row is decoded with (None: the base model)
    seen: torch.Tensor | None = field(default=None, repr=False)   # (V,) bool: tokens in the text so far
    counts: torch.Tensor | None = field(default=None, repr=False)  # (V,): generated occurrences of each token
    top: int = 0                             # report this many most likely tokens at each step (`ContinuousBatch.top`)
    constraint: Any = None                   # a `constraints.Constraint`: only its allowed tokens are sampled
    watermark: Any = None                    # a `watermark.text.TextMarker`: marks this row's tokens


def _shift(cache: KVCache, length: int) -> None:
    """Move the cached positions right so the cache ends at `length`, masking the positions opened up."""
    gap = length - cache.length
    if gap == 0:
        return
    B = cache.keys[0].shape[0]
    mask = torch.ones(B, cache.max_length, dtype=torch.bool, device=cache.keys[0].device)
    old = cache.key_mask if cache.key_mask is not None else mask.clone()
    mask[:, :gap] = False
    mask[:, gap:length] = old[:, :cache.length]
    for layer in range(len(cache.keys)):
        for store in (cache.keys, cache.values):
            store[layer][:, :, gap:length] = store[layer][:, :, :cache.length].clone()
    cache.key_mask, cache.length = mask, length


def _compact(cache: KVCache) -> None:
    """Drop the leading positions that every row masks (left padding left behind by rows that finished), so
    the cache only fills up when a row's own text does. Positions are counted from each row's first real
    token, so moving every row left by the same amount changes nothing they compute."""
    if cache.key_mask is None or cache.length == 0:
        return
    used = cache.key_mask[:, :cache.length]
    lead = int(used.any(0).long().argmax()) if used.any() else cache.length
    if lead == 0:
        return
    keep = cache.length - lead
    for layer in range(len(cache.keys)):
        for store in (cache.keys, cache.values):
            store[layer][:, :, :keep] = store[layer][:, :, lead:cache.length].clone()
    mask = torch.ones_like(cache.key_mask)
    mask[:, :keep] = used[:, lead:]
    cache.length = keep
    cache.key_mask = None if bool(mask[:, :keep].all()) else mask


def _merge(a: KVCache, b: KVCache) -> KVCache:
    """The rows of `a` then those of `b` in one cache."""
    length = max(a.length, b.length)
    for cache in (a, b):
        _shift(cache, length)
    if a.key_mask is None and b.key_mask is None:
        mask = None
    else:
        masks = [c.key_mask if c.key_mask is not None else
                 torch.ones(c.keys[0].shape[0], c.max_length, dtype=torch.bool, device=c.keys[0].device) for c in (a, b)]
        mask = torch.cat(masks)
    a.keys = [torch.cat([x, y]) for x, y in zip(a.keys, b.keys)]
    a.values = [torch.cat([x, y]) for x, y in zip(a.values, b.values)]
    a.key_mask = mask
    return a


class ContinuousBatch:
    """Rows decoded together; `add` and `remove` between `step`s."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.block = model.config.block_size
        self.vocab = model.config.vocab_size
        self.device = next(model.parameters()).device
        self.rows: list[Sequence] = []
        self.cache: KVCache | None = None
        self.logits: torch.Tensor | None = None       # (B, V): each row's next-token logits
        self.adapted = any(True for _ in lora_modules(model))   # rows may use different LoRA adapters
        self.top: list[list[tuple[int, float]]] = []   # after a step: each row's `top` likeliest (token, logprob)

    def _route(self, rows: list[Sequence]) -> None:
        if self.adapted:
            route_rows(self.model, [r.adapter for r in rows])

    def __len__(self) -> int:
        return len(self.rows)

    def _prefill(self, rows: list[Sequence], refill: bool = False) -> tuple[KVCache, torch.Tensor]:
        """A cache of `rows` and their next-token logits. A prompt longer than the context, or any text when
        the cache is being refilled, keeps its most recent half context."""
        half = self.block // 2
        windows = [r.tokens[-half:] if refill or len(r.tokens) > self.block else r.tokens for r in rows]
        tokens, valid = left_pad(windows, self.device)                                  # (B, T)
        self._route(rows)
        cache = self.model.new_cache(len(rows), self.block)
        if not valid.all():
            cache.key_mask = torch.ones(len(rows), self.block, dtype=torch.bool, device=self.device)
            cache.key_mask[:, :tokens.shape[1]] = valid
        return cache, self.model(tokens, cache)[:, -1]

    @torch.no_grad()
    def add(self, rows: list[Sequence]) -> None:
        """Prefill `rows` and join them to the batch."""
        if not rows:
            return
        for row in rows:
            row.seen = torch.zeros(self.vocab, dtype=torch.bool, device=self.device)
            row.seen[torch.tensor(row.tokens, device=self.device)] = True
            row.counts = torch.zeros(self.vocab, device=self.device) if row.sampling.counts_tokens else None
        cache, logits = self._prefill(rows)
        if self.cache is None:
            self.cache, self.logits = cache, logits
        else:
            self.cache = _merge(self.cache, cache)
            self.logits = torch.cat([self.logits, logits])
        self.rows += rows

    @torch.no_grad()
    def step(self) -> tuple[list[int], list[float]]:
        """Sample one token for every row; returns (tokens, their log-probabilities), in row order."""
        if not self.rows:
            return [], []
        seen = torch.stack([r.seen for r in self.rows])
        counts = None
        if any(r.counts is not None for r in self.rows):
            zeros = torch.zeros(self.vocab, device=self.device)
            counts = torch.stack([r.counts if r.counts is not None else zeros for r in self.rows])
        logits = mask_logits(self.logits, [r.constraint for r in self.rows])   # each row: its grammar's tokens
        if any(r.watermark is not None for r in self.rows):           # each marked row: its watermark
            logits = mark_logits(logits, [r.tokens[-16:] for r in self.rows], [r.watermark for r in self.rows],
                                 [r.sampling for r in self.rows], seen, counts, process_logits)
        tokens = sample_next(logits, [r.generator for r in self.rows], [r.sampling for r in self.rows], seen,
                             counts)
        every = self.logits.float().log_softmax(-1)
        logprobs = every.gather(1, tokens[:, None])[:, 0]
        most = max(r.top for r in self.rows)
        self.top = [[] for _ in self.rows]
        if most:
            values, indices = every.topk(min(most, self.vocab), dim=-1)
            self.top = [list(zip(i[:r.top], v[:r.top])) for r, i, v in
                        zip(self.rows, indices.tolist(), values.tolist())]
        for row, token in zip(self.rows, tokens.tolist()):
            row.tokens.append(token)
            row.seen[token] = True
            if row.counts is not None:
                row.counts[token] += 1
            if row.constraint is not None:
                row.constraint.advance(token)
        if self.cache.length + 1 > self.block:                   # full: start again from the recent half
            self.cache, self.logits = self._prefill(self.rows, refill=True)
        else:
            self._route(self.rows)
            self.logits = self.model(tokens[:, None], self.cache)[:, -1]
        return tokens.tolist(), logprobs.tolist()

    def remove(self, keep: list[bool]) -> None:
        """Drop the rows whose `keep` is False."""
        if all(keep):
            return
        rows = torch.tensor([i for i, k in enumerate(keep) if k], dtype=torch.long, device=self.device)
        self.rows = [r for r, k in zip(self.rows, keep) if k]
        if not self.rows:
            self.cache = self.logits = None
            return
        self.cache.reorder(rows)
        _compact(self.cache)
        self.logits = self.logits[rows]
