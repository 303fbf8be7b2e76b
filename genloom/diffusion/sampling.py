"""Sampling images from a diffusion denoiser: guidance, seeds and batching around `processes.samplers`,
plus the image-to-image and inpainting variations."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from ..core.errors import GenloomError
from .latents import latent_codec
from .samplers import sample
from .schedules import NoiseSchedule

__all__ = ["guided_denoiser", "inpainting_denoiser", "generate_images"]

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def guided_denoiser(model: nn.Module, labels: torch.Tensor | None, guidance: float, num_classes: int = 0,
                    unconditional: torch.Tensor | None = None) -> Denoise:
    """The model as a function of (x, t), conditioned on `labels` with classifier-free guidance.

    output = unconditional + guidance * (conditional - unconditional) (Ho & Salimans 2022, eq. 6):
    guidance 1 is the plain conditional model, 0 the unconditional one, larger values trade variety for
    fidelity to the condition. `labels` are class indices (B,) or caption token ids (B, L); the
    unconditional branch gets `unconditional` (e.g. a negative prompt's ids), or by default the "no
    label" class `num_classes` / the model's null caption. The two passes share one batch. Any
    prediction type works: the conversions to x0 and eps are affine.
    """
    if labels is None or guidance == 1.0 or (labels.dim() == 1 and num_classes == 0):
        return lambda x, t: model(x, t, labels)
    if unconditional is None and labels.dim() == 1:
        unconditional = torch.full_like(labels, num_classes)
    if unconditional is None:                                             # captions: the model's null caption
        unconditional = model.text.null_caption.expand(labels.shape[0], -1)
    if guidance == 0.0:
        return lambda x, t: model(x, t, unconditional)

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, unconditional]))
        conditional, plain = both.chunk(2)
        return plain + guidance * (conditional - plain)

    return denoise


def inpainting_denoiser(denoise: Denoise, schedule: NoiseSchedule, known: torch.Tensor, keep: torch.Tensor,
                        noise: torch.Tensor) -> Denoise:
    """`denoise` that sees the kept pixels of `known` (clean images) noised to the current level.

    Before each network call the pixels where `keep` is 1 are replaced by sqrt(ā_t) known + sqrt(1 - ā_t)
    noise, so the network fills the rest in agreement with them (the replacement method of Song et al.
    2021, sec. 5 / Lugmayr et al. 2022 without resampling). Works with every sampler: they all call the
    network on variance-preserving inputs.
    """
    def masked(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        noisy_known = schedule.noised(known, noise, t).to(x)          # flow models: (1 - t) known + t noise
        return denoise(torch.where(keep.bool(), noisy_known, x), t)

    return masked


@torch.no_grad()
def generate_images(model: nn.Module, schedule: NoiseSchedule, labels: Sequence[int] | torch.Tensor | None,
                    num_samples: int, seed: int, sampler: str = "dpmpp_2m", steps: int = 20, guidance: float = 1.0,
                    spacing: str = "leading", eta: float = 0.0, batch_size: int = 256,
                    callback: Callable[[int, int], None] | None = None, negative: torch.Tensor | None = None,
                    init: torch.Tensor | None = None, strength: float = 1.0,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """`num_samples` images (N, C, H, W) in [-1, 1].

    `labels[i]` is sample i's class, or (a tensor (N, L)) its caption's token ids, or None (unconditional).
    `negative` (N, L): caption ids the guidance steers away from (a negative prompt). `init` (N, C, H, W)
    in [-1, 1]: start from these images, noised to `strength` (image-to-image); with `mask` (N, 1, H, W),
    1 = redraw and 0 = keep, only the masked pixels change (inpainting; the others are copied from `init`).
    A latent denoiser (`model.config.autoencoder`) samples latents, decoded at the end; `init` is encoded and
    `mask` downsampled to the latent grid, and the kept pixels are copied from `init` after decoding.

    Sample i starts from noise drawn with seed + i, so with the deterministic samplers (ddim with eta 0,
    dpmpp_2m, euler, heun) it is the same image whatever else is in the batch. The per-step noise of
    ddpm (and ddim with eta > 0) comes from a generator seeded with `seed` per batch.
    """
    cfg = model.config
    device = next(model.parameters()).device
    shape = (cfg.channels, cfg.image_size, cfg.image_size)
    text = getattr(model, "text", None) is not None
    if mask is not None and (init is None or mask.shape[-2:] != init.shape[-2:]):
        raise GenloomError(f"the mask is {tuple(mask.shape[-2:])} but the init image is "
                           f"{None if init is None else tuple(init.shape[-2:])}; inpainting needs both, the same size")
    codec = latent_codec(model)                 # latent diffusion: sample latents, decode them at the end
    pixel_init, pixel_mask = init, mask
    if codec is not None and init is not None:
        if init.shape[-1] != cfg.image_size * codec.factor or init.shape[-2] != cfg.image_size * codec.factor:
            raise GenloomError(f"the init image is {tuple(init.shape[-2:])} but this latent model makes "
                               f"{cfg.image_size * codec.factor}-pixel images")
        init = codec.encode(init.to(device))
        mask = codec.downsample_mask(mask) if mask is not None else None
    images = []
    for start in range(0, num_samples, batch_size):
        rows = range(start, min(num_samples, start + batch_size))
        noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed + i)) for i in rows])
        noise = noise.to(device)
        batch_labels = None
        if labels is not None and text:
            batch_labels = torch.as_tensor(labels)[start:rows.stop].to(device)
        elif labels is not None and cfg.num_classes > 0:
            batch_labels = torch.tensor([labels[i] for i in rows], dtype=torch.long, device=device)
        unconditional = negative[start:rows.stop].to(device) if negative is not None else None
        denoise = guided_denoiser(model, batch_labels, guidance, cfg.num_classes, unconditional)
        batch_init = init[start:rows.stop].to(device) if init is not None else None
        if mask is not None:
            keep = 1 - mask[start:rows.stop].to(device)
            known_noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed + i + 7919))
                                       for i in rows]).to(device)
            denoise = inpainting_denoiser(denoise, schedule, batch_init, keep, known_noise)
        generator = torch.Generator(device=device).manual_seed(seed + start)
        x = sample(denoise, schedule, (len(rows), *shape), generator, sampler=sampler, steps=steps, spacing=spacing,
                   eta=eta, callback=callback, x_T=noise, init=batch_init, strength=strength)
        if mask is not None:
            x = torch.where(keep.bool(), batch_init, x)
        if codec is not None:
            x = codec.decode(x)
            if pixel_mask is not None:
                x = torch.where(pixel_mask[start:rows.stop].to(device).bool(), x, pixel_init[start:rows.stop].to(x))
        images.append(x.clamp(-1, 1).float().cpu())
    return torch.cat(images)
