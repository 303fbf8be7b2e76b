"""Token-level constrained decoding: a grammar (a JSON schema, any JSON object, a regular expression, a
choice of strings, or a Lark grammar) compiled against the model's own tokenizer, so that at every step only
the tokens that keep the text inside the grammar can be sampled.

The engine is llguidance (`pip install llguidance`; the choice and the measurements beside xgrammar and
outlines-core are in docs/serving.md and bench/grammar_bench.py). It reads the tokenizer's own
`tokenizer.json`, so a constraint means exactly the model's tokens; a schema keyword it cannot enforce is an
error when the grammar is built (`GrammarError`), before any decoding, never a silently looser grammar.

A `TokenConstraint` is one row's state: `allowed()` the (V,) bool mask of the next token, `advance(token)`
after sampling, `done` once the grammar is complete (the row ends there, `finish_reason: "stop"`).
Character tokenizers have no end-of-text token: the grammar is given one past the vocabulary, and a row
whose grammar admits nothing but the end is done.
"""

from __future__ import annotations

import json
import re
import weakref
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from ..core.errors import GenloomError
from .tokenizers import END_OF_TEXT, TextTokenizer

__all__ = ["GrammarError", "Grammar", "TokenConstraint"]


class GrammarError(GenloomError):
    """The grammar cannot be enforced (an unsupported schema feature, a bad regex): refused before decoding."""


def _engine():
    try:
        import llguidance
    except ImportError:
        raise GenloomError("constrained decoding (JSON schemas, regex, choices, tools) needs llguidance: "
                           "pip install llguidance") from None
    return llguidance


@dataclass(frozen=True)
class Grammar:
    """What the text must match. `kind`: "json_schema" (`source`: the schema as a dict or JSON text),
    "json_object" (any JSON object), "regex", "choice" (`source`: a list of strings) or "lark"."""

    kind: Literal["json_schema", "json_object", "regex", "choice", "lark"]
    source: Any = None

    def text(self) -> str:
        """The llguidance grammar, checked: raises GrammarError naming what cannot be enforced."""
        ll = _engine()
        try:
            if self.kind in ("json_schema", "json_object"):
                schema = {"type": "object"} if self.kind == "json_object" else self.source
                text = schema if isinstance(schema, str) else json.dumps(schema)
                # One space after ", " and ": " and no other whitespace: a barely trained model cannot wander
                # off into whitespace, and the output reads as OpenAI's does. Unimplemented keywords are errors.
                grammar = ll.LLMatcher.grammar_from_json_schema(text, overrides={
                    "whitespace_flexible": False, "item_separator": ", ", "key_separator": ": ", "lenient": False})
            elif self.kind == "regex":
                grammar = ll.LLMatcher.grammar_from_regex(str(self.source))
            elif self.kind == "choice":
                choices = list(self.source or [])
                if not choices or not all(isinstance(c, str) and c for c in choices):
                    raise GrammarError("a choice constraint needs a non-empty list of non-empty strings")
                grammar = ll.LLMatcher.grammar_from_regex("|".join(re.escape(c) for c in choices))
            elif self.kind == "lark":
                grammar = ll.LLMatcher.grammar_from_lark(str(self.source))
            else:
                raise GrammarError(f"unknown grammar kind {self.kind!r}")
        except GrammarError:
            raise
        except Exception as error:            # llguidance raises ValueError/RuntimeError with its reason
            raise GrammarError(f"the {self.kind.replace('_', ' ')} cannot be enforced: {error}") from None
        failed, messages = ll.LLMatcher.validate_grammar_with_warnings(grammar)
        if failed or messages:
            raise GrammarError(f"the {self.kind.replace('_', ' ')} cannot be enforced: {'; '.join(messages)}")
        return grammar


_TOKENIZERS: "weakref.WeakKeyDictionary[TextTokenizer, tuple]" = weakref.WeakKeyDictionary()


def _engine_tokenizer(tokenizer: TextTokenizer, vocab_size: int):
    """llguidance's view of `tokenizer` (built once per tokenizer: about a second for a large vocabulary) and
    its end-of-text id (one past the model's vocabulary where the tokenizer has none)."""
    cached = _TOKENIZERS.get(tokenizer)
    if cached is None or cached[2] != vocab_size:
        ll = _engine()
        eos = tokenizer.token_id(END_OF_TEXT)
        n_vocab = vocab_size if eos is not None else vocab_size + 1
        eos = eos if eos is not None else vocab_size
        cached = (ll.LLTokenizer(tokenizer.hf.to_str(), n_vocab=n_vocab, eos_token=eos), eos, vocab_size)
        _TOKENIZERS[tokenizer] = cached
    return cached[0], cached[1]


class TokenConstraint:
    """One row's position in a grammar over the model's tokens."""

    def __init__(self, grammar: Grammar | str, tokenizer: TextTokenizer, vocab_size: int):
        ll = _engine()
        text = grammar.text() if isinstance(grammar, Grammar) else grammar
        engine_tokenizer, self.eos = _engine_tokenizer(tokenizer, vocab_size)
        self.matcher = ll.LLMatcher(engine_tokenizer, text)
        if self.matcher.is_error():
            raise GrammarError(f"the grammar cannot be enforced: {self.matcher.get_error()}")
        self.vocab = vocab_size
        self.done = False
        self._mask: torch.Tensor | None = None

    def allowed(self) -> torch.Tensor:
        """(V,) bool: the tokens that keep the text in the grammar (the end-of-text token among them when
        the text may end here and the tokenizer has one)."""
        if self._mask is None:
            bits = np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
            self._mask = torch.from_numpy(bits[:self.vocab].astype(bool))
            if not bool(self._mask.any()) and not self.matcher.is_accepting():
                raise GrammarError("no token of the model's vocabulary can continue the text in this grammar "
                                   "(its tokenizer lacks the characters the grammar needs)")
        return self._mask

    def advance(self, token: int) -> None:
        if not self.matcher.consume_token(int(token)):
            raise GenloomError(f"token {token} is outside the grammar: {self.matcher.get_error()}")
        self._mask = None
        if token == self.eos or self.matcher.is_stopped():
            self.done = True
        elif self.matcher.is_accepting() and not bool(self.allowed().any()):
            self.done = True                      # only the end is left (a tokenizer without end-of-text)

    @property
    def ended_by(self) -> int | None:
        """The end-of-text id when it is a real token of the model (sampled: not part of the text)."""
        return self.eos if self.eos < self.vocab else None
