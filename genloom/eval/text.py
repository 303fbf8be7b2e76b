"""Validation loss of a language model over a whole split: nats per token, bits per character."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data.text import TextData, TextDataConfig, TokenWindows
from ..data.tokenizers import TextTokenizer

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


@torch.no_grad()
def score_split(model: nn.Module, data: TokenWindows, batch_size: int = 16, progress: bool = True,
                split: str = "val") -> tuple[float, int]:
    """(total nats, tokens scored) over every token of a prepared data set's split, once."""
    block = model.config.block_size
    device = next(model.parameters()).device
    model.eval()
    total_nats, total_tokens = 0.0, 0
    windows = list(data.full_windows(block, split))
    bar = tqdm(total=len(windows), desc="evaluating", unit="window", disable=not progress, leave=False)
    for start in range(0, len(windows), batch_size):
        group = windows[start:start + batch_size]
        # Full-length windows go together; the shorter last window runs alone.
        for same_length in ([w for w in group if w[0].shape[1] == block], [w for w in group if w[0].shape[1] != block]):
            if not same_length:
                continue
            inputs = torch.cat([w[0] for w in same_length]).to(device)   # (B, T)
            targets = torch.cat([w[1] for w in same_length]).to(device)  # (B, T)
            logits = model(inputs)
            total_nats += float(F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum"))
            total_tokens += targets.numel()
        bar.update(len(group))
    bar.close()
    return total_nats, total_tokens
