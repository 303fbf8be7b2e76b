"""Text tokenizers, both stored as a Hugging Face `tokenizer.json`.

- character level: every character is a token (a `WordLevel` model over single characters);
  characters not seen in training map to `<unk>`.
- byte-level BPE: merges learned on the training text with `tokenizers`' BPE trainer; any
  byte sequence can be encoded, so nothing is ever unknown.
Both files load in `transformers.PreTrainedTokenizerFast(tokenizer_file=...)` too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Literal

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from ..core.errors import CheckpointError

__all__ = ["TextTokenizer", "UNK", "END_OF_TEXT"]

UNK = "<unk>"
END_OF_TEXT = "<|endoftext|>"


class TextTokenizer:
    """A thin typed wrapper over `tokenizers.Tokenizer` with genloom's two kinds."""

    def __init__(self, tokenizer: Tokenizer):
        self.hf = tokenizer
        model_type = json.loads(tokenizer.to_str())["model"]["type"]
        self.kind: Literal["char", "bpe"] = "char" if model_type == "WordLevel" else "bpe"
        self._id_to_piece: list[str] | None = None
        # token ids every prompt starts with (a model's beginning-of-sequence token; set from its
        # tokenizer_config.json when it was imported, see `genloom.lm.chat_templates`); none for genloom's own
        self.prompt_prefix: list[int] = []
        if self.kind == "char":
            vocab = tokenizer.get_vocab()
            pieces = [""] * len(vocab)
            for piece, i in vocab.items():
                pieces[i] = "" if piece == UNK else piece
            self._id_to_piece = pieces

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def train_char(cls, characters: Iterable[str]) -> "TextTokenizer":
        """A character vocabulary: `<unk>` first, then the characters in code-point order."""
        vocab = {UNK: 0}
        for ch in sorted(set(characters)):
            vocab[ch] = len(vocab)
        tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
        # `(?m).` is Oniguruma's "any character including newline": split into single characters.
        tok.pre_tokenizer = pre_tokenizers.Split(Regex("(?m)."), behavior="isolated")
        tok.decoder = decoders.Fuse()
        return cls(tok)

    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int,
                  special_tokens: list[str] | None = None) -> "TextTokenizer":
        """Byte-level BPE (GPT-2 style pre-tokenization) trained on `texts`; `special_tokens` (default: the
        end-of-text token) get the first ids and are never split or merged."""
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(special_tokens or [END_OF_TEXT]),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: Path) -> "TextTokenizer":
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: tokenizer file not found")
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as e:  # tokenizers raises plain Exception for a malformed file
            raise CheckpointError(f"{path}: not a valid tokenizer.json ({e})") from None

    def save(self, path: Path) -> None:
        self.hf.save(str(path))

    # -- use ---------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        ids = list(ids)
        if self._id_to_piece is not None:
            pieces = self._id_to_piece
            return "".join(pieces[i] if 0 <= i < len(pieces) else "" for i in ids)
        return self.hf.decode(ids, skip_special_tokens=False)

    def token_id(self, piece: str) -> int | None:
        return self.hf.token_to_id(piece)
