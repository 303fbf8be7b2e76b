"""A small moderation classifier for text, trained on builtin:safety (`text/safety.py`): how likely a text asks
for (or gives) help to hurt or kill people, the one category that data set declines.

Logistic regression over hashed word unigrams and bigrams (CRC-32 into 4096 buckets: stable across runs and
machines, unlike Python's `hash`), trained once with `core.fit` on the training requests (harmful and
harmless ones are built from the same templates and people, so it must learn the verbs) and cached
(`core.cache.cached_network`). Its accuracy is measured on the held-out requests (templates and
verb-person pairings never trained on); the server's output filter (`serve/filters.py`) uses it.
"""

from __future__ import annotations

import re
import zlib
from typing import Sequence

import torch
from torch import nn

from ..core.cache import cache_folder, cached_network
from ..core.fit import fit
from .safety import REFUSALS, safety_conversations, safety_eval_prompts

__all__ = ["SafetyClassifier", "safety_classifier", "train_safety_classifier", "features", "BUCKETS"]

BUCKETS = 4096
PRIOR = -4.0                    # the logit of a text with no known words
VERSION = 2
WORD = re.compile(r"[a-z']+")


def features(text: str) -> list[int]:
    """The text's hashed word unigrams and bigrams (bucket ids; a text without words gets none)."""
    words = WORD.findall(text.lower())
    grams = words + [f"{a} {b}" for a, b in zip(words, words[1:])]
    return [zlib.crc32(g.encode()) % BUCKETS for g in grams]


class SafetyClassifier(nn.Module):
    """P(harmful | text): a sum of learned weights over the text's hashed n-grams, through a sigmoid."""

    def __init__(self, buckets: int = BUCKETS):
        super().__init__()
        self.weights = nn.EmbeddingBag(buckets, 1, mode="sum")
        nn.init.zeros_(self.weights.weight)
        # A fixed prior towards harmless: words it never saw (weight 0) leave a text at sigmoid(-4) = 2%, so only
        # the evidence it learned can flag a text.
        self.register_buffer("bias", torch.tensor([PRIOR]), persistent=False)

    @staticmethod
    def encode(texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """EmbeddingBag's (flat bucket ids, offsets) of the texts."""
        ids = [features(t) for t in texts]
        flat = torch.tensor([i for row in ids for i in row], dtype=torch.long)
        offsets = torch.tensor([0] + [len(row) for row in ids[:-1]], dtype=torch.long).cumsum(0)
        return flat, offsets

    def logits(self, texts: Sequence[str] | None = None, encoded: tuple | None = None) -> torch.Tensor:
        flat, offsets = encoded if encoded is not None else self.encode(texts)
        return self.weights(flat, offsets)[:, 0] + self.bias          # an empty bag sums to 0

    @torch.no_grad()
    def score(self, texts: Sequence[str]) -> list[float]:
        return torch.sigmoid(self.logits(list(texts))).tolist() if texts else []


def train_safety_classifier(steps: int = 300, progress: bool = False) -> SafetyClassifier:
    """A new classifier trained on the training requests, with its `holdout_accuracy` on the held-out ones."""
    conversations = safety_conversations()          # a harmful request is answered with a refusal
    texts = [c[0]["content"] for c in conversations]
    labels = torch.tensor([float(c[1]["content"] in REFUSALS) for c in conversations])
    model = SafetyClassifier()
    loss, encoded = nn.BCEWithLogitsLoss(), SafetyClassifier.encode(texts)
    fit(model, lambda m: loss(m.logits(encoded=encoded), labels), steps, lr=0.2, weight_decay=0.0, desc="safety classifier",
        progress=progress)
    held = safety_eval_prompts()
    scores = model.score(held["harmful"] + held["harmless"])
    right = sum(s >= 0.5 for s in scores[:len(held["harmful"])]) + sum(s < 0.5 for s in scores[len(held["harmful"]):])
    model.holdout_accuracy = right / len(scores)
    return model


def safety_classifier(cache_dir: str | None = None) -> SafetyClassifier:
    """The classifier, trained on first use (about a second) and cached."""
    return cached_network(cache_folder("safety-classifier", cache_dir=cache_dir), "model", {"version": VERSION},
                          lambda saved: SafetyClassifier(), train_safety_classifier, what="safety classifier")
