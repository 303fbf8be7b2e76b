"""Flow matching: teach a network the velocity that carries noise to data along straight lines.

Rectified flow (Liu et al. 2022) / conditional flow matching (Lipman et al. 2022) in SD3's form (Esser et al.
2024): an example x0 with noise n at time t in [0, 1] is x_t = (1 - t) x0 + t n, and the network learns the
velocity v = n - x0 by mean squared error (see `FlowSchedule`; the convention of diffusers'
FlowMatchEulerDiscreteScheduler, so the network sees the timestep 1000 t). Times are drawn uniformly or from
SD3's logit-normal density (sec. 3.1: t = sigmoid(m + s z), z ~ N(0, 1)), which spends the training on the
middle of the path where the velocity is hardest to guess. Sampling integrates dx/dt = v from t = 1 to 0
with Euler or Heun steps, optionally shifted towards the noisy end (`shift`, SD3 eq. 23).

The objective knows nothing of pixels: it flows whatever tensors the data module hands it (images, or an
autoencoder's latents), with any denoiser that takes (x, t, labels) -- the UNet or the DiT -- and the same
label dropout as the diffusion objective for classifier-free guidance (class labels or captions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..core.config import require, validate
from ..core.registry import register
from .objective import DiffusionObjective
from .samplers import FLOW_SAMPLERS, SAMPLERS
from .schedules import FlowSchedule

__all__ = ["FlowConfig", "FlowObjective", "sample_times"]


@dataclass(frozen=True)
class FlowConfig:
    kind: Literal["flow"] = "flow"
    time_sampling: Literal["logit_normal", "uniform"] = "logit_normal"   # training times: SD3's density or U(0, 1)
    logit_mean: float = 0.0                   # logit-normal location m (negative: more weight on the clean end)
    logit_std: float = 1.0                    # logit-normal scale s
    shift: float = 1.0                        # sampling shift t' = shift t / (1 + (shift - 1) t); 1 = none, SD3: 3
    label_dropout: float = 0.1                # fraction of labels dropped (for classifier-free guidance)
    sampler: str = "euler"                    # default sampler: euler or heun (the flow ODE's)
    sample_steps: int = 20                    # default sampler steps
    guidance: float = 1.0                     # default classifier-free guidance scale (1 = none)
    samples_per_class: int = 4                # images per class in the grid written at each evaluation
    distilled: str = ""                       # set by `genloom distill`: how these weights were distilled, from what

    def __post_init__(self) -> None:
        validate(self, "objective")
        require(self.logit_std > 0, "objective.logit_std", f"must be positive, got {self.logit_std}")
        require(self.shift > 0, "objective.shift", f"must be positive (1 = no shift, SD3 uses 3), got {self.shift}")
        require(0 <= self.label_dropout < 1, "objective.label_dropout", "must be in [0, 1)")
        if self.sampler in SAMPLERS and self.sampler not in FLOW_SAMPLERS:
            require(False, "objective.sampler", f"{self.sampler!r} does not work with flow matching (a velocity "
                    f"model); use one of {', '.join(FLOW_SAMPLERS)}")
        require(self.sampler in FLOW_SAMPLERS, "objective.sampler",
                f"{self.sampler!r} is not one of {', '.join(FLOW_SAMPLERS)}")
        require(self.sample_steps >= 1, "objective.sample_steps", "must be at least 1")
        require(self.guidance >= 0, "objective.guidance", "must be 0 or more (1 = no guidance)")
        require(self.samples_per_class >= 1, "objective.samples_per_class", "must be at least 1")

    def noise_schedule(self) -> FlowSchedule:
        """The path and sampling levels (named as DiffusionConfig's, so every image handle finds it)."""
        return FlowSchedule(shift=self.shift)


def sample_times(config: FlowConfig, count: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """`count` training times in (0, 1): logit-normal (SD3, eq. 19) or uniform, float32 on `device`."""
    if config.time_sampling == "uniform":
        return torch.rand(count, generator=generator).to(device)
    z = torch.randn(count, generator=generator)
    return torch.sigmoid(config.logit_mean + config.logit_std * z).to(device)


class FlowObjective(DiffusionObjective):
    """Flow matching; sample grids, label dropout and guidance as the diffusion objective's."""

    def __init__(self, config: FlowConfig):
        self.config = config
        self.schedule = config.noise_schedule()

    def _loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, t: torch.Tensor,
              noise: torch.Tensor, drop: torch.Tensor, vectors: torch.Tensor | None = None) -> torch.Tensor:
        """Mean squared error of the predicted velocity, t (B,) in [0, 1]."""
        require(vectors is None, "objective.kind", "flow matching does not take conditioning vectors")
        labels = self._dropped(model, labels, drop)
        noisy = self.schedule.add_noise(images, noise, t)
        output = model(noisy, self.schedule.model_time(t), labels)
        return (output.float() - self.schedule.target(images, noise, t).float()).pow(2).mean()

    def train_times(self, batch: int, device: torch.device) -> torch.Tensor:
        return sample_times(self.config, batch, device)                 # uniform or logit-normal, in (0, 1)

    def eval_times(self, batch: int, device: torch.device) -> torch.Tensor:
        return ((torch.arange(batch) + 0.5) / batch).to(device)


@register("objective", "flow", FlowConfig)
def build_flow_objective(config: FlowConfig, run=None) -> FlowObjective:
    return FlowObjective(config)
