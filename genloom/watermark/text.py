"""Text watermarks over token ids, and their detector (which needs the token ids and the key, no model).

Two schemes, each keyed by the previous `context` tokens (h) through HMAC-SHA256 (`keys.py`):

- **green** (Kirchenbauer et al. 2023, "A Watermark for Large Language Models"): the key and the previous h
  tokens pick a "green" fraction gamma of the vocabulary; delta is added to the green tokens' logits before
  sampling. Detection counts green tokens: z = (G - gamma T) / sqrt(T gamma (1 - gamma)) over T scored
  tokens (their eq. 3), p = the exact binomial tail P(Binomial(T, gamma) >= G) (the normal tail of z
  understates it). It changes the distribution (a perplexity cost), and works with greedy decoding too.
- **gumbel** (Aaronson 2022; Kuditipudi et al. 2023 call it exponential-minimum sampling): the key and the
  previous h tokens draw one uniform r_v per token v, and the next token is argmax_v r_v^(1/p_v) - an exact
  sample of p (the Gumbel-max trick with keyed noise), so each token's distribution is unchanged
  (distortion-free). Detection sums S = sum -log(1 - r_token); unmarked, S ~ Gamma(T, 1), so
  p = P(Gamma(T, 1) >= S). It needs sampling (temperature > 0).

Repeated (context, token) pairs are scored once (both papers: repeats are not independent evidence and would
inflate z on repetitive text); the gumbel scheme marks a context only the first time a text meets it (a
second time it samples freely, so a repeated context does not lock the text into a loop) and its detector
scores each context once. The first h tokens of a text have no full context and are not scored.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
from scipy import special

from ..core.errors import GenloomError
from .keys import check_key, keyed_uniform, subkey

__all__ = ["TextWatermark", "TextMarker", "TextDetection", "SCHEMES", "DEFAULT_CONTEXT"]

SCHEMES = ("green", "gumbel")
DEFAULT_CONTEXT = {"green": 2, "gumbel": 3}      # h when `context` is 0 (measured: BENCHMARKS.md#watermarks)
CACHE = 4096                                     # green lists kept per marker (a context's list is reused)


@dataclass(frozen=True)
class TextDetection:
    """What the detector found in one token sequence."""

    scheme: str
    scored: int           # distinct (context, token) pairs scored (gumbel: distinct contexts)
    score: float          # green: green tokens among them; gumbel: S = sum -log(1 - r)
    z: float              # green: the z-score; gumbel: (S - T) / sqrt(T)
    p_value: float        # the chance of a score this high in text made without the key
    marked: bool          # p_value < the threshold asked for

    def to_json(self) -> dict:
        return {"scheme": self.scheme, "scored_tokens": self.scored, "score": round(self.score, 4),
                "z": round(self.z, 4), "p_value": self.p_value, "marked": self.marked}


@dataclass(frozen=True)
class TextWatermark:
    """A text watermark: the key (never shown in its repr), the scheme and its parameters."""

    key: str = field(repr=False)
    scheme: Literal["green", "gumbel"] = "green"
    context: int = 0            # h: how many previous tokens key each position (0: the scheme's default)
    gamma: float = 0.25         # green: the green fraction of the vocabulary
    delta: float = 2.5          # green: added to the green tokens' logits (2.5: >= 90% found after 20% of the
                                # tokens are replaced, BENCHMARKS.md#watermarks; 2.0 costs less perplexity)

    def __post_init__(self) -> None:
        check_key(self.key)
        if self.scheme not in SCHEMES:
            raise GenloomError(f"watermark scheme {self.scheme!r}: the schemes are {', '.join(SCHEMES)}")
        if not 0 <= self.context <= 16:
            raise GenloomError(f"watermark context {self.context}: h is 1 to 16 previous tokens (0: the default)")
        if not 0 < self.gamma < 1:
            raise GenloomError(f"watermark gamma {self.gamma}: the green fraction is between 0 and 1")
        if not 0 <= self.delta <= 20:
            raise GenloomError(f"watermark delta {self.delta}: the green bias is 0 to 20")
        if self.context == 0:
            object.__setattr__(self, "context", DEFAULT_CONTEXT[self.scheme])

    @property
    def _subkey(self) -> bytes:
        return subkey(check_key(self.key), f"text/{self.scheme}")

    def uniforms(self, context: Sequence[int], count: int) -> np.ndarray:
        """The keyed uniforms (0, 1) of tokens 0..count-1 after `context` (its last h tokens). Token v's number
        does not depend on `count`, so the detector needs no vocabulary size."""
        context = list(context)[-self.context:]
        return keyed_uniform(self._subkey, struct.pack(f"<{len(context)}I", *context), count)

    def check_sampling(self, temperature: float) -> None:
        if self.scheme == "gumbel" and temperature == 0:
            raise GenloomError("the gumbel watermark chooses among sampled tokens; it needs temperature > 0 "
                               "(greedy decoding takes the green scheme)")

    def marker(self) -> "TextMarker":
        """The state of one row being generated with this mark."""
        return TextMarker(self)

    def detect(self, tokens: Sequence[int], threshold: float = 1e-3) -> TextDetection:
        """Score a token sequence (no prompt: the text as it stands). `threshold`: the p-value below which it
        counts as marked (the false-positive rate asked for)."""
        tokens = [int(t) for t in tokens]
        h, key = self.context, self._subkey
        seen: set = set()
        hits: list[float] = []
        for i in range(h, len(tokens)):
            context, token = tuple(tokens[i - h:i]), tokens[i]
            pair = context if self.scheme == "gumbel" else (context, token)
            if pair in seen or token < 0:
                continue
            seen.add(pair)
            r = float(keyed_uniform(key, struct.pack(f"<{h}I", *context), token + 1)[token])
            hits.append(float(r < self.gamma) if self.scheme == "green" else -math.log1p(-r))
        return self._verdict(hits, threshold)

    def _verdict(self, hits: list[float], threshold: float) -> TextDetection:
        T, S = len(hits), float(sum(hits))
        if T == 0:
            return TextDetection(self.scheme, 0, 0.0, 0.0, 1.0, False)
        if self.scheme == "green":
            g = self.gamma
            z = (S - g * T) / math.sqrt(T * g * (1 - g))
            # The exact tail P(Binomial(T, gamma) >= G): the normal one of z is too small in the skewed upper
            # tail (measured: 1.8-2.1% false positives at p < 0.01 on 200-token texts, gamma 0.25).
            p = float(special.bdtrc(S - 1, T, g)) if S > 0 else 1.0
        else:
            z = (S - T) / math.sqrt(T)
            p = float(special.gammaincc(T, S))
        return TextDetection(self.scheme, T, S, z, p, p < threshold)


class TextMarker:
    """One row's watermarking while it is generated: `bias` for the green scheme (added to the logits),
    `choose` for the gumbel one (picks the token from the final distribution, or None: sample freely)."""

    def __init__(self, mark: TextWatermark):
        self.mark = mark
        self.used: set = set()                    # gumbel: contexts already marked in this row
        self.cache: dict = {}                     # green: context -> its green list

    def green(self, context: Sequence[int], vocab: int) -> np.ndarray:
        """(vocab,) bool: the green tokens after `context`."""
        context = tuple(context[-self.mark.context:])
        hit = self.cache.get((context, vocab))
        if hit is None:
            if len(self.cache) >= CACHE:
                self.cache.clear()
            hit = self.cache[(context, vocab)] = self.mark.uniforms(context, vocab) < self.mark.gamma
        return hit

    def choose(self, probs: np.ndarray, context: Sequence[int]) -> int | None:
        """argmax_v r_v^(1/p_v) over the tokens with p_v > 0, i.e. argmax log(r_v) / p_v; None where the
        context was marked before in this row (the caller then samples as usual)."""
        context = tuple(context[-self.mark.context:])
        if context in self.used or len(context) < self.mark.context:
            return None
        self.used.add(context)
        r = self.mark.uniforms(context, len(probs))
        with np.errstate(divide="ignore"):
            score = np.where(probs > 0, np.log(r) / np.where(probs > 0, probs, 1.0), -np.inf)
        return int(np.argmax(score))
