"""A small neural vocoder: log-mel picture -> sound in one pass, trained by genloom on the data's own clips.

Griffin-Lim needs no weights but guesses the phase by dozens of alternating projections and leaves a
"phasey", smeared sound. This vocoder instead predicts, for every frame, the STFT magnitude *and* phase
of all n_fft/2+1 bins and lets the inverse STFT do the overlap-add (the design of Vocos, Siuzdenko 2023,
built here from its description: ConvNeXt blocks running at the frame rate, which costs a fraction of
networks that upsample to the sample rate). Training compares the sound it makes with the real clip
through spectra at several resolutions (spectral convergence + log-magnitude distance, Yamamoto et al.
2020) and through the log-mel picture itself; there is no adversarial loss, which keeps training to a
few minutes on a CPU (at some cost in crispness).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.cache import cached_network, load_network
from ..core.fit import fit

__all__ = ["MelVocoder", "spectral_loss", "train_vocoder", "cached_vocoder", "load_vocoder"]

log = logging.getLogger(__name__)
VOCODER_VERSION = 1
RESOLUTIONS = ((256, 64), (512, 128), (1024, 256), (2048, 512))     # (n_fft, hop) of the training loss


class _Block(nn.Module):
    """ConvNeXt block over frames: depthwise convolution, layer norm, widening MLP, scaled residual."""

    def __init__(self, width: int):
        super().__init__()
        self.mix = nn.Conv1d(width, width, 7, padding=3, groups=width)
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, 3 * width)
        self.down = nn.Linear(3 * width, width)
        self.gain = nn.Parameter(torch.full((width,), 0.1))

    def forward(self, x: Tensor) -> Tensor:                          # (B, width, frames)
        h = self.norm(self.mix(x).transpose(1, 2))
        h = self.down(F.gelu(self.up(h))) * self.gain
        return x + h.transpose(1, 2)


class MelVocoder(nn.Module):
    """(B, 1, n_mels, frames) log-mel pictures in [-1, 1] -> (B, frames * hop_length) samples.

    The magnitude starts from the mel bands spread back over the STFT bins (`MelSpectrogram.magnitude`, the
    non-negative least-squares fit Griffin-Lim also starts from) and the network predicts a correction to its
    logarithm; the phase it predicts outright."""

    def __init__(self, n_mels: int = 64, n_fft: int = 1024, hop_length: int = 256, width: int = 256, blocks: int = 8,
                 sample_rate: int = 16000):
        super().__init__()
        from .mel import MelSpectrogram

        self.n_mels, self.n_fft, self.hop_length, self.width, self.blocks = n_mels, n_fft, hop_length, width, blocks
        self.sample_rate = sample_rate
        self.mel = MelSpectrogram(sample_rate, n_fft, hop_length, n_mels, 1)
        self.embed = nn.Conv1d(n_mels, width, 7, padding=3)
        self.norm = nn.LayerNorm(width)
        self.body = nn.Sequential(*[_Block(width) for _ in range(blocks)])
        self.out_norm = nn.LayerNorm(width)
        bins = n_fft // 2 + 1
        self.head = nn.Linear(width, 2 * bins)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)            # start from the prior's magnitude and the phase vocoder's phases
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("advance", 2 * torch.pi * torch.arange(bins) * hop_length / n_fft, persistent=False)
        # random phases in the first frame (all-zero phases overlap-add to silence under the Hann window)
        start = torch.rand(bins, generator=torch.Generator().manual_seed(0)) * 2 * torch.pi
        self.register_buffer("start", start, persistent=False)

    def settings(self) -> dict:
        return {"n_mels": self.n_mels, "n_fft": self.n_fft, "hop_length": self.hop_length, "width": self.width,
                "blocks": self.blocks, "sample_rate": self.sample_rate, "version": VOCODER_VERSION}

    def spectrum(self, pictures: Tensor) -> Tensor:
        """The complex STFT (B, n_fft/2+1, frames) the network predicts."""
        with torch.no_grad():
            prior = torch.log(self.mel.magnitude(pictures.float(), iterations=30) + 1e-5)      # (B, bins, frames)
        x = self.embed(pictures[:, 0].float())
        x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        x = self.out_norm(self.body(x).transpose(1, 2))
        correction, deviation = self.head(x).float().transpose(1, 2).chunk(2, dim=1)
        magnitude = (prior + correction).clamp(max=7.0).exp()
        # the phase advances frame to frame by each bin's own frequency (as a phase vocoder's would) plus the
        # predicted deviation, starting from the first frame's predicted phase
        advance = self.advance[:, None] + deviation
        phase = torch.cat([self.start[:, None] + deviation[..., :1], advance[..., 1:]], dim=-1).cumsum(-1)
        return torch.polar(magnitude, phase)

    def forward(self, pictures: Tensor) -> Tensor:
        frames = pictures.shape[-1]
        return torch.istft(self.spectrum(pictures), self.n_fft, self.hop_length, window=self.window, center=True,
                           length=frames * self.hop_length)


def spectral_loss(made: Tensor, real: Tensor, resolutions=RESOLUTIONS) -> Tensor:
    """Multi-resolution STFT loss: per resolution, spectral convergence plus the mean log-magnitude distance."""
    total = made.new_zeros(())
    for n_fft, hop in resolutions:
        window = torch.hann_window(n_fft, device=made.device)
        a = torch.stft(made, n_fft, hop, window=window, return_complex=True).abs()
        b = torch.stft(real, n_fft, hop, window=window, return_complex=True).abs()
        convergence = (a - b).norm() / b.norm().clamp(min=1e-7)
        distance = (torch.log(a + 1e-5) - torch.log(b + 1e-5)).abs().mean()
        total = total + convergence + distance
    return total / len(resolutions)


def train_vocoder(waves: np.ndarray | Tensor, mel, steps: int = 2000, seed: int = 0, batch_size: int = 16,
                  width: int = 256, blocks: int = 8, progress: bool = True) -> MelVocoder:
    """Train on clips (N, samples) of `mel.samples` samples: each batch is pictured by `mel` and the vocoder
    learns to give the sound back (multi-resolution spectra + the log-mel picture of what it makes)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    waves = torch.as_tensor(np.asarray(waves), dtype=torch.float32)
    model = MelVocoder(mel.n_mels, mel.n_fft, mel.hop_length, width, blocks, mel.sample_rate)

    def loss(model: MelVocoder) -> Tensor:
        ids = torch.randint(len(waves), (batch_size,), generator=generator)
        gain = 10 ** (torch.rand(batch_size, 1, generator=generator) * 0.6 - 0.3)      # +-6 dB
        real = (waves[ids] * gain).clamp(-1, 1)
        pictures = mel(real)
        made = model(pictures)
        return spectral_loss(made, real) + F.l1_loss(mel(made), pictures)

    return fit(model, loss, steps, lr=2e-3, grad_clip=1.0, desc="neural vocoder", progress=progress)


def _build(settings: dict) -> MelVocoder:
    return MelVocoder(settings["n_mels"], settings["n_fft"], settings["hop_length"], settings["width"],
                      settings["blocks"], settings["sample_rate"])


def load_vocoder(folder: Path, name: str = "vocoder") -> MelVocoder:
    """The vocoder kept as NAME.safetensors + NAME.json (its `settings()`) in `folder` (a checkpoint or the cache)."""
    return load_network(folder, name, _build)


def cached_vocoder(folder: Path, waves: np.ndarray, mel, steps: int, seed: int, progress: bool = True) -> MelVocoder:
    """The vocoder for one data set, trained once and kept beside its clips in `folder`."""
    return cached_network(folder, f"vocoder_s{steps}", {"version": VOCODER_VERSION, "n_mels": mel.n_mels}, _build,
                          lambda: train_vocoder(waves, mel, steps, seed, progress=progress),
                          what=f"neural vocoder on {len(waves)} clips", describe=MelVocoder.settings)
