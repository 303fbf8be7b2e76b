"""Log-mel spectrograms: the pictures genloom's audio models draw, and Griffin-Lim to turn them back into sound."""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["mel_filters", "MelSpectrogram", "griffin_lim"]


# -- log-mel spectrograms and Griffin-Lim --------------------------------------------------------------
def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10 ** (np.asarray(m) / 2595.0) - 1.0)


def mel_filters(n_mels: int, n_fft: int, sample_rate: int, fmin: float = 0.0, fmax: float | None = None) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) triangular filters evenly spaced on the HTK mel scale, each of unit area
    (so a band's value is a mean of its bins' magnitudes)."""
    fmax = fmax or sample_rate / 2
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None] - lower) / (centre - lower)
    falling = (upper - bins[None]) / (upper - centre)
    weights = np.maximum(0, np.minimum(rising, falling))
    weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-8)
    return torch.from_numpy(weights).float()


class MelSpectrogram:
    """Sound <-> log-mel pictures in [-1, 1].

    magnitude STFT (Hann window `n_fft`, hop `hop_length`) -> mel bands -> log10, mapped from [floor, floor +
    span] decades to [-1, 1]; a clip of `frames` frames is `frames * hop_length` samples. Back: the mel
    magnitudes spread over the linear bins by non-negative least squares and the phase found by Griffin-Lim."""

    floor = -4.0      # log10 magnitude mapped to -1 (quieter is clamped)
    span = 4.0        # decades up to +1 (a full-scale tone's band is about 10^-0.3)

    def __init__(self, sample_rate: int = 16000, n_fft: int = 1024, hop_length: int = 256, n_mels: int = 64,
                 frames: int = 64):
        self.sample_rate, self.n_fft, self.hop_length, self.n_mels, self.frames = (
            sample_rate, n_fft, hop_length, n_mels, frames)
        self.filters = mel_filters(n_mels, n_fft, sample_rate)
        self.window = torch.hann_window(n_fft)

    @property
    def samples(self) -> int:
        return self.frames * self.hop_length

    def stft(self, wave: torch.Tensor) -> torch.Tensor:
        return torch.stft(wave, self.n_fft, self.hop_length, window=self.window, center=True, return_complex=True)

    def __call__(self, wave: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(S,) or (B, S) samples -> (B, 1, n_mels, frames) in [-1, 1] (cut or padded with silence to `frames`)."""
        wave = torch.as_tensor(np.asarray(wave) if isinstance(wave, np.ndarray) else wave, dtype=torch.float32)
        wave = wave[None] if wave.dim() == 1 else wave
        wave = torch.nn.functional.pad(wave, (0, max(0, self.samples - wave.shape[-1])))[:, :self.samples]
        magnitude = self.stft(wave).abs()[..., :self.frames] / (self.n_fft / 4)     # a full-scale sine: ~1
        mel = self.filters @ magnitude                                               # (B, n_mels, frames)
        log_mel = torch.log10(mel.clamp(min=10 ** self.floor))
        return ((log_mel - self.floor) / self.span * 2 - 1).clamp(-1, 1)[:, None]

    def magnitude(self, picture: torch.Tensor, iterations: int = 100) -> torch.Tensor:
        """(B, 1, n_mels, frames) -> linear STFT magnitudes (B, n_fft/2+1, frames) whose mel bands are the
        picture's: non-negative least squares by multiplicative updates (Lee & Seung 2001), which keep every
        bin positive and fit quiet bands as closely, relatively, as loud ones."""
        mel = 10 ** ((picture[:, 0].float().clamp(-1, 1) + 1) / 2 * self.span + self.floor)
        mel = torch.where(picture[:, 0] <= -1 + 1e-4, torch.zeros_like(mel), mel)    # the floor is silence
        A = self.filters
        target = A.T @ mel
        x = target.clamp(min=1e-10)
        for _ in range(iterations):
            x = x * target / (A.T @ (A @ x)).clamp(min=1e-12)
        return x * (self.n_fft / 4)

    def invert(self, picture: torch.Tensor, iterations: int = 64, seed: int = 0) -> torch.Tensor:
        """(B, 1, n_mels, frames) pictures -> (B, samples) sound by Griffin-Lim."""
        return griffin_lim(self.magnitude(picture), self.n_fft, self.hop_length, iterations, length=self.samples,
                           seed=seed)


def griffin_lim(magnitude: torch.Tensor, n_fft: int, hop_length: int, iterations: int = 64, momentum: float = 0.99,
                length: int | None = None, seed: int = 0, history: list | None = None) -> torch.Tensor:
    """A signal whose STFT magnitude is close to `magnitude` (B, n_fft/2+1, frames): alternate projections
    between consistent spectrograms and the given magnitude (Griffin & Lim 1984), with the momentum of
    the fast variant (Perraudin et al. 2013). `history`, when a list, gets the spectral convergence
    ||  |STFT(x)| - magnitude || / || magnitude || after each iteration."""
    window = torch.hann_window(n_fft)
    generator = torch.Generator().manual_seed(seed)
    phase = torch.exp(2j * math.pi * torch.rand(magnitude.shape, generator=generator))
    spectrum = magnitude * phase
    previous = torch.zeros_like(spectrum)
    frames = magnitude.shape[-1]
    length = length or (frames - 1) * hop_length

    def analyse(signal: torch.Tensor) -> torch.Tensor:
        return torch.stft(signal, n_fft, hop_length, window=window, center=True, return_complex=True)[..., :frames]

    for _ in range(iterations):
        signal = torch.istft(spectrum, n_fft, hop_length, window=window, center=True, length=length)
        rebuilt = analyse(signal)
        accelerated = rebuilt + momentum * (rebuilt - previous)
        previous = rebuilt
        spectrum = magnitude * torch.exp(1j * torch.angle(accelerated))
        if history is not None:
            history.append(float((rebuilt.abs() - magnitude).norm() / magnitude.norm().clamp(min=1e-12)))
    return torch.istft(spectrum, n_fft, hop_length, window=window, center=True, length=length)
