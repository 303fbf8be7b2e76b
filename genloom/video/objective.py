"""Video diffusion: the image diffusion objective over clips, with footage to extend.

Everything of `DiffusionObjective` holds (schedule, prediction target, Min-SNR weighting, label dropout for
classifier-free guidance); in addition a `context_rate` share of the training clips give the network their
first k frames (k uniform in 1..frames-1) clean, a `between_rate` share their first and last 1-2 frames, and
the loss covers only the frames it has to make. So one model generates clips from a label, extends given
frames, and fills in the frames between two given ones. With `frame_rate`, that share of the clips is
trained as separate images (joint image-video training, Ho et al. 2022): the temporal blocks pass them
through, so the spatial layers also learn from frames on their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ..core.config import require
from ..core.registry import register
from ..diffusion.objective import DiffusionConfig, DiffusionObjective
from ..diffusion.samplers import sample
from ..diffusion.sampling import guided_denoiser
from ..train.objective import unwrap_model

__all__ = ["VideoDiffusionConfig", "VideoDiffusionObjective", "generate_videos"]


@dataclass(frozen=True)
class VideoDiffusionConfig(DiffusionConfig):
    kind: Literal["video_diffusion"] = "video_diffusion"
    context_rate: float = 0.5            # share of training clips whose leading frames are given
    between_rate: float = 0.0            # share whose first and last 1-2 frames are given (making the frames between)
    frame_rate: float = 0.0              # share trained as separate images: no temporal mixing, no given frames

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 <= self.context_rate <= 1, "objective.context_rate", "must be in [0, 1]")
        require(0 <= self.between_rate <= 1 - self.context_rate, "objective.between_rate",
                f"must be in [0, {1 - self.context_rate:g}] (context_rate + between_rate <= 1)")
        require(0 <= self.frame_rate < 1, "objective.frame_rate", "must be in [0, 1)")


@torch.no_grad()
def generate_videos(model: nn.Module, schedule, labels, num_samples: int, seed: int, sampler: str = "dpmpp_2m",
                    steps: int = 20, guidance: float = 1.0, context: torch.Tensor | None = None,
                    context_frames: int = 0, batch_size: int = 64, callback=None, last_frames: int = 0) -> torch.Tensor:
    """`num_samples` clips (N, C, T, H, W) in [-1, 1]; sample i starts from noise seeded with seed + i.
    With `context` (N, C, T, H, W), its first `context_frames` and last `last_frames` frames are given and
    kept; the others are made."""
    cfg = model.config
    device = next(model.parameters()).device
    shape = (cfg.channels, cfg.frames, cfg.image_size, cfg.image_size)
    clips = []
    for start in range(0, num_samples, batch_size):
        rows = range(start, min(num_samples, start + batch_size))
        noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed + i)) for i in rows])
        batch_labels = (torch.tensor([labels[i] for i in rows], dtype=torch.long, device=device)
                        if labels is not None and cfg.num_classes else None)
        known = torch.zeros(len(rows), cfg.frames, dtype=torch.bool, device=device)
        known[:, :context_frames] = True
        if last_frames:
            known[:, cfg.frames - last_frames:] = True
        given = (context[start:rows.stop].to(device) if context is not None
                 else torch.zeros(len(rows), *shape, device=device))

        def network(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
            copies = x.shape[0] // given.shape[0]          # guidance runs two copies of the batch at once
            return model(x, t, y, given.repeat(copies, 1, 1, 1, 1), known.repeat(copies, 1))

        denoise = guided_denoiser(network, batch_labels, guidance, cfg.num_classes)
        generator = torch.Generator(device=device).manual_seed(seed + start)
        x = sample(denoise, schedule, (len(rows), *shape), generator, sampler=sampler, steps=steps,
                   callback=callback, x_T=noise.to(device))
        x = torch.where(known[:, None, :, None, None], given, x)
        clips.append(x.clamp(-1, 1).float().cpu())
    return torch.cat(clips)


class VideoDiffusionObjective(DiffusionObjective):
    def _video_loss(self, model: nn.Module, clips: torch.Tensor, labels: torch.Tensor, t: torch.Tensor,
                    noise: torch.Tensor, drop: torch.Tensor, known: torch.Tensor,
                    independent: torch.Tensor | None = None) -> torch.Tensor:
        net = unwrap_model(model)
        labels = (torch.where(drop, torch.full_like(labels, net.config.num_classes), labels)
                  if net.config.num_classes else None)
        noisy = self.schedule.add_noise(clips, noise, t)                           # (B, C, T, H, W)
        if independent is not None:
            known = known & ~independent[:, None]
            output = model(noisy, t.float(), labels, clips, known, independent)
        else:
            output = model(noisy, t.float(), labels, clips, known)
        error = (output.float() - self.schedule.target(clips, noise, t)).pow(2).mean(dim=(1, 3, 4))   # (B, T)
        wanted = (~known).float()
        error = (error * wanted).sum(1) / wanted.sum(1).clamp(min=1)              # (B,) over the made frames
        if self.config.min_snr_gamma > 0:
            error = error * self.schedule.min_snr_weight(t, self.config.min_snr_gamma).to(error)
        return error.mean()

    def _known(self, B: int, T: int, generator: torch.Generator | None, device) -> torch.Tensor:
        draw = torch.rand(B, generator=generator)
        given = draw < self.config.context_rate
        count = torch.randint(1, T, (B,), generator=generator) * given              # 0 where no context
        known = torch.arange(T)[None] < count[:, None]
        if self.config.between_rate and T >= 3:                                    # first and last frames given
            between = (draw >= self.config.context_rate) & (draw < self.config.context_rate + self.config.between_rate)
            most = max(1, (T - 1) // 4)                                            # 8 frames: 1-2 at each end
            first = torch.randint(1, most + 1, (B,), generator=generator)
            last = torch.randint(1, most + 1, (B,), generator=generator)
            ends = (torch.arange(T)[None] < first[:, None]) | (torch.arange(T)[None] >= T - last[:, None])
            known = torch.where(between[:, None], ends, known)
        return known.to(device)

    def loss(self, phase: str, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        clips, labels = batch
        B, _, T = clips.shape[:3]
        t = torch.randint(0, self.config.timesteps, (B,), device=clips.device)
        noise = torch.randn_like(clips)
        drop = torch.rand(B, device=clips.device) < self.config.label_dropout
        independent = (torch.rand(B, device=clips.device) < self.config.frame_rate) if self.config.frame_rate else None
        return self._video_loss(model, clips, labels, t, noise, drop, self._known(B, T, None, clips.device),
                                independent)

    def eval_loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        clips, labels = batch
        B, _, T = clips.shape[:3]
        generator = torch.Generator().manual_seed(0)
        t = ((torch.arange(B) + 0.5) * self.config.timesteps / B).long().to(clips.device)
        noise = torch.randn(clips.shape, generator=generator).to(clips.device)
        drop = torch.zeros(B, dtype=torch.bool, device=clips.device)
        return self._video_loss(model, clips, labels, t, noise, drop, self._known(B, T, generator, clips.device))

    def write_samples(self, model: nn.Module, data, folder: Path, step: int, length: int, prompt: str) -> str:
        """One clip per row (frames across) for 8 classes, as a PNG strip grid."""
        from ..media.image import save_image_grid

        if not length:
            return ""
        cfg = model.config
        labels = [int(c) for c in torch.linspace(0, max(cfg.num_classes - 1, 0), 8).round().tolist()]
        clips = generate_videos(model, self.schedule, labels if cfg.num_classes else None, len(labels), seed=0,
                                sampler=self.config.sampler, steps=self.config.sample_steps,
                                guidance=self.config.guidance)
        frames = clips.transpose(1, 2).reshape(-1, cfg.channels, cfg.image_size, cfg.image_size)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step_{step:07d}.png"
        save_image_grid(frames, path, nrow=cfg.frames, scale=max(1, 48 // cfg.image_size))
        names = [data.classes[c] for c in labels] if cfg.num_classes else []
        path.with_suffix(".txt").write_text("".join(f"row {i + 1}: {n}\n" for i, n in enumerate(names)))
        return f"sample clips: {path}"


@register("objective", "video_diffusion", VideoDiffusionConfig)
def build_video_diffusion_objective(config: VideoDiffusionConfig, run=None) -> VideoDiffusionObjective:
    return VideoDiffusionObjective(config)
