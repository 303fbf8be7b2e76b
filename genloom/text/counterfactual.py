"""Counterfactual data augmentation (`data.counterfactual`): the training text once more with each word of a
list of pairs swapped for its partner ("he" <-> "she", one group's first names <-> the other's), so that what
the text says about one word it also says about the other (Lu et al. 2018, "Gender bias in neural NLP")."""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..core.errors import DataError
from .biographies import name_pairs, swap_words

__all__ = ["word_pairs", "CounterfactualSource"]


def word_pairs(spec: str, path: str) -> tuple[tuple[str, str], ...]:
    """The pairs `data.counterfactual` names: "builtin" (builtin:biographies' first names of the two groups) or
    a CSV file of two words per line."""
    if spec == "builtin":
        if not path.startswith("builtin:biographies"):
            raise DataError(f"data.counterfactual = \"builtin\" swaps the first names of builtin:biographies; "
                            f"{path} is other data: give a CSV file of word pairs (two words a line)")
        return tuple(name_pairs())
    file = Path(spec).expanduser()
    if not file.is_file():
        raise DataError(f"data.counterfactual: {spec} is not a file (expected \"builtin\" or a CSV of word pairs)")
    pairs = []
    with open(file, newline="", encoding="utf-8") as f:
        for number, row in enumerate(csv.reader(f), 1):
            row = [cell.strip() for cell in row]
            if not any(row):
                continue
            if len(row) != 2 or not all(row) or any(" " in cell for cell in row):
                raise DataError(f"data.counterfactual: {file}, line {number}: expected two single words separated "
                                f"by a comma, found {','.join(row)!r}")
            pairs.append((row[0], row[1]))
    if not pairs:
        raise DataError(f"data.counterfactual: {file} holds no word pairs")
    return tuple(pairs)


@dataclass(frozen=True)
class CounterfactualSource:
    """A text source followed by its own text with the word pairs swapped (line by line, so no word is cut)."""

    source: object
    pairs: tuple[tuple[str, str], ...]

    def fingerprint(self) -> str:
        return hashlib.sha256((self.source.fingerprint() + repr(self.pairs)).encode()).hexdigest()

    def describe(self) -> str:
        return f"{self.source.describe()} (+ counterfactual copy, {len(self.pairs)} word pairs)"

    def chunks(self) -> Iterator[str]:
        yield from self.source.chunks()
        yield "\n\n"
        carry = ""
        for chunk in self.source.chunks():
            carry += chunk
            cut = carry.rfind("\n") + 1
            if cut:
                yield swap_words(carry[:cut], self.pairs)
                carry = carry[cut:]
        if carry:
            yield swap_words(carry, self.pairs)
