"""Generating code: prompts for continuing and for filling in, and the rule that ends a completion where
the function or block it is writing ends.

`BlockEnd` reads the prompt as Python (strings, comments and brackets tracked, so a line inside a
docstring or an open call is never mistaken for the next statement) to find the block the completion
belongs to: the innermost `...:` header before the cursor. The completion stops before the first new
statement indented no deeper than that header, once the block has a body (`else:`, `elif`, `except`,
`finally` and closing brackets continue it). A prompt at the top level of a file ends after the first
block the completion writes (a function, a class, a loop) is complete. The special tokens of the code
tokenizer (end of text, the FIM markers) end it too.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch

from ..lm.decoding import StopMatcher
from ..lm.tokenizers import END_OF_TEXT, TextTokenizer

__all__ = ["BlockEnd", "LineEnd", "code_prompt_ids", "infill_prompt_ids", "allowed_first", "SPECIAL_STOPS"]

FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX = "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"
SPECIAL_STOPS = (END_OF_TEXT, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX)
CONTINUATION = re.compile(r"(else|elif|except|finally)\b")
CLOSERS = ")]}"


class _Scanner:
    """Python's lexical state, one character at a time: open brackets, strings, comments, and where each
    logical line starts. `lines` holds (indentation, text) of every finished logical line."""

    def __init__(self) -> None:
        self.depth = 0
        self.quote = ""            # the open string's quote: ', ", ''' or """; "" outside strings
        self.opened = self.empty = self.escape = False
        self.closing = 0           # quotes in a row seen inside a triple-quoted string
        self.comment = False
        self.line = ""             # the current logical line's text (comments left out)
        self.indent: int | None = None   # its indentation, once its first non-blank character came
        self.pending = ""          # characters since the last logical line end (raw)
        self.lines: list[tuple[int, str]] = []

    @property
    def at_line_start(self) -> bool:
        """True while the current logical line has only blanks so far."""
        return self.indent is None

    def feed(self, ch: str) -> None:
        self.pending += ch
        if self.indent is None:
            if ch in " \t\f":
                return
            if ch in "\r\n":                      # a blank line
                self.pending = ""
                return
            self.indent = len(self.pending.expandtabs(4)) - 1
        if self.quote and self._in_string(ch):
            self.line += ch
            return
        if self.comment:
            if ch != "\n":
                return
            self.comment = False
        elif ch == "#":
            self.comment = True
            return
        elif ch in "'\"":
            self.quote, self.opened, self.closing = ch, True, 0
        elif ch in "([{":
            self.depth += 1
        elif ch in ")]}":
            self.depth = max(0, self.depth - 1)
        if ch == "\n" and self.depth == 0 and not self.line.endswith("\\"):
            self.lines.append((self.indent, self.line.strip()))
            self.line, self.indent, self.pending = "", None, ""
            return
        self.line += ch

    def _in_string(self, ch: str) -> bool:
        """Advance the open string by `ch`; False when `ch` is past its end (and is read as code)."""
        q = self.quote[0]
        opened, self.opened = self.opened, False
        if self.escape:
            self.escape = False
        elif self.empty:                           # after q q: an empty string, or the third q of q q q
            self.empty = False
            if ch != q:
                self.quote = ""
                return False
            self.quote = q * 3
        elif ch == "\\":
            self.escape = True
        elif len(self.quote) == 1:
            if ch == q:
                self.empty = opened
                if not opened:
                    self.quote = ""
            elif ch == "\n":
                self.quote = ""                    # an unterminated one-line string ends with its line
                return False
        elif ch == q:
            self.closing += 1
            if self.closing == 3:
                self.quote = ""
        else:
            self.closing = 0
        return True


def _is_header(text: str) -> bool:
    return text.rstrip().endswith(":") and not text.lstrip().startswith(("lambda",))


class BlockEnd:
    """A stop rule for code (the `StopMatcher` interface: push text, get what is safe to emit; `stopped`)."""

    def __init__(self, prompt: str, stops: Sequence[str] = SPECIAL_STOPS):
        self.strings = StopMatcher(stops)
        self.scanner = _Scanner()
        for ch in prompt:
            self.scanner.feed(ch)
        lines = list(self.scanner.lines)
        if not self.scanner.at_line_start:            # the prompt ends inside a line: it counts
            lines.append((self.scanner.indent, self.scanner.line.strip()))
        self.base, self.body = -1, False              # the enclosing header's indentation (-1: none)
        if lines:
            indent, text = lines[-1]
            if _is_header(text):
                self.base = indent
            else:
                for i, t in reversed(lines[:-1]):
                    if i < indent and _is_header(t):
                        self.base, self.body = i, True
                        break
        self.base = max(self.base, 0)                 # top level: end after the first block is complete
        self.held = ""                                # text of the current line start, not yet judged
        self.deciding = False                         # inside a statement's first word
        self.indent = 0                               # the indentation of the statement being read
        self.stopped = False

    def _ends(self, indent: int, line: str) -> bool:
        """At a new statement (its first word, or first character): does it end the block?"""
        if indent > self.base:
            self.body = True
            return False
        if not self.body:
            return False
        return not (indent == self.base and ((line[:1] and line[:1] in CLOSERS) or CONTINUATION.match(line)))

    def push(self, piece: str) -> str:
        if self.stopped:
            return ""
        out = self._lines(self.strings.push(piece))
        self.stopped = self.stopped or self.strings.stopped
        return out

    def _lines(self, piece: str) -> str:
        out = ""
        for ch in piece:
            starting = self.scanner.at_line_start
            self.scanner.feed(ch)
            if starting and not self.scanner.at_line_start:
                self.indent = self.scanner.indent     # a statement starts: its indentation
            if self.deciding or (starting and not self.scanner.at_line_start):
                self.held += ch
                if ch.isalnum() or ch == "_":       # wait for the first word (`else`, `elif`, ...) to end
                    self.deciding = True
                    continue
                self.deciding = False
                if self._ends(self.indent, self.held.lstrip()):
                    self.stopped, self.held = True, ""
                    break
                out, self.held = out + self.held, ""
            elif starting:
                self.held += ch                       # blanks after a line: held until the next statement
            else:
                out += ch
        return out

    def flush(self) -> str:
        if self.stopped:
            return ""
        out = self._lines(self.strings.flush())
        if self.deciding and not self.stopped and not self._ends(self.indent, self.held.lstrip()):
            out += self.held
        self.held, self.deciding = "", False
        return out


class LineEnd(StopMatcher):
    """Stops at the end of the line (single-line infilling) or at a special token."""

    def __init__(self, prompt: str = "", stops: Sequence[str] = SPECIAL_STOPS):
        super().__init__(["\n", *stops])


def _heal(tokenizer: TextTokenizer, ids: list[int]) -> tuple[list[int], str]:
    """Token healing: the prompt without its last token, and that token's text, which the completion must
    start with. A prompt ending in a newline or a space ends in a token the model rarely saw there (code's
    tokenizer merges a newline with the next line's indentation), so the model is asked for the whole token."""
    if not ids or ids[-1] in {tokenizer.token_id(t) for t in SPECIAL_STOPS}:
        return ids, ""
    return ids[:-1], tokenizer.decode(ids[-1:])


def code_prompt_ids(tokenizer: TextTokenizer, prompt: str, room: int) -> tuple[list[int], str]:
    """End of text (a document starts after it) and the prompt's last tokens, at most `room` in all, healed:
    (ids, the text the completion must start with)."""
    ids, healed = _heal(tokenizer, tokenizer.encode(prompt) if prompt else [])
    eot = tokenizer.token_id(END_OF_TEXT)
    return ([eot] if eot is not None else []) + ids[len(ids) - min(len(ids), room - 1):], healed


def infill_prompt_ids(tokenizer: TextTokenizer, prefix: str, suffix: str, room: int,
                      order: str = "spm") -> tuple[list[int], str]:
    """The fill-in-the-middle prompt, suffix-prefix-middle (`order="spm"`: <|fim_prefix|> <|fim_suffix|> suffix
    <|fim_middle|> prefix, then the middle continues the prefix) or prefix-suffix-middle ("psm": <|fim_prefix|>
    prefix <|fim_suffix|> suffix <|fim_middle|>). The prefix's end and the suffix's start are kept when both
    do not fit in `room` tokens; the prefix's last token is healed (moved to the middle): returns (ids, the
    text the middle must start with). SPM is the default: a small model trained on both fills in far better
    when the prefix runs straight into the middle (BENCHMARKS.md)."""
    special = [tokenizer.token_id(t) for t in (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)]
    if None in special:
        from ..core.errors import GenloomError
        raise GenloomError("this model's tokenizer has no fill-in-the-middle tokens; infilling needs a model trained "
                           "on data.kind = \"code\" (e.g. the python-code recipe)")
    (before, healed), after = _heal(tokenizer, tokenizer.encode(prefix)), tokenizer.encode(suffix)
    space = max(room - 3, 2)
    keep_after = min(len(after), max(space // 2, space - len(before)))
    keep_before = min(len(before), space - keep_after)
    before = before[len(before) - keep_before:]
    after = after[:keep_after]
    if order == "spm":
        return [special[0], special[1], *after, special[2], *before], healed
    return [special[0], *before, special[1], *after, special[2]], healed


def allowed_first(pieces: Sequence[str], healed: Sequence[str]) -> torch.Tensor:
    """(rows, vocabulary) True where a token's text starts with the row's healed text."""
    return torch.tensor([[piece.startswith(h) for piece in pieces] for h in healed], dtype=torch.bool)
