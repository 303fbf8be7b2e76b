"""The closed-form measures behind `genloom eval`'s limits tasks (genloom/text/limits.py): calibration
(`reliability_bins`, `expected_calibration_error`), `auroc`, the accuracy-vs-coverage curve of abstention,
repetition (`distinct_n`, `repeated_ngram_share`), passkey prompts and answer normalisation. Plain functions
of scores and tokens, each checked by the tests on made-up inputs."""

from __future__ import annotations

import re
from typing import Sequence

from ..core.errors import GenloomError

__all__ = ["reliability_bins", "expected_calibration_error", "auroc", "coverage_curve", "distinct_n",
           "repeated_ngram_share", "passkey_prompt", "passkey_text", "normalise_answer", "FILLER_SENTENCES",
           "NEEDLE", "QUESTION"]


def reliability_bins(confidences: Sequence[float], correct: Sequence[bool], bins: int = 10) -> list[dict]:
    """Equal-width confidence bins (the last one closed): count, mean confidence and accuracy of each."""
    out = []
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        members = [(c, k) for c, k in zip(confidences, correct) if low <= c < high or (b == bins - 1 and c == 1.0)]
        out.append({"low": low, "high": high, "count": len(members),
                    "confidence": sum(c for c, _ in members) / len(members) if members else None,
                    "accuracy": sum(k for _, k in members) / len(members) if members else None})
    return out


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    """ECE (Naeini et al. 2015; Guo et al. 2017): sum over bins of |bin| / n * |accuracy - mean confidence|."""
    n = len(confidences)
    if n == 0:
        return float("nan")
    return sum(b["count"] / n * abs(b["accuracy"] - b["confidence"])
               for b in reliability_bins(confidences, correct, bins) if b["count"])


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve of `scores` for the positive `labels`: the probability that a random positive
    scores above a random negative, ties counting half (the Mann-Whitney U statistic / (n+ n-))."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return float("nan")
    order = sorted(scores)
    ranks: dict[float, float] = {}
    i = 0
    while i < len(order):                      # average ranks (1-based) of tied scores
        j = i
        while j < len(order) and order[j] == order[i]:
            j += 1
        ranks[order[i]] = (i + 1 + j) / 2
        i = j
    rank_sum = sum(ranks[s] for s in pos)
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def coverage_curve(confidences: Sequence[float], correct: Sequence[bool],
                   thresholds: Sequence[float] | None = None) -> list[dict]:
    """Abstaining below each threshold: the share of questions answered (coverage), the accuracy of those
    answered, and the share of all questions answered correctly."""
    thresholds = thresholds if thresholds is not None else [i / 20 for i in range(20)]
    n = max(len(confidences), 1)
    out = []
    for t in thresholds:
        kept = [k for c, k in zip(confidences, correct) if c >= t]
        out.append({"threshold": t, "coverage": len(kept) / n,
                    "accuracy": sum(kept) / len(kept) if kept else None, "correct_share": sum(kept) / n})
    return out


def _ngrams(tokens: Sequence, n: int) -> list[tuple]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(tokens: Sequence, n: int) -> float:
    """Distinct-n (Li et al. 2016): unique n-grams / n-grams."""
    grams = _ngrams(tokens, n)
    return len(set(grams)) / len(grams) if grams else float("nan")


def repeated_ngram_share(tokens: Sequence, n: int = 4) -> float:
    """rep-n (Welleck et al. 2020): 1 - unique n-grams / n-grams, the share of n-grams that repeat an earlier one."""
    grams = _ngrams(tokens, n)
    return 1 - len(set(grams)) / len(grams) if grams else float("nan")


FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
FILLER_SENTENCES = tuple(s + "." for s in FILLER.strip().rstrip(".").split(". "))
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"


def passkey_text(key: str, before: Sequence[str], after: Sequence[str]) -> str:
    """The text of a passkey prompt: the filler sentences `before`, the needle naming `key`, the sentences
    `after` and the question, joined by spaces (the answer, " KEY", is what follows). `builtin:passkey`
    writes its examples with this too, so that training text and eval prompts tokenize alike."""
    return " ".join([*before, NEEDLE.format(key=key), *after, QUESTION])


def passkey_prompt(tokenizer, length: int, key: str, depth: float,
                   filler: Sequence[str] = FILLER_SENTENCES) -> tuple[list[int], str]:
    """A passkey-retrieval prompt (Mohtashami & Jaggi 2023) of exactly `length` tokens: filler sentences
    (cycling through `filler`) with "The pass key is KEY. Remember it." at relative `depth` (0 start, 1 end)
    and the question at the end. The text is tokenized whole (see `passkey_text`); its first tokens are cut to
    make the length exact, as a window into a longer text would start. Returns the token ids and the expected
    answer (" KEY")."""
    fixed = len(tokenizer.encode(passkey_text(key, [], [])))
    if length < fixed:
        raise GenloomError(f"a passkey prompt needs at least {fixed} tokens; {length} were asked for")
    per_sentence = max(len(tokenizer.encode(" " + " ".join(filler))) / len(filler), 1.0)
    room = length - fixed
    n_after = round((1 - depth) * room / per_sentence)
    while True:
        after = [filler[i % len(filler)] for i in range(n_after)]
        n_before = int(depth * room / per_sentence) + 2
        before = [filler[-1 - i % len(filler)] for i in range(n_before)][::-1]
        ids = tokenizer.encode(passkey_text(key, before, after))
        needle_end = len(tokenizer.encode(passkey_text(key, [], after)))    # tokens from the needle on
        if needle_end <= length or n_after == 0:
            break
        n_after -= 1                                      # the needle would be cut: fewer sentences after it
    while len(ids) < length:                              # too short: more filler before
        before = [filler[-1 - len(before) % len(filler)], *before]
        ids = tokenizer.encode(passkey_text(key, before, after))
    ids = ids[len(ids) - length:]
    if needle_end > length:
        raise GenloomError(f"a passkey prompt of {length} tokens cannot hold the needle and the question")
    return ids, f" {key}"


def normalise_answer(text: str) -> str:
    text = text.strip().lower().rstrip(".")
    return re.sub(r"^the ", "", re.sub(r"\s+", " ", text))
