"""Token-level constrained decoding: a grammar (a JSON schema, any JSON object, a regular expression, a
choice of strings, or a Lark grammar) compiled against the model's own tokenizer, so that at every step only
the tokens that keep the text inside the grammar can be sampled.

The engine is llguidance (`pip install llguidance`; the choice and the measurements beside xgrammar and
outlines-core are in docs/serving.md and bench/grammar_bench.py). It reads the tokenizer's own
`tokenizer.json`, so a constraint means exactly the model's tokens; a schema keyword it cannot enforce is an
error when the grammar is built (`GrammarError`), before any decoding, never a silently looser grammar.

A `TokenConstraint` is one row's state: `allowed()` the (V,) bool mask of the next token, `advance(token)`
after sampling, `done` once the grammar is complete (the row ends there, `finish_reason: "stop"`). It follows
the `Constraint` protocol, as music's token grammar does, and `mask_logits` applies any of them: decoding,
continuous batching and music mask logits through that one function.
A tokenizer without an end-of-text token (a character vocabulary, or a byte-level BPE without one) is given
one past the vocabulary as the grammar's end, and a row whose grammar admits nothing but the end is done.
"""

from __future__ import annotations

import json
import re
import weakref
from dataclasses import dataclass
from typing import Any, Literal, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from ..core.errors import GenloomError
from .tokenizers import END_OF_TEXT, TextTokenizer

__all__ = ["GrammarError", "Grammar", "Constraint", "TokenConstraint", "mask_logits"]


class GrammarError(GenloomError):
    """The grammar cannot be enforced (an unsupported schema feature, a bad regex): refused before decoding."""


@runtime_checkable
class Constraint(Protocol):
    """What decoding asks of a constraint on one row, whatever makes it (an llguidance grammar here, music's
    token grammar in `genloom.music.generate`): `allowed()` the (V,) bool mask of the next token, `advance(token)`
    once it is chosen, `done` when the constraint is complete, `ended_by` the token that ends the text without
    being part of it (None: none), and `forced()` the only token allowed where the constraint knows it without
    a mask (None: sample among `allowed()`), which a decoder may append without running the model."""

    done: bool

    def allowed(self) -> torch.Tensor: ...

    def advance(self, token: int) -> None: ...

    @property
    def ended_by(self) -> int | None: ...

    def forced(self) -> int | None: ...


def mask_logits(logits: torch.Tensor, constraints: Sequence[Constraint | None]) -> torch.Tensor:
    """`logits` (B, V) with row i's tokens outside `constraints[i]` at -inf (rows without a constraint, or whose
    constraint is done, as they are): the one place decoding, continuous batching and music apply a mask."""
    if not any(c is not None and not c.done for c in constraints):
        return logits
    logits = logits.clone()
    for row, constraint in enumerate(constraints):
        if constraint is not None and not constraint.done:
            logits[row].masked_fill_(~constraint.allowed().to(logits.device), float("-inf"))
    return logits


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
        # Token references (<[id]>: a chat template's end-of-turn token) are checked against the model's
        # tokenizer when a TokenConstraint is made; here there is none.
        messages = [m for m in messages if not m.startswith("no tokenizer")]
        if failed or messages:
            raise GrammarError(f"the {self.kind.replace('_', ' ')} cannot be enforced: {'; '.join(messages)}")
        return grammar


_TOKENIZERS: "weakref.WeakKeyDictionary[TextTokenizer, tuple]" = weakref.WeakKeyDictionary()
# Tokens that end a text, in the order one is taken as the grammar's end where the tokenizer has no END_OF_TEXT.
END_TOKENS = (END_OF_TEXT, "<|end_of_text|>", "</s>", "<eos>", "<|eot_id|>", "<|im_end|>")


NO_TOKEN = ("no token of the model's vocabulary can continue the text in this grammar (its tokenizer lacks the "
            "characters the grammar needs)")
UNWRITABLE = "genloom-unwritable:"        # what _TokenBytes raises: the missing characters as hex code points


def _failure(matcher) -> GrammarError:
    """llguidance's error as one line (the missing characters where the tokenizer could not write a text)."""
    error = matcher.get_error() or "unknown error"
    found = re.search(re.escape(UNWRITABLE) + r"([0-9a-f,]*)", error)
    if found:
        missing = "".join(chr(int(h, 16)) for h in found.group(1).split(",") if h)
        return GrammarError(f"the grammar needs characters the model's vocabulary lacks: {missing!r} (a vocabulary "
                            "trained on text without them cannot write them)")
    if "NoExtensionBias" in error:              # an empty mask: no token continues the text
        return GrammarError(NO_TOKEN)
    return GrammarError(f"the grammar cannot be enforced: {error.splitlines()[0][:300]}")


class _TokenBytes:
    """llguidance's view of a tokenizer it cannot read from tokenizer.json by itself (a character vocabulary,
    or a byte-level BPE without an end-of-text token): each token's bytes, and one extra end token."""

    def __init__(self, tokenizer: TextTokenizer, vocab_size: int):
        hf, added = tokenizer.hf, tokenizer.hf.get_added_tokens_decoder()
        byte_of = {c: b for b, c in _byte_level_alphabet().items()}
        tokens, special = [], []
        for i in range(vocab_size):
            piece = hf.id_to_token(i)
            if piece is None or i in added or piece == "<unk>":      # 0xFF marks a special token for llguidance
                tokens.append(b"\xff" + (piece or f"<[{i}]>").encode())
                special.append(i)
            elif tokenizer.kind == "char":
                tokens.append(piece.encode())
            else:
                tokens.append(bytes(byte_of[c] for c in piece))
        tokens.append(b"\xff<|end|>")                  # the end of the text: one past the model's vocabulary
        self.tokens, self.special_token_ids = tokens, [*special, vocab_size]
        self.eos_token_id, self.bos_token_id = vocab_size, None
        self.tokenizer, self.unknown = tokenizer, set(special)

    def __call__(self, text: str) -> list[int]:
        """The text's tokens (llguidance tokenizes the text a grammar forces with it); text with a character
        the vocabulary lacks is an error, never <unk> taken for that text."""
        if isinstance(text, bytes):
            raise TypeError("text only")
        ids = self.tokenizer.encode(text)
        if any(t in self.unknown for t in ids):
            missing = sorted({c for c in text if any(t in self.unknown for t in self.tokenizer.encode(c))})
            raise ValueError(UNWRITABLE + ",".join(f"{ord(c):x}" for c in missing))
        return ids


def _byte_level_alphabet() -> dict[int, str]:
    """GPT-2's byte-level BPE alphabet: byte -> the character that stands for it in the vocabulary."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    out, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def _engine_tokenizer(tokenizer: TextTokenizer, vocab_size: int):
    """llguidance's view of `tokenizer` (built once per tokenizer: about a second for a large vocabulary) and
    its end-of-text id: END_OF_TEXT or another usual end token where the tokenizer has one, else one past the
    model's vocabulary (character vocabularies, and byte-level BPE without any end token)."""
    cached = _TOKENIZERS.get(tokenizer)
    if cached is None or cached[2] != vocab_size:
        ll = _engine()
        eos = next((t for t in map(tokenizer.token_id, END_TOKENS) if t is not None and t < vocab_size), None)
        if eos is not None and tokenizer.kind == "bpe":
            engine = ll.LLTokenizer(tokenizer.hf.to_str(), n_vocab=vocab_size, eos_token=eos)
        else:
            decoder = json.loads(tokenizer.hf.to_str()).get("decoder") or {}
            if tokenizer.kind == "bpe" and decoder.get("type") != "ByteLevel":
                raise GrammarError("constrained decoding needs an end-of-text token in this tokenizer (its "
                                   f"{decoder.get('type')} decoder is not byte-level BPE and it has none of "
                                   f"{', '.join(END_TOKENS)})")
            eos = vocab_size
            engine = ll.LLTokenizer(ll.TokenizerWrapper(_TokenBytes(tokenizer, vocab_size)))
        cached = (engine, eos, vocab_size)
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
            raise _failure(self.matcher)
        self.vocab = vocab_size
        self.done = False
        self._mask: torch.Tensor | None = None

    def allowed(self) -> torch.Tensor:
        """(V,) bool: the tokens that keep the text in the grammar (the end-of-text token among them when
        the text may end here and the tokenizer has one)."""
        if self._mask is None:
            bits = np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
            if self.matcher.is_error():
                raise _failure(self.matcher)
            self._mask = torch.from_numpy(bits[:self.vocab].astype(bool))
            if not bool(self._mask.any()) and not self.matcher.is_accepting():
                raise GrammarError(NO_TOKEN)
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

    def forced(self) -> int | None:
        return None                             # a grammar's mask is always computed (llguidance is fast)
