"""Beam search and speculative decoding for causal language models (batch of one prompt)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn

from .decoding import Sampling, process_logits

__all__ = ["Beam", "beam_search", "speculative_tokens"]


@dataclass(frozen=True)
class Beam:
    tokens: list[int]      # generated tokens (without the prompt)
    logprob: float         # sum of the tokens' log-probabilities
    score: float           # logprob / length ** length_penalty


@torch.no_grad()
def beam_search(model: nn.Module, prompt: Sequence[int], max_new_tokens: int, num_beams: int = 4,
                length_penalty: float = 1.0, eos_token: int | None = None) -> list[Beam]:
    """The `num_beams` most likely continuations found by beam search, best first.

    Each step extends every live beam by every token and keeps the `num_beams` best sums of
    log-probabilities. A beam that emits `eos_token` is finished; scores divide the log-probability
    by length ** length_penalty so that finished beams of different lengths compare fairly.
    """
    device = next(model.parameters()).device
    block = model.config.block_size
    if len(prompt) + max_new_tokens > block:
        raise ValueError(f"beam search needs prompt + new tokens <= model.block_size ({block})")
    cache = model.new_cache(num_beams, block)
    logits = model(torch.tensor([list(prompt)] * num_beams, device=device), cache)[:, -1]   # (K, V)
    scores = torch.full((num_beams,), float("-inf"), device=device)
    scores[0] = 0.0                                   # all beams start identical: expand only the first
    sequences = torch.zeros(num_beams, 0, dtype=torch.long, device=device)
    finished: list[Beam] = []
    for step in range(max_new_tokens):
        candidates = scores[:, None] + logits.float().log_softmax(-1)                      # (K, V)
        top_scores, flat = candidates.flatten().topk(num_beams)
        beam_index, token = flat // candidates.shape[1], flat % candidates.shape[1]
        sequences = torch.cat([sequences[beam_index], token[:, None]], dim=1)
        scores = top_scores
        if eos_token is not None:
            done = token == eos_token
            for row in done.nonzero().flatten().tolist():
                length = step + 1
                finished.append(Beam(sequences[row].tolist(), float(scores[row]),
                                     float(scores[row]) / length ** length_penalty))
            scores = scores.masked_fill(done, float("-inf"))
            if len(finished) >= num_beams and bool(torch.isinf(scores).all()):
                break
        cache.reorder(beam_index)
        logits = model(token[:, None], cache)[:, -1]
    length = sequences.shape[1]
    live = [Beam(sequences[row].tolist(), float(scores[row]), float(scores[row]) / length ** length_penalty)
            for row in range(num_beams) if torch.isfinite(scores[row])]
    return sorted(finished + live, key=lambda b: b.score, reverse=True)[:num_beams]


@torch.no_grad()
def speculative_tokens(target: nn.Module, draft: nn.Module, prompt: Sequence[int], max_new_tokens: int,
                       generator: torch.Generator, sampling: Sampling = Sampling(), lookahead: int = 4,
                       stats: dict | None = None) -> Iterator[int]:
    """Sample from `target` with `draft` proposing `lookahead` tokens at a time (Leviathan et al. 2023).

    The target scores all proposals in one forward pass. Proposal x is kept with probability
    min(1, p(x) / q(x)); at the first rejection a token is drawn from normalise(max(0, p - q)).
    Both p and q are the filtered sampling distributions, so the output follows exactly the
    distribution that sampling the target alone would give (with temperature 0: the same tokens).
    """
    device = next(target.parameters()).device
    block = min(target.config.block_size, draft.config.block_size)
    if len(prompt) + max_new_tokens + lookahead + 1 > block:
        raise ValueError(f"speculative decoding needs prompt + new tokens + lookahead < context ({block})")
    greedy = sampling.temperature == 0

    def distribution(logits: torch.Tensor) -> torch.Tensor:          # (N, V) -> probabilities
        if greedy:
            return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
        return process_logits(logits, sampling).softmax(-1)

    tokens = list(prompt)
    target_cache, draft_cache = target.new_cache(1, block), draft.new_cache(1, block)
    target_logits = target(torch.tensor([tokens], device=device), target_cache)[:, -1]     # (1, V)
    draft_logits = draft(torch.tensor([tokens], device=device), draft_cache)[:, -1]
    produced = 0
    while produced < max_new_tokens:
        # 1. the draft proposes `lookahead` tokens
        proposals, q = [], []
        for _ in range(lookahead):
            probs = distribution(draft_logits)[0]
            token = int(probs.argmax()) if greedy else int(torch.multinomial(probs, 1, generator=generator))
            proposals.append(token)
            q.append(probs)
            draft_logits = draft(torch.tensor([[token]], device=device), draft_cache)[:, -1]
        # 2. the target scores the last accepted position and every proposal at once
        start = target_cache.length
        scored = target(torch.tensor([proposals], device=device), target_cache)[0]        # (k, V)
        p = distribution(torch.cat([target_logits, scored]))                               # (k + 1, V)
        # 3. accept or correct, left to right
        accepted = 0
        correction = None
        for i, token in enumerate(proposals):
            ratio = p[i, token] / q[i][token].clamp_min(1e-20)
            if greedy or float(torch.rand((), generator=generator, device=device)) < float(ratio):
                if greedy and p[i, token] < 1:
                    correction = int(p[i].argmax())
                    break
                accepted += 1
                continue
            residual = (p[i] - q[i]).clamp_min(0)
            correction = int(torch.multinomial(residual / residual.sum(), 1, generator=generator))
            break
        if correction is None:  # all proposals kept: one more token from the target for free
            correction = int(p[-1].argmax()) if greedy else int(torch.multinomial(p[-1], 1, generator=generator))
        new = proposals[:accepted] + [correction]
        if stats is not None:
            stats["proposed"] = stats.get("proposed", 0) + lookahead
            stats["accepted"] = stats.get("accepted", 0) + accepted
        for token in new[: max_new_tokens - produced]:
            yield token
        produced += len(new)
        tokens += new
        # 4. roll both caches back to the accepted prefix and feed the correction
        target_cache.length = start + accepted
        draft_cache.length = start + accepted
        target_logits = target(torch.tensor([[correction]], device=device), target_cache)[:, -1]
        draft_logits = draft(torch.tensor([[correction]], device=device), draft_cache)[:, -1]
