"""Token windows: a flat token array per split, read in context-length windows for training, and scored once
over a whole split (what text, code and music data share)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..core.config import MAX_CONTEXT_FACTOR   # how far past its training context a rotary model is stretched
from ..core.errors import DataError, GenloomError
from ..train.data import SPLITS
from .tokenizers import TextTokenizer

__all__ = ["TokenWindows", "score_split", "extend_context", "position_losses", "text_perplexity",
           "SinkCache", "streaming_perplexity"]


class TokenWindows:
    """Windows of a flat token array per split (`_arrays`): what the trainer and evaluators read from text
    and code data alike. Subclasses fill `_arrays`, `tokenizer` and `block_size`."""

    item_name = "tok"
    tokenizer: TextTokenizer
    block_size: int
    _arrays: dict[str, np.ndarray]

    # -- what the trainer and the model need ----------------------------------------------------
    def model_settings(self) -> dict:
        return {"vocab_size": self.tokenizer.vocab_size}

    def save_assets(self, folder: Path) -> None:
        self.tokenizer.save(Path(folder) / "tokenizer.json")

    def num_tokens(self, split: str) -> int:
        return len(self._arrays[split])

    @property
    def items_per_example(self) -> int:
        return self.block_size

    def _check_length(self, source: str) -> None:
        block_size = self.block_size
        for split in SPLITS:
            n = self.num_tokens(split)
            if n <= block_size + 1:
                raise DataError(
                    f"data.path: the {split} split of {source} has {n} tokens, but a training "
                    f"window needs {block_size + 1} (model.block_size + 1). Use more text or a smaller "
                    "model.block_size")

    def sample_indices(self, generator: torch.Generator, n: int) -> torch.Tensor:
        """Start offsets of `n` random training windows."""
        high = self.num_tokens("train") - self.block_size - 1
        return torch.randint(0, high + 1, (n,), generator=generator)

    def val_indices(self, n: int) -> torch.Tensor:
        """The same `n` validation windows every time (evenly spread over the split)."""
        high = self.num_tokens("val") - self.block_size - 1
        return torch.linspace(0, high, n).round().long()

    def batch(self, offsets: torch.Tensor, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-token targets for windows starting at `offsets`: two (B, T) int64 tensors."""
        index = offsets.numpy()[:, None] + np.arange(self.block_size + 1)[None, :]
        window = torch.from_numpy(self._arrays[split][index].astype(np.int64))  # (B, T+1)
        return window[:, :-1], window[:, 1:]

    def full_windows(self, block_size: int, split: str = "val") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Non-overlapping windows covering every token of a split once (the last one shorter)."""
        data = self._arrays[split]
        for start in range(0, len(data) - 1, block_size):
            chunk = torch.from_numpy(data[start : start + block_size + 1].astype(np.int64))
            yield chunk[None, :-1], chunk[None, 1:]


@torch.no_grad()
def score_split(model: nn.Module, data: TokenWindows, batch_size: int = 16, progress: bool = True,
                split: str = "val") -> tuple[float, int]:
    """(total nats, tokens scored) over every token of a prepared data set's split, once."""
    block = model.config.block_size
    device = next(model.parameters()).device
    model.eval()
    total_nats, total_tokens = 0.0, 0
    windows = list(data.full_windows(block, split))
    bar = tqdm(total=len(windows), desc="evaluating", unit="window", disable=not progress, leave=False)
    for start in range(0, len(windows), batch_size):
        group = windows[start:start + batch_size]
        # Full-length windows go together; the shorter last window runs alone.
        for same_length in ([w for w in group if w[0].shape[1] == block], [w for w in group if w[0].shape[1] != block]):
            if not same_length:
                continue
            inputs = torch.cat([w[0] for w in same_length]).to(device)   # (B, T)
            targets = torch.cat([w[1] for w in same_length]).to(device)  # (B, T)
            logits = model(inputs)
            total_nats += float(F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum"))
            total_tokens += targets.numel()
        bar.update(len(group))
    bar.close()
    return total_nats, total_tokens


def extend_context(model: nn.Module, length: int, scaling: str = "keep", factor: float = 1.0) -> nn.Module:
    """A copy of a rotary transformer that reads `length` positions: its own rotary frequencies ("keep"),
    plain extrapolation ("none"), or stretched by `scaling` (linear, ntk, yarn, ...) by `factor` from the
    context it was trained on (`rope_original_context`, else its block size). The weights are shared."""
    import copy
    import dataclasses

    from ..nn.attention import RotaryEmbedding

    cfg = model.config
    if cfg.position != "rope":
        raise GenloomError(f"a model with {cfg.position} positions cannot be scaled past its context of "
                           f"{cfg.block_size}; only rotary positions can")
    original = cfg.rope_original_context or cfg.block_size
    if length > original * MAX_CONTEXT_FACTOR:
        raise GenloomError(f"a context of {length} tokens is longer than this model can be scaled to ({MAX_CONTEXT_FACTOR}x "
                           f"its training context of {original}: {original * MAX_CONTEXT_FACTOR})")
    if scaling == "keep":
        new = dataclasses.replace(cfg, block_size=max(length, cfg.block_size))
    else:
        new = dataclasses.replace(cfg, block_size=max(length, cfg.block_size), rope_scaling=scaling,
                                  rope_factor=factor, rope_original_context=original if scaling != "none" else 0)
    extended = copy.copy(model)              # a shallow copy: the same blocks (weights), new rotary tables
    extended._modules = dict(model._modules)
    extended.config = new
    device = next(model.parameters()).device
    extended.rotary = RotaryEmbedding(new.rotary_dim or new.head_dim, new.block_size, new.rope_theta,
                                      new.rope()).to(device)
    if model.rotary_local is not None:
        extended.rotary_local = RotaryEmbedding(new.rotary_dim or new.head_dim, new.block_size,
                                                new.rope_local_theta).to(device)
    return extended


@torch.no_grad()
def position_losses(model: nn.Module, windows: list[torch.Tensor]) -> torch.Tensor:
    """Mean next-token loss (nats) at each position over token windows (each of length L + 1): (L,)."""
    device = next(model.parameters()).device
    total = None
    for window in windows:
        window = window.to(device)
        logits = model(window[None, :-1])[0].float()                         # (L, V)
        loss = F.cross_entropy(logits, window[1:], reduction="none")        # (L,)
        total = loss if total is None else total + loss
    return total / len(windows)


@torch.no_grad()
def text_perplexity(model: nn.Module, tokens: list[int]) -> float:
    """Perplexity of a token sequence of any length: windows of the context length that advance by half a
    context, each scoring only the tokens the one before did not."""
    block = model.config.block_size
    device = next(model.parameters()).device
    ids = torch.tensor(tokens, device=device)
    nats, count, scored = 0.0, 0, 1          # the first token has nothing before it
    while scored < len(ids):
        start = max(0, scored - block // 2) if scored > block else 0
        end = min(len(ids), start + block + 1)
        window = ids[start:end]
        logits = model(window[None, :-1])[0].float()
        losses = F.cross_entropy(logits, window[1:], reduction="none")     # loss of tokens start+1 .. end-1
        new = losses[scored - start - 1:]
        nats, count, scored = nats + float(new.sum()), count + len(new), end
    return math.exp(nats / max(count, 1))


class SinkCache:
    """Attention sinks (StreamingLLM, Xiao et al. 2023): a key/value cache of fixed size that keeps the first
    `sinks` positions and the most recent `window`, so a rotary model generates without end in bounded memory.

    Positions are slots in the cache, as in the paper: when the oldest window entries are evicted, the keys
    behind them move down and are rotated back by as many positions (a rotation composes: R(p - e) = R(-e) R(p)),
    so no query ever sees a distance longer than the cache."""

    def __init__(self, model: nn.Module, sinks: int = 4, window: int = 0):
        cfg = model.config
        if cfg.position != "rope":
            raise GenloomError(f"attention sinks need rotary positions; this model has {cfg.position} positions")
        window = window or cfg.block_size - sinks
        if sinks < 0 or window < 2 or sinks + window > cfg.block_size:
            raise GenloomError(f"attention sinks: {sinks} sinks + a window of {window} must fit the context of "
                               f"{cfg.block_size} (and the window hold at least 2 positions)")
        self.model, self.sinks, self.window = model, sinks, window
        self.cache = model.new_cache(1, sinks + window)
        rotary = model.rotary
        self._scale = float(rotary.cos[0, 0])                 # cos/sin tables carry YaRN's attention factor
        self._cos, self._sin = rotary.cos, rotary.sin

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.cache.keys + self.cache.values)

    def _evict(self, count: int) -> None:
        from ..nn.attention import apply_rotary

        cache, s, end = self.cache, self.sinks, self.cache.length
        cos, sin = self._cos[count] / self._scale, -self._sin[count] / self._scale      # rotate by -count
        for keys, values in zip(cache.keys, cache.values):
            moved = keys[:, :, s + count:end].clone()
            keys[:, :, s:end - count] = apply_rotary(moved, cos, sin)
            values[:, :, s:end - count] = values[:, :, s + count:end].clone()
        cache.length = end - count

    @torch.no_grad()
    def step(self, token: int) -> torch.Tensor:
        """Feed one token; the logits (V,) of the next."""
        if self.cache.length == self.sinks + self.window:
            self._evict(1)
        device = next(self.model.parameters()).device
        return self.model(torch.tensor([[token]], device=device), self.cache)[0, -1]


@torch.no_grad()
def streaming_perplexity(model: nn.Module, tokens: list[int], sinks: int = 4, window: int = 0) -> float:
    """Perplexity of a token sequence of any length read one token at a time through a `SinkCache`
    (sinks = 0: a plain sliding window of the most recent tokens)."""
    cache = SinkCache(model, sinks, window)
    nats = 0.0
    for i in range(len(tokens) - 1):
        logits = cache.step(tokens[i]).float()
        nats -= float(logits.log_softmax(-1)[tokens[i + 1]])
    return math.exp(nats / max(len(tokens) - 1, 1))
