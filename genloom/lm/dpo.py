"""Direct preference optimisation (Rafailov et al. 2023): learn from pairs of replies, one preferred.

For a prompt x with a chosen reply y_w and a rejected one y_l, the loss is

    -log sigmoid(beta * [(log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))])

where pi is the model being tuned and ref the frozen model it started from. It raises the chosen
reply's likelihood relative to the rejected one's without a separate reward model, and beta sets how
far pi may move away from ref. With LoRA the reference is the same network with its adapters off,
so no second copy of the weights is kept.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..core.config import require, validate
from ..core.registry import register
from ..nn.lora import adapters_off, lora_modules
from .objective import write_text_sample

__all__ = ["DPOConfig", "DPOObjective", "dpo_loss", "sequence_logprobs"]


@dataclass(frozen=True)
class DPOConfig:
    kind: Literal["dpo"] = "dpo"
    beta: float = 0.1                # how strongly preferences may pull the model away from the reference
    sft_weight: float = 0.0          # add this times the chosen reply's per-token loss (keeps it likely)
    sample_temperature: float = 0.8  # temperature of the sample replies written at each evaluation

    def __post_init__(self) -> None:
        validate(self, "objective")
        require(self.beta > 0, "objective.beta", "must be positive (0.1 is usual)")
        require(self.sft_weight >= 0, "objective.sft_weight", "must be 0 or more")


def sequence_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over positions of log p(target) where target != -100: (B, T, V), (B, T) -> (B,)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    return (picked * (targets != -100)).sum(-1)


def dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             beta: float) -> torch.Tensor:
    """The mean DPO loss of sequence log-probabilities under the policy and the reference (each (B,))."""
    margin = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
    return -F.logsigmoid(margin).mean()


class DPOObjective:
    phases = ("model",)

    def __init__(self, config: DPOConfig):
        self.config = config
        self.reference: nn.Module | None = None

    def setup(self, model: nn.Module) -> None:
        """Keep the starting model as the reference (with LoRA: the base under the adapters)."""
        if not any(True for _ in lora_modules(model)):
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)

    def phase_parameters(self, phase: str, model: nn.Module) -> Iterable[nn.Parameter]:
        return model.parameters()

    def _logprobs(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        B, _, T = inputs.shape
        return sequence_logprobs(model(inputs.reshape(2 * B, T)), targets.reshape(2 * B, T)).view(B, 2)

    def loss(self, phase: str, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs, targets = batch["inputs"], batch["targets"]          # (B, 2, T): chosen, rejected
        policy = self._logprobs(model, inputs, targets)
        with torch.no_grad():
            if self.reference is not None:
                reference = self._logprobs(self.reference, inputs, targets)
            else:
                with adapters_off(model):
                    reference = self._logprobs(model, inputs, targets)
        loss = dpo_loss(policy[:, 0], policy[:, 1], reference[:, 0], reference[:, 1], self.config.beta)
        if self.config.sft_weight:
            count = (targets[:, 0] != -100).sum(-1).clamp(min=1)
            loss = loss + self.config.sft_weight * (-policy[:, 0] / count).mean()
        return loss

    def eval_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.loss("model", model, batch)

    def write_samples(self, model: nn.Module, data, folder: Path, step: int, length: int, prompt: str) -> str:
        return write_text_sample(model, data, folder, step, length, prompt, self.config.sample_temperature)


@register("objective", "dpo", DPOConfig)
def build_dpo_objective(config: DPOConfig, run=None) -> DPOObjective:
    return DPOObjective(config)
