"""Denoising diffusion: teach a network to undo noise at every level (Ho et al. 2020).

Each training example gets a random timestep t and Gaussian noise; the network sees the noised image
and predicts eps, x0 or v (Salimans & Ho 2022) as the schedule says. Losses are weighted with Min-SNR-γ
(Hang et al. 2023) so that the nearly clean timesteps do not dominate training. With probability
`label_dropout` the label (or the caption, for a text-to-image model) is replaced by "none", so one model
serves classifier-free guidance.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

import torch
from torch import nn

from ..core.config import require, validate
from ..core.registry import register
from ..train.objective import unwrap_model
from .samplers import SAMPLERS
from .sampling import generate_images
from .schedules import NoiseSchedule

__all__ = ["DiffusionConfig", "DiffusionObjective"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DiffusionConfig:
    kind: Literal["diffusion"] = "diffusion"
    schedule: Literal["linear", "cosine"] = "cosine"   # how noise grows with t (variance preserving)
    timesteps: int = 1000                               # training timesteps
    prediction: Literal["eps", "x0", "v"] = "v"         # what the network predicts
    min_snr_gamma: float = 5.0                          # Min-SNR-γ loss weighting; 0 = plain mean squared error
    label_dropout: float = 0.1                          # fraction of labels dropped (for classifier-free guidance)
    sampler: str = "dpmpp_2m"                           # default sampler: ddpm, ddim, dpmpp_2m, euler, heun
    sample_steps: int = 20                              # default sampler steps
    guidance: float = 2.0                               # default classifier-free guidance scale (1 = none)
    samples_per_class: int = 4                          # images per class in the grid written at each evaluation

    def __post_init__(self) -> None:
        validate(self, "objective")
        require(self.timesteps >= 2, "objective.timesteps", "must be at least 2")
        require(self.min_snr_gamma >= 0, "objective.min_snr_gamma", "must be 0 (off) or positive, e.g. 5")
        require(0 <= self.label_dropout < 1, "objective.label_dropout", "must be in [0, 1)")
        require(self.sampler in SAMPLERS, "objective.sampler", f"{self.sampler!r} is not one of {', '.join(SAMPLERS)}")
        require(1 <= self.sample_steps <= self.timesteps, "objective.sample_steps",
                f"must be between 1 and objective.timesteps={self.timesteps}")
        require(self.guidance >= 0, "objective.guidance", "must be 0 or more (1 = no guidance)")
        require(self.samples_per_class >= 1, "objective.samples_per_class", "must be at least 1")

    def noise_schedule(self) -> NoiseSchedule:
        return NoiseSchedule(kind=self.schedule, timesteps=self.timesteps, prediction=self.prediction)


class DiffusionObjective:
    phases = ("model",)

    def __init__(self, config: DiffusionConfig):
        self.config = config
        self.schedule = config.noise_schedule()

    def phase_parameters(self, phase: str, model: nn.Module) -> Iterable[nn.Parameter]:
        return model.parameters()

    @staticmethod
    def _dropped(model: nn.Module, labels: torch.Tensor, drop: torch.Tensor) -> torch.Tensor | None:
        """The conditioning with the examples where `drop` is True set to "none" (the no-label class or the
        null caption); None for an unconditional model."""
        net = unwrap_model(model)
        if getattr(net, "text", None) is not None:                                # captions (B, L)
            return torch.where(drop[:, None], net.text.null_caption.to(labels), labels)
        if net.config.num_classes:
            return torch.where(drop, torch.full_like(labels, net.config.num_classes), labels)
        return None

    def _loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, t: torch.Tensor,
              noise: torch.Tensor, drop: torch.Tensor, vectors: torch.Tensor | None = None) -> torch.Tensor:
        """The weighted denoising loss; `vectors` (B, D): a conditioning vector per example for a model
        with one (a speaker embedding)."""
        labels = self._dropped(model, labels, drop)
        noisy = self.schedule.add_noise(images, noise, t)                       # (B, C, H, W)
        output = model(noisy, t.float(), labels) if vectors is None else model(noisy, t.float(), labels, vectors)
        error = (output.float() - self.schedule.target(images, noise, t)).pow(2).mean(dim=(1, 2, 3))  # (B,)
        if self.config.min_snr_gamma > 0:
            error = error * self.schedule.min_snr_weight(t, self.config.min_snr_gamma).to(error)
        return error.mean()

    def train_times(self, batch: int, device: torch.device) -> torch.Tensor:
        """Random timesteps of a training batch (the flow objective draws its own kind of time)."""
        return torch.randint(0, self.config.timesteps, (batch,), device=device)

    def eval_times(self, batch: int, device: torch.device) -> torch.Tensor:
        """Evenly spaced timesteps, so evaluations are comparable."""
        return ((torch.arange(batch) + 0.5) * self.config.timesteps / batch).long().to(device)

    def loss(self, phase: str, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        images, labels = batch
        B = images.shape[0]
        t = self.train_times(B, images.device)
        noise = torch.randn_like(images)
        drop = torch.rand(B, device=images.device) < self.config.label_dropout
        return self._loss(model, images, labels, t, noise, drop)

    def eval_loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The same loss at `eval_times` and fixed noise, so evaluations are comparable."""
        images, labels = batch
        B = images.shape[0]
        generator = torch.Generator().manual_seed(0)
        t = self.eval_times(B, images.device)
        noise = torch.randn(images.shape, generator=generator).to(images.device)
        drop = torch.zeros(B, dtype=torch.bool, device=images.device)
        return self._loss(model, images, labels, t, noise, drop)

    def write_samples(self, model: nn.Module, data, folder: Path, step: int, length: int, prompt: str) -> str:
        """A grid of samples_per_class rows x one column per class (or 8 x 8 unconditional samples)."""
        from ..media.image import save_image_grid

        if not length:
            return ""
        if getattr(model, "text", None) is not None:
            return self._write_prompt_samples(model, data, folder, step)
        num_classes = model.config.num_classes
        per_class = self.config.samples_per_class
        if num_classes:
            labels = [c for _ in range(per_class) for c in range(num_classes)]
            columns = num_classes
        else:
            labels, columns = None, 8
        count = len(labels) if labels else 64
        images = generate_images(model, self.schedule, labels, count, seed=0, sampler=self.config.sampler,
                                 steps=self.config.sample_steps, guidance=self.config.guidance)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step_{step:07d}.png"
        save_image_grid(images, path, nrow=columns, scale=max(1, 64 // images.shape[-1]))   # (decoded: pixels)
        return f"sample grid: {path}"

    def _write_prompt_samples(self, model: nn.Module, data, folder: Path, step: int) -> str:
        """Two images each for 16 validation captions; the captions go beside the grid in a .txt file."""
        from ..media.image import save_image_grid

        prompts = data.sample_prompts(16)
        ids = torch.stack([data.tokenizer.encode(p, warn=False) for p in prompts for _ in range(2)])
        images = generate_images(model, self.schedule, ids, len(ids), seed=0, sampler=self.config.sampler,
                                 steps=self.config.sample_steps, guidance=self.config.guidance)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step_{step:07d}.png"
        save_image_grid(images, path, nrow=8, scale=max(1, 64 // images.shape[-1]))
        path.with_suffix(".txt").write_text("".join(f"{i + 1:2d}. {p}\n" for i, p in enumerate(prompts)))
        return f"sample grid: {path} (prompts in {path.with_suffix('.txt').name}, two images each, row by row)"


@register("objective", "diffusion", DiffusionConfig)
def build_diffusion_objective(config: DiffusionConfig, run=None) -> DiffusionObjective:
    return DiffusionObjective(config)
