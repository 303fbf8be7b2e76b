"""Sampling images from a diffusion denoiser: guidance, seeds and batching around `processes.samplers`."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from ..processes.samplers import sample
from ..processes.schedules import NoiseSchedule

__all__ = ["guided_denoiser", "generate_images"]


def guided_denoiser(model: nn.Module, labels: torch.Tensor | None, guidance: float,
                    num_classes: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The model as a function of (x, t), conditioned on `labels` with classifier-free guidance.

    output = unconditional + guidance * (conditional - unconditional) (Ho & Salimans 2022, eq. 6):
    guidance 1 is the plain conditional model, larger values trade variety for fidelity to the label.
    The two passes share one batch. Any prediction type works: the conversions to x0 and eps are affine.
    """
    if labels is None or num_classes == 0 or guidance == 1.0:
        return lambda x, t: model(x, t, labels)
    unlabelled = torch.full_like(labels, num_classes)

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, unlabelled]))
        conditional, unconditional = both.chunk(2)
        return unconditional + guidance * (conditional - unconditional)

    return denoise


@torch.no_grad()
def generate_images(model: nn.Module, schedule: NoiseSchedule, labels: Sequence[int] | None, num_samples: int,
                    seed: int, sampler: str = "dpmpp_2m", steps: int = 20, guidance: float = 1.0,
                    spacing: str = "leading", eta: float = 0.0, batch_size: int = 256,
                    callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """`num_samples` images (N, C, H, W) in [-1, 1]; `labels[i]` is sample i's class (or None: unconditional).

    Sample i starts from noise drawn with seed + i, so with the deterministic samplers (ddim with eta 0,
    dpmpp_2m, euler, heun) it is the same image whatever else is in the batch. The per-step noise of
    ddpm (and ddim with eta > 0) comes from a generator seeded with `seed` per batch.
    """
    cfg = model.config
    device = next(model.parameters()).device
    shape = (cfg.channels, cfg.image_size, cfg.image_size)
    images = []
    for start in range(0, num_samples, batch_size):
        rows = range(start, min(num_samples, start + batch_size))
        noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed + i)) for i in rows])
        batch_labels = None
        if labels is not None and cfg.num_classes > 0:
            batch_labels = torch.tensor([labels[i] for i in rows], dtype=torch.long, device=device)
        denoise = guided_denoiser(model, batch_labels, guidance, cfg.num_classes)
        generator = torch.Generator(device=device).manual_seed(seed + start)
        x = sample(denoise, schedule, (len(rows), *shape), generator, sampler=sampler, steps=steps, spacing=spacing,
                   eta=eta, callback=callback, x_T=noise.to(device))
        images.append(x.clamp(-1, 1).float().cpu())
    return torch.cat(images)
