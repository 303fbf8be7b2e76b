"""Audio diffusion: the image diffusion objective over log-mel pictures, with a voice to speak in.

Everything of `DiffusionObjective` holds (schedule, prediction, Min-SNR weighting, label dropout for
classifier-free guidance over the word or sound). A model with a voice input (`model.vector_dim`) also gets
each clip's speaker vector — the speaker encoder's embedding of other clips of the same voice — dropped to
zeros ("no voice") for a `voice_dropout` share, so it also speaks without a reference. Guidance acts on the
label; both of its passes hear the same voice. `voice_guidance` s > 1 also pushes each pass towards the voice:
e(voice) + (s - 1) (e(voice) - e(no voice)), a second guidance that costs one more pass of the denoiser.
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
from ..diffusion.sampling import generate_images
from ..train.objective import unwrap_model

__all__ = ["AudioDiffusionConfig", "AudioDiffusionObjective", "generate_spectrograms"]


@dataclass(frozen=True)
class AudioDiffusionConfig(DiffusionConfig):
    kind: Literal["audio_diffusion"] = "audio_diffusion"
    voice_dropout: float = 0.1            # share of training clips that get no voice vector
    vocoder_iterations: int = 64          # Griffin-Lim iterations from a picture back to sound
    voice_guidance: float = 1.0           # > 1: guidance towards the reference voice as well (one more pass)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 <= self.voice_dropout < 1, "objective.voice_dropout", "must be in [0, 1)")
        require(self.voice_guidance >= 0, "objective.voice_guidance", "must be >= 0 (1: no voice guidance)")
        require(self.vocoder_iterations >= 1, "objective.vocoder_iterations", "must be at least 1")


class _WithVector(nn.Module):
    """The denoiser with its voice vectors fixed, called as the image samplers call a denoiser."""

    def __init__(self, model: nn.Module, vectors: torch.Tensor, voice_guidance: float = 1.0):
        super().__init__()
        self.model, self.vectors, self.voice_guidance = model, vectors, voice_guidance
        self.config, self.text = model.config, None

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        copies = x.shape[0] // self.vectors.shape[0]          # guidance runs two copies of the batch at once
        vectors = self.vectors.repeat(copies, 1)
        if self.voice_guidance == 1.0:
            return self.model(x, t, labels, vectors)
        both = self.model(torch.cat([x, x]), torch.cat([t, t]), None if labels is None else torch.cat([labels, labels]),
                          torch.cat([vectors, torch.zeros_like(vectors)]))
        voiced, plain = both.chunk(2)
        return plain + self.voice_guidance * (voiced - plain)


@torch.no_grad()
def generate_spectrograms(model: nn.Module, schedule, labels, num_samples: int, seed: int,
                          vectors: torch.Tensor | None = None, sampler: str = "dpmpp_2m", steps: int = 20,
                          guidance: float = 1.0, batch_size: int = 128, voice_guidance: float = 1.0) -> torch.Tensor:
    """`num_samples` log-mel pictures (N, 1, n_mels, frames) in [-1, 1]; sample i starts from noise seeded with
    seed + i. `vectors` (N, vector_dim): the voice of each (None: no voice); `voice_guidance`: its scale."""
    if vectors is None or not getattr(model.config, "vector_dim", 0):
        return generate_images(model, schedule, labels, num_samples, seed, sampler=sampler, steps=steps,
                               guidance=guidance, batch_size=batch_size)
    device = next(model.parameters()).device
    pictures = []
    for start in range(0, num_samples, batch_size):
        stop = min(num_samples, start + batch_size)
        wrapped = _WithVector(model, vectors[start:stop].to(device), voice_guidance)
        part = None if labels is None else list(labels[start:stop])
        pictures.append(generate_images(wrapped, schedule, part, stop - start, seed + start, sampler=sampler,
                                        steps=steps, guidance=guidance, batch_size=batch_size))
    return torch.cat(pictures)


class AudioDiffusionObjective(DiffusionObjective):
    def _vectors(self, model: nn.Module, batch, mute: torch.Tensor) -> torch.Tensor | None:
        """The batch's voice vectors, zeros ("no voice") where `mute`; None for a model without a voice input."""
        if len(batch) < 3 or not getattr(unwrap_model(model).config, "vector_dim", 0):
            return None
        return torch.where(mute[:, None], torch.zeros_like(batch[2]), batch[2])

    def loss(self, phase: str, model: nn.Module, batch) -> torch.Tensor:
        pictures, labels = batch[0], batch[1]
        B = pictures.shape[0]
        t = torch.randint(0, self.config.timesteps, (B,), device=pictures.device)
        noise = torch.randn_like(pictures)
        drop = torch.rand(B, device=pictures.device) < self.config.label_dropout
        mute = torch.rand(B, device=pictures.device) < self.config.voice_dropout
        return self._loss(model, pictures, labels, t, noise, drop, self._vectors(model, batch, mute))

    def eval_loss(self, model: nn.Module, batch) -> torch.Tensor:
        pictures, labels = batch[0], batch[1]
        B = pictures.shape[0]
        generator = torch.Generator().manual_seed(0)
        t = ((torch.arange(B) + 0.5) * self.config.timesteps / B).long().to(pictures.device)
        noise = torch.randn(pictures.shape, generator=generator).to(pictures.device)
        off = torch.zeros(B, dtype=torch.bool, device=pictures.device)
        return self._loss(model, pictures, labels, t, noise, off, self._vectors(model, batch, off))

    def write_samples(self, model: nn.Module, data, folder: Path, step: int, length: int, prompt: str) -> str:
        """Spectrograms of up to 16 classes (two each; spoken words in two training voices) as a PNG grid, and the
        first row as WAV files."""
        from ..media.audio import write_wav
        from ..media.image import save_image_grid

        if not length:
            return ""
        cfg = model.config
        classes = list(range(min(cfg.num_classes, 16))) if cfg.num_classes else [0] * 8
        labels = [c for _ in range(2) for c in classes] if cfg.num_classes else None
        count = 2 * len(classes)
        vectors = None
        if getattr(cfg, "vector_dim", 0) and getattr(data, "voice_vectors", None) is not None:
            train = data.split_ids("train")
            picks = [int(train[0]), int(train[len(train) // 2])]
            vectors = torch.stack([data.voice_vectors[picks[i // len(classes)]] for i in range(count)])
        pictures = generate_spectrograms(model, self.schedule, labels, count, seed=0, vectors=vectors,
                                         sampler=self.config.sampler, steps=self.config.sample_steps,
                                         guidance=self.config.guidance)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step_{step:07d}.png"
        save_image_grid(pictures.flip(2), path, nrow=len(classes), scale=2)
        mel = data.config.mel()
        waves = mel.invert(pictures[:len(classes)], iterations=32)
        for i, wave in enumerate(waves):
            name = data.classes[classes[i]] if cfg.num_classes else str(i)
            write_wav(folder / f"step_{step:07d}_{i:02d}_{name.replace(' ', '-')}.wav", wave, mel.sample_rate)
        return f"sample spectrograms: {path} (and .wav files beside it)"


@register("objective", "audio_diffusion", AudioDiffusionConfig)
def build_audio_diffusion_objective(config: AudioDiffusionConfig, run=None) -> AudioDiffusionObjective:
    return AudioDiffusionObjective(config)
