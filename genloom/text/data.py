"""Text data for language models: source -> tokenizer -> memory-mapped token arrays -> batches.

The split is deterministic: the last `val_fraction` of the corpus's characters is validation (for a
single file this is nanoGPT's split). Tokens are written once to a cache folder as flat uint16 or
uint32 arrays and read back with `numpy.memmap`, so a corpus larger than RAM trains without being
loaded whole.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

from ..core.cache import default_cache_dir
from ..core.config import require, validate
from ..core.errors import DataError
from ..core.registry import register
from ..core.sources import open_text_source
from ..lm.tokenizers import TextTokenizer
from ..lm.windows import TokenWindows

__all__ = ["TextDataConfig", "TextData", "TokenWindows", "default_cache_dir"]

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
SPLITS = ("train", "val")




@dataclass(frozen=True)
class TextDataConfig:
    kind: Literal["text"] = "text"
    path: str = "builtin:shakespeare"   # a .txt file, a folder of text files, a .jsonl ("text" field), or builtin:shakespeare
    tokenizer: Literal["char", "bpe"] = "char"
    vocab_size: int = 4096              # BPE vocabulary size (ignored for char)
    val_fraction: float = 0.1           # the last fraction of the text is the validation split
    cache_dir: str = ""                 # where token arrays are cached; "" = $GENLOOM_CACHE or ~/.cache/genloom
    both_ways: bool = False             # builtin:biographies: write every birth fact in both directions (reversal)
    counterfactual: str = ""            # "" off; "builtin" (builtin:biographies' first names) or a CSV of word pairs:
    #                                     the training text once more with each word swapped for its partner

    def __post_init__(self) -> None:
        validate(self, "data")
        require(0 < self.val_fraction < 1, "data.val_fraction", "must be between 0 and 1 (e.g. 0.1)")
        require(self.vocab_size >= 260, "data.vocab_size", "must be at least 260 for byte-level BPE")
        require(not self.both_ways or self.path.startswith("builtin:biographies"), "data.both_ways",
                "only applies to builtin:biographies (it writes that data's facts both ways)")


def _lines(chunks: Iterator[str], piece_chars: int = 1 << 16) -> Iterator[str]:
    """Re-cut a stream of text into pieces of about `piece_chars` that end at a newline."""
    carry = ""
    for chunk in chunks:
        carry += chunk
        while len(carry) >= piece_chars:
            cut = carry.rfind("\n", 0, piece_chars * 2) + 1 or len(carry)
            yield carry[:cut]
            carry = carry[cut:]
    if carry:
        yield carry


def _split_stream(chunks: Iterator[str], train_chars: int) -> Iterator[tuple[str, str]]:
    """Tag each piece of text with its split, cutting the piece that crosses the boundary."""
    seen = 0
    for piece in chunks:
        if seen + len(piece) <= train_chars:
            yield "train", piece
        elif seen >= train_chars:
            yield "val", piece
        else:
            cut = train_chars - seen
            yield "train", piece[:cut]
            yield "val", piece[cut:]
        seen += len(piece)




def open_source(config: TextDataConfig, block_size: int = 0):
    """The text source `data.path` names (builtin:biographies and builtin:passkey included, the latter sized
    for a context of `block_size` tokens), with `data.counterfactual`'s copy."""
    from .biographies import VARIANTS, BiographySource
    from .counterfactual import CounterfactualSource, word_pairs
    from .passkey import BUILTIN as PASSKEY, PasskeySource

    pairs = word_pairs(config.counterfactual, config.path) if config.counterfactual else ()
    if config.path == PASSKEY:
        if pairs:
            raise DataError("data.counterfactual: builtin:passkey has no words to swap; leave it empty")
        return PasskeySource(config.path, block_size, config.tokenizer)
    if config.path.startswith(PASSKEY):
        raise DataError(f"data.path: unknown built-in data {config.path!r}; did you mean {PASSKEY}?")
    if config.path in VARIANTS:
        return BiographySource(config.path, config.val_fraction, config.both_ways, pairs)
    if config.path.startswith("builtin:biographies"):
        raise DataError(f"data.path: unknown built-in data {config.path!r}; available: {', '.join(VARIANTS)}")
    source = open_text_source(config.path)
    return CounterfactualSource(source, pairs) if pairs else source


class TextData(TokenWindows):
    """Token arrays for a text corpus, with random training windows and fixed validation windows."""

    def __init__(self, config: TextDataConfig, block_size: int, tokenizer: TextTokenizer | None = None):
        self.config = config
        self.block_size = block_size
        self.source = open_source(config, block_size)
        self.tokenizer = tokenizer
        self._arrays: dict[str, np.ndarray] = {}
        self.meta: dict = {}

    # -- preparation (run once per corpus and tokenizer; cached) ------------------------------
    def _cache_key(self) -> str:
        h = hashlib.sha256()
        h.update(f"{CACHE_FORMAT}|{self.source.fingerprint()}|{self.config.val_fraction}".encode())
        if self.tokenizer is not None:
            h.update(self.tokenizer.hf.to_str().encode())
        else:
            h.update(f"{self.config.tokenizer}|{self.config.vocab_size}".encode())
        return h.hexdigest()[:20]

    @property
    def cache_path(self) -> Path:
        root = Path(self.config.cache_dir).expanduser() if self.config.cache_dir else default_cache_dir()
        return root / "text" / self._cache_key()

    def prepare(self) -> None:
        """Tokenize the corpus into the cache unless it is there already, then open it."""
        folder = self.cache_path
        if not (folder / "meta.json").is_file():
            self._build(folder)
        self._open(folder)
        self._check_length(self.source.describe())

    def _build(self, folder: Path) -> None:
        log.info("tokenizing %s (cached in %s)", self.source.describe(), folder)
        total_chars, characters = 0, set()
        for chunk in self.source.chunks():
            total_chars += len(chunk)
            if self.tokenizer is None and self.config.tokenizer == "char":
                characters.update(chunk)
        if total_chars == 0:
            raise DataError(f"data.path: {self.source.describe()} holds no text")
        train_chars = int(total_chars * (1 - self.config.val_fraction))

        tokenizer = self.tokenizer
        if tokenizer is None:
            if self.config.tokenizer == "char":
                tokenizer = TextTokenizer.train_char(characters)
            else:
                train_text = (p for split, p in _split_stream(_lines(self.source.chunks()), train_chars) if split == "train")
                tokenizer = TextTokenizer.train_bpe(train_text, self.config.vocab_size)
        dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32

        tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        counts = {s: {"tokens": 0, "chars": 0} for s in SPLITS}
        files = {s: open(tmp / f"{s}.bin", "wb") for s in SPLITS}
        try:
            batch: list[tuple[str, str]] = []

            def flush() -> None:
                for (split, text), ids in zip(batch, tokenizer.encode_batch([t for _, t in batch])):
                    np.asarray(ids, dtype=dtype).tofile(files[split])
                    counts[split]["tokens"] += len(ids)
                    counts[split]["chars"] += len(text)
                batch.clear()

            for split, piece in _split_stream(_lines(self.source.chunks()), train_chars):
                batch.append((split, piece))
                if len(batch) >= 32:
                    flush()
            flush()
        finally:
            for f in files.values():
                f.close()
        tokenizer.save(tmp / "tokenizer.json")
        meta = {"format": CACHE_FORMAT, "dtype": np.dtype(dtype).name, "source": self.source.describe(),
                "tokenizer": tokenizer.kind, "vocab_size": tokenizer.vocab_size, **{
                    f"{s}_{k}": v for s, c in counts.items() for k, v in c.items()}}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)

    def _open(self, folder: Path) -> None:
        self.meta = json.loads((folder / "meta.json").read_text())
        if self.tokenizer is None:
            self.tokenizer = TextTokenizer.load(folder / "tokenizer.json")
        for split in SPLITS:
            n = self.meta[f"{split}_tokens"]
            self._arrays[split] = (np.memmap(folder / f"{split}.bin", dtype=self.meta["dtype"], mode="r")
                                   if n else np.zeros(0, dtype=self.meta["dtype"]))

@register("data", "text", TextDataConfig)
def build_text_data(config: TextDataConfig, run, tokenizer: TextTokenizer | None = None) -> TextData:
    return TextData(config, run.model.block_size, tokenizer)
