"""Sampling tokens from a causal language model: KV cache, batches of prompts, per-row generators.

Every row of a batch draws from its own `torch.Generator`, so sample i of a batch seeded with
`seed + i` is the same text as a single sample seeded with `seed + i`. Prompts of different
lengths are left-padded and masked, so each row continues as if it were alone.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .constraints import mask_logits
from .tokenizers import END_OF_TEXT, TextTokenizer

__all__ = ["Sampling", "process_logits", "sample_next", "generate_tokens", "start_token", "encode_prompt",
           "TextStream", "StopMatcher", "failure_table", "advance", "ban_repeated_ngrams", "contrastive_search"]


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen from the model's logits."""

    temperature: float = 1.0         # 0 = greedy
    top_k: int = 0                   # keep the k most likely tokens; 0 = all
    top_p: float = 1.0               # nucleus (Holtzman et al. 2020): smallest set holding top_p of the mass
    min_p: float = 0.0               # drop tokens less likely than min_p x the most likely one
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the text (Keskar et al. 2019)
    # OpenAI's: each generated occurrence of a token lowers its logit by frequency_penalty, its first one also by
    # presence_penalty (the prompt's tokens are not counted); logit_bias adds to the logits of the tokens it names
    # ({token id: bias}, kept as sorted pairs so a Sampling stays hashable); -100 bans a token, +100 forces it.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    no_repeat_ngram: int = 0         # > 0: never a token that repeats an n-gram already in the text (prompt included)

    def __post_init__(self) -> None:
        if isinstance(self.logit_bias, dict):
            object.__setattr__(self, "logit_bias", tuple(sorted((int(k), float(v)) for k, v in self.logit_bias.items())))
        checks = [(self.temperature >= 0, "temperature must be >= 0"), (self.top_k >= 0, "top_k must be >= 0"),
                  (0 < self.top_p <= 1, "top_p must be in (0, 1]"), (0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
                  (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
                  (-2 <= self.presence_penalty <= 2, "presence_penalty must be in [-2, 2]"),
                  (-2 <= self.frequency_penalty <= 2, "frequency_penalty must be in [-2, 2]"),
                  (all(token >= 0 and -100 <= bias <= 100 for token, bias in self.logit_bias),
                   "logit_bias maps token ids (>= 0) to biases in [-100, 100]"),
                  (self.no_repeat_ngram >= 0, "no_repeat_ngram must be >= 0")]
        for ok, message in checks:
            if not ok:
                from ..core.errors import GenloomError
                raise GenloomError(message)

    @property
    def counts_tokens(self) -> bool:
        """Whether this setting needs each row's counts of generated tokens (the OpenAI penalties)."""
        return self.presence_penalty != 0 or self.frequency_penalty != 0


def process_logits(logits: torch.Tensor, sampling: Sampling, seen: torch.Tensor | None = None,
                   counts: torch.Tensor | None = None) -> torch.Tensor:
    """Apply the logit bias, the presence and frequency penalties (`counts` (B, V): each token's generated
    occurrences), the repetition penalty (`seen` (B, V): tokens in the text), temperature, top-k, top-p and min-p
    to logits (B, V); masked = -inf."""
    logits = logits.float()
    if sampling.logit_bias:
        ids = torch.tensor([t for t, _ in sampling.logit_bias], device=logits.device)
        bias = torch.tensor([b for _, b in sampling.logit_bias], device=logits.device)
        logits = logits.index_add(-1, ids, bias.expand(logits.shape[0], -1))
    if counts is not None and sampling.counts_tokens:
        counts = counts.float()
        logits = logits - sampling.frequency_penalty * counts - sampling.presence_penalty * (counts > 0).float()
    if seen is not None and sampling.repetition_penalty != 1.0:
        penalised = torch.where(logits > 0, logits / sampling.repetition_penalty, logits * sampling.repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    logits = logits / max(sampling.temperature, 1e-8)
    if 0 < sampling.top_k < logits.shape[-1]:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens ranked above it already hold top_p of the mass.
        drop_sorted = (probs.cumsum(-1) - probs) >= sampling.top_p
        logits = logits.masked_fill(torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted), float("-inf"))
    if sampling.min_p > 0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < sampling.min_p * probs.max(-1, keepdim=True).values, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, generators: Sequence[torch.Generator],
                sampling: Sampling | Sequence[Sampling] = Sampling(), seen: torch.Tensor | None = None,
                counts: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row of `logits` (B, V); `sampling` is one setting for every row or one per row. `seen`
    and `counts` (B, V) feed the repetition and the presence/frequency penalties."""
    if not isinstance(sampling, Sampling):
        if len(set(sampling)) == 1:
            return sample_next(logits, generators, sampling[0], seen, counts)
        return torch.cat([sample_next(logits[i:i + 1], [generators[i]], s, None if seen is None else seen[i:i + 1],
                                      None if counts is None else counts[i:i + 1])
                          for i, s in enumerate(sampling)])
    if sampling.temperature == 0:
        if sampling.logit_bias or sampling.counts_tokens or (seen is not None and sampling.repetition_penalty != 1.0):
            plain = Sampling(repetition_penalty=sampling.repetition_penalty, presence_penalty=sampling.presence_penalty,
                             frequency_penalty=sampling.frequency_penalty, logit_bias=sampling.logit_bias)
            logits = process_logits(logits, plain, seen, counts)
        return logits.argmax(-1)
    probs = process_logits(logits, sampling, seen, counts).softmax(-1)
    return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators)])


def left_pad(prompts: Sequence[Sequence[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens (B, T) padded on the left with 0, and a mask (B, T) that is False on the padding."""
    length = max(len(p) for p in prompts)
    tokens = torch.zeros(len(prompts), length, dtype=torch.long, device=device)
    mask = torch.zeros(len(prompts), length, dtype=torch.bool, device=device)
    for row, prompt in enumerate(prompts):
        tokens[row, length - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[row, length - len(prompt):] = True
    return tokens, mask


@torch.no_grad()
def generate_tokens(model: nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                    generators: Sequence[torch.Generator], sampling: Sampling | Sequence[Sampling] = Sampling(),
                    use_cache: bool = True,
                    first_allowed: torch.Tensor | None = None,
                    constraints: Sequence | None = None,
                    watermarks: Sequence | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (next token (B,), its log-probability under the model (B,)) `max_new_tokens` times.

    `sampling` applies to every row, or (a sequence) one per row: the server batches requests with
    different settings together.

    Past the context length the model sees the most recent `block_size` tokens; with the cache the
    window moves by half a context at a time and the cache is refilled.

    `first_allowed` (B, V) bool limits each row's first token to the True ones (token healing).
    `constraints[i]` (a `constraints.Constraint` or None) limits row i to its grammar's tokens; once it is
    `done`, the row's further tokens are unconstrained and the caller ends the row.
    `watermarks[i]` (a `watermark.text.TextMarker` or None) marks row i's tokens (`lm.watermarking`).
    """
    device = next(model.parameters()).device
    block = model.config.block_size
    tokens, valid = left_pad(prompts, device)                               # (B, T) each
    B = tokens.shape[0]
    vocab = model.config.vocab_size
    seen = torch.zeros(B, vocab, dtype=torch.bool, device=device)
    seen.scatter_(1, tokens, valid)
    rows = sampling if not isinstance(sampling, Sampling) else [sampling]
    counts = torch.zeros(B, vocab, device=device) if any(s.counts_tokens for s in rows) else None
    cache, pending = None, None
    refill_at = getattr(model, "cache_refill_at", 0)
    for _ in range(max_new_tokens):
        if not use_cache:
            logits = torch.cat([model(tokens[row, valid[row]][None, -block:])[:, -1] for row in range(B)])
        else:
            # Refill past the context, or when the model recomputes every position once the text grows past
            # `cache_refill_at` (LongRoPE's switch to its long-context frequencies).
            if cache is None or cache.length + pending.shape[1] > block or (
                    refill_at and cache.length <= refill_at < cache.length + pending.shape[1]):
                window = tokens.shape[1] if tokens.shape[1] <= block else block // 2
                cache = model.new_cache(B, block)
                cache.key_mask = None if valid[:, -window:].all() else torch.ones(B, block, dtype=torch.bool, device=device)
                if cache.key_mask is not None:
                    cache.key_mask[:, :window] = valid[:, -window:]
                pending = tokens[:, -window:]
            logits = model(pending, cache)[:, -1]                            # (B, V)
        if first_allowed is not None:
            logits = logits.masked_fill(~first_allowed.to(logits.device), float("-inf"))
            first_allowed = None
        if constraints is not None:
            logits = mask_logits(logits, constraints)
        marked = logits
        if watermarks is not None:
            from .watermarking import histories, mark_logits
            marked = mark_logits(logits, histories(tokens, valid), watermarks, sampling, seen, counts, process_logits)
        if any(s.no_repeat_ngram for s in rows):
            marked = ban_repeated_ngrams(marked, tokens, valid, [s.no_repeat_ngram for s in rows] * (B // len(rows)))
        next_token = sample_next(marked, generators, sampling, seen, counts)  # (B,)
        if constraints is not None:
            for c, token in zip(constraints, next_token.tolist()):
                if c is not None and not c.done:
                    c.advance(token)
        logprob = logits.float().log_softmax(-1).gather(1, next_token[:, None])[:, 0]
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        valid = torch.cat([valid, torch.ones(B, 1, dtype=torch.bool, device=device)], dim=1)
        seen[torch.arange(B, device=device), next_token] = True
        if counts is not None:
            counts[torch.arange(B, device=device), next_token] += 1
        pending = next_token[:, None]
        yield next_token, logprob


def ban_repeated_ngrams(logits: torch.Tensor, tokens: torch.Tensor, valid: torch.Tensor, sizes: Sequence[int]
                        ) -> torch.Tensor:
    """Mask (-inf) each row's tokens that would complete an n-gram (n = sizes[row]) already in its text."""
    logits = logits.clone()
    for row, n in enumerate(sizes):
        if not n:
            continue
        seq = tokens[row, valid[row]].tolist()
        if len(seq) < n:
            continue
        tail = tuple(seq[len(seq) - n + 1:]) if n > 1 else ()
        banned = {seq[i + n - 1] for i in range(len(seq) - n + 1) if tuple(seq[i:i + n - 1]) == tail}
        if banned:
            logits[row, list(banned)] = float("-inf")
    return logits


@torch.no_grad()
@torch.no_grad()
def contrastive_search(model: nn.Module, prompt: Sequence[int], max_new_tokens: int, top_k: int = 4,
                       alpha: float = 0.6, use_cache: bool = True) -> list[int]:
    """Contrastive search (Su et al. 2022, eq. 5): of the `top_k` most likely next tokens, the one maximising
    (1 - alpha) * p(v) - alpha * max_j cos(h_v, h_j), h the final hidden states (after the last norm) of the
    candidate and of the text before it; alpha 0 is greedy. Returns the generated token ids.

    With the KV cache (the default) each step is one forward pass of the k candidates, one position each, over
    k copies of the cache; the chosen candidate's copy is kept, and its logits are the next step's. Past the
    context the cache is refilled from the last half context (as `generate_tokens` does) and the candidates
    are compared with the hidden states of the last `block_size - 1` tokens. `use_cache=False` recomputes the
    last `block_size - 1` tokens and every candidate at each step (slower; the same tokens within the first
    context)."""
    if not use_cache:
        return _contrastive_search_uncached(model, prompt, max_new_tokens, top_k, alpha)
    block = model.config.block_size
    device = next(model.parameters()).device
    hidden: list[torch.Tensor] = []
    hook = model.final_norm.register_forward_hook(lambda module, inputs, output: hidden.append(output))
    tokens = list(prompt)
    past: list[torch.Tensor] = []                    # normalised hidden states of the tokens so far, (d,) each

    def refill() -> tuple:
        window = tokens[-(block // 2):] if len(tokens) >= block else tokens
        cache = model.new_cache(top_k, block)
        hidden.clear()
        logits = model(torch.tensor([window], device=device).expand(top_k, -1), cache)[0, -1]
        if not past:
            past.extend(F.normalize(hidden[-1][0].float(), dim=-1).unbind(0))
        return cache, logits

    try:
        cache, logits = refill()
        for _ in range(max_new_tokens):
            if cache.length + 1 > block:
                cache, logits = refill()
            p, candidates = logits.float().softmax(-1).topk(top_k)          # (k,)
            hidden.clear()
            logits_k = model(candidates[:, None], cache)[:, -1]            # (k, V): each candidate's next step
            h = F.normalize(hidden[-1][:, -1].float(), dim=-1)              # (k, d)
            context = torch.stack(past[-(block - 1):])                      # (T, d)
            score = (1 - alpha) * p - alpha * (h @ context.T).max(-1).values
            best = int(score.argmax())
            tokens.append(int(candidates[best]))
            past.append(h[best])
            cache.reorder(torch.full((top_k,), best, device=device))
            logits = logits_k[best]
    finally:
        hook.remove()
    return tokens[len(prompt):]


@torch.no_grad()
def _contrastive_search_uncached(model: nn.Module, prompt: Sequence[int], max_new_tokens: int, top_k: int,
                                 alpha: float) -> list[int]:
    block = model.config.block_size
    device = next(model.parameters()).device
    hidden: list[torch.Tensor] = []
    hook = model.final_norm.register_forward_hook(lambda module, inputs, output: hidden.append(output))
    try:
        tokens = list(prompt)
        for _ in range(max_new_tokens):
            context = torch.tensor([tokens[-(block - 1):]], device=device)      # room for one candidate
            hidden.clear()
            probs = model(context)[0, -1].float().softmax(-1)                   # (V,)
            past = F.normalize(hidden[-1][0].float(), dim=-1)                   # (T, d)
            p, candidates = probs.topk(top_k)                                   # (k,)
            hidden.clear()
            model(torch.cat([context.expand(top_k, -1), candidates[:, None]], dim=1))
            h = F.normalize(hidden[-1][:, -1].float(), dim=-1)                  # (k, d)
            degeneration = (h @ past.T).max(-1).values                          # (k,)
            score = (1 - alpha) * p - alpha * degeneration
            tokens.append(int(candidates[int(score.argmax())]))
    finally:
        hook.remove()
    return tokens[len(prompt):]


def start_token(tokenizer: TextTokenizer) -> int:
    """What an empty prompt starts from: end-of-text for BPE, a newline for character models."""
    for piece in (END_OF_TEXT, "\n"):
        token = tokenizer.token_id(piece)
        if token is not None:
            return token
    return 0


def encode_prompt(tokenizer: TextTokenizer, prompt: str) -> list[int]:
    """The prompt's token ids, after the tokenizer's `prompt_prefix` (a beginning-of-sequence token) unless
    the text already starts with it (a chat template that writes it)."""
    ids = tokenizer.encode(prompt) if prompt else []
    prefix = tokenizer.prompt_prefix
    if prefix and ids[:len(prefix)] != prefix:
        ids = prefix + ids
    return ids or [start_token(tokenizer)]


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


@functools.lru_cache(maxsize=256)
def failure_table(pattern: str) -> tuple[int, ...]:
    """Knuth-Morris-Pratt's table: entry k is the length of the longest proper prefix of pattern[:k + 1] that
    is also its suffix (how much of a partial match survives a mismatch). O(len(pattern)); cached, so the
    rows of a batch that share stop strings build it once."""
    table, length = [0] * len(pattern), 0
    for k in range(1, len(pattern)):
        while length and pattern[k] != pattern[length]:
            length = table[length - 1]
        if pattern[k] == pattern[length]:
            length += 1
        table[k] = length
    return tuple(table)


def advance(pattern: str, table: Sequence[int], state: int, char: str) -> int:
    """The state after `char` of a Knuth-Morris-Pratt matcher for `pattern` (state = how many of the pattern's
    first characters the text ends with; len(pattern) = a match ends here)."""
    if state == len(pattern):
        state = table[state - 1]
    while state and pattern[state] != char:
        state = table[state - 1]
    return state + 1 if pattern[state] == char else 0


class StopMatcher:
    """Cuts streamed text at the first stop string, holding back text that may begin one.

    Linear time: each stop string has a Knuth-Morris-Pratt matcher whose state is the longest beginning of
    that stop the text ends with, so a character costs O(number of stops) amortised, whatever their length,
    and the text held back is the longest such beginning. The cut is before the stop that completes first
    (the longest, if several complete on the same character), so the result does not depend on how the
    text is split into pieces.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self._tables = [failure_table(s) for s in self.stops]
        self._states = [0] * len(self.stops)
        self.buffer = ""                       # text held back: it may begin a stop string
        self.stopped = False

    def push(self, piece: str) -> str:
        """Text that is safe to emit now (never part of a stop string)."""
        if self.stopped:
            return ""
        states, stops, tables = self._states, self.stops, self._tables
        for at, char in enumerate(piece):
            found = 0
            for k, stop in enumerate(stops):
                states[k] = advance(stop, tables[k], states[k], char)
                if states[k] == len(stop):
                    found = max(found, len(stop))
            if found:
                text = self.buffer + piece[:at + 1]
                self.stopped, self.buffer = True, ""
                return text[:len(text) - found]
        text = self.buffer + piece
        hold = max(states, default=0)
        out, self.buffer = text[:len(text) - hold], text[len(text) - hold:]
        return out

    def flush(self) -> str:
        out, self.buffer = ("" if self.stopped else self.buffer), ""
        return out


def stream_text(model: nn.Module, tokenizer: TextTokenizer, prompt: str, max_new_tokens: int, seed: int,
                sampling: Sampling = Sampling(), stop: Sequence[str] = (), use_cache: bool = True,
                matcher=None, prompt_ids: Sequence[int] | None = None, first_allowed: torch.Tensor | None = None,
                skip: str = "", watermark=None, constraint=None) -> Iterator[str]:
    """Stream the continuation of `prompt` as text pieces, ending before any of the `stop` strings (or where
    `matcher`, an object with StopMatcher's push/flush/stopped, ends it). `prompt_ids`: the prompt's tokens
    when they are not simply its encoding (code prompts, fill-in-the-middle); `first_allowed` and `skip`: the
    first token must be one of these, and the text `skip` (the prompt's end, healed) is not yielded again.
    `watermark`: a `watermark.text.TextWatermark` that marks the text. `constraint`: a `constraints.Constraint`
    (a grammar) every token keeps to; the text ends where it is done."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    stream, matcher = TextStream(tokenizer), matcher or StopMatcher(stop)
    ids = list(prompt_ids) if prompt_ids is not None else encode_prompt(tokenizer, prompt)
    for token, _ in generate_tokens(model, [ids], max_new_tokens, [generator], sampling, use_cache,
                                    None if first_allowed is None else first_allowed[None],
                                    None if constraint is None else [constraint],
                                    watermarks=None if watermark is None else [watermark.marker()]):
        if constraint is not None and constraint.done and int(token[0]) == constraint.ended_by:
            break                                 # the grammar's end-of-text token: no text of its own
        text = stream.push(int(token[0]))
        cut = min(len(text), len(skip))
        text, skip = text[cut:], skip[cut:]
        piece = matcher.push(text)
        if piece:
            yield piece
        if matcher.stopped:
            return
        if constraint is not None and constraint.done:
            break
    rest = matcher.flush()
    if rest:
        yield rest
