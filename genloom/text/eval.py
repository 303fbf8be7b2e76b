"""Validation loss of a language model over a whole split: nats per token, bits per character."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from ..lm.tokenizers import TextTokenizer
from ..lm.windows import score_split
from .data import TextData, TextDataConfig

__all__ = ["TextEvalResult", "evaluate_text", "score_split"]


@dataclass(frozen=True)
class TextEvalResult:
    source: str
    tokens: int             # tokens scored
    characters: int         # characters of the split
    nats_per_token: float
    bits_per_character: float
    perplexity: float       # exp(nats per token)
    bits_per_byte: float | None = None   # code models: per byte of UTF-8 source

    def summary(self) -> str:
        return (f"data: {self.source} (validation split: {self.tokens:,} tokens, {self.characters:,} characters)\n"
                f"loss: {self.nats_per_token:.4f} nats/token\n"
                f"bits per character: {self.bits_per_character:.4f}\n"
                + (f"bits per byte: {self.bits_per_byte:.4f}\n" if self.bits_per_byte is not None else "")
                + f"perplexity: {self.perplexity:.3f}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@torch.no_grad()
def evaluate_text(model: nn.Module, tokenizer: TextTokenizer, data_config: TextDataConfig,
                  data_path: str | None = None, batch_size: int = 16, progress: bool = True) -> TextEvalResult:
    """Score every token of the validation split once, in non-overlapping context-length windows.

    With `data_path`, that source is split exactly as training splits it (the last
    `val_fraction` of its characters) and tokenized with the model's own tokenizer.
    """
    if data_path is not None:
        data_config = dataclasses.replace(data_config, path=data_path)
    data = TextData(data_config, model.config.block_size, tokenizer)
    data.prepare()
    total_nats, total_tokens = score_split(model, data, batch_size, progress)
    nats = total_nats / total_tokens
    characters = data.meta["val_chars"]
    return TextEvalResult(source=data.source.describe(), tokens=total_tokens, characters=characters,
                          nats_per_token=nats, bits_per_character=total_nats / characters / math.log(2),
                          perplexity=math.exp(nats))


