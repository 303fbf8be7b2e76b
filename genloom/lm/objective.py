"""Next-token prediction: cross-entropy of every position's logits against the following token."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..core.config import validate
from ..core.registry import register
from .decoding import Sampling, stream_text

__all__ = ["LanguageModelConfig", "LanguageModelObjective", "write_text_sample"]


@dataclass(frozen=True)
class LanguageModelConfig:
    kind: Literal["lm"] = "lm"
    sample_temperature: float = 0.8   # temperature of the sample text written at each evaluation

    def __post_init__(self) -> None:
        validate(self, "objective")


class LanguageModelObjective:
    phases = ("model",)

    def __init__(self, config: LanguageModelConfig):
        self.config = config

    def phase_parameters(self, phase: str, model: nn.Module) -> Iterable[nn.Parameter]:
        return model.parameters()

    def loss(self, phase: str, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if len(batch) == 2:
            inputs, targets = batch                  # (B, T) each
            logits = model(inputs)                   # (B, T, V)
            return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        # Instruction tuning: packed conversations (segment ids), targets -100 outside the assistant's turns.
        inputs, targets, segments = batch
        logits = model(inputs, segments=segments)
        total = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum")
        return total / (targets != -100).sum().clamp(min=1)

    def eval_loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.loss("model", model, batch)

    def write_samples(self, model: nn.Module, data, folder: Path, step: int, length: int, prompt: str) -> str:
        if hasattr(data, "write_sample"):        # data that is not text (music) writes its own kind of sample
            return data.write_sample(model, folder, step, length, self.config.sample_temperature)
        return write_text_sample(model, data, folder, step, length, prompt, self.config.sample_temperature)


def write_text_sample(model: nn.Module, data, folder: Path, step: int, length: int, prompt: str,
                      temperature: float) -> str:
    """Sample `length` tokens after `prompt` (seeded by the step) into folder/step_NNNNNNN.txt. Chat and
    preference data without a prompt: the reply to a validation conversation, ending with its turn."""
    stop: list[str] = []
    if not prompt and hasattr(data, "sample_prompt"):
        prompt, stop, length = data.sample_prompt(), data.sample_stop, min(length, 120)
    text = prompt + "".join(stream_text(model, data.tokenizer, prompt, length, seed=step,
                                        sampling=Sampling(temperature=temperature), stop=stop))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"step_{step:07d}.txt").write_text(text, encoding="utf-8")
    return text


@register("objective", "lm", LanguageModelConfig)
def build_language_model_objective(config: LanguageModelConfig, run=None) -> LanguageModelObjective:
    return LanguageModelObjective(config)
