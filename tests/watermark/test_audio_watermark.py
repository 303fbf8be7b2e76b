"""The spread-spectrum audio mark: its SNR, no detection without the key, and detection after resampling
16k -> 8k -> 16k, noise at 20 dB SNR, 8-bit and mu-law quantisation, OGG and MP3 files, and cutting."""

from __future__ import annotations

import io

import numpy as np
import pytest

from genloom.core.errors import GenloomError
from genloom.media.audio import resample
from genloom.watermark.audio import AudioWatermark

KEY = "test-key-0123"


def speechlike(seconds: float, rate: int = 16_000, seed: int = 0) -> np.ndarray:
    """A voiced sound: 19 harmonics of a wobbling pitch under a syllable-rate envelope, plus breath noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(140 + 30 * np.sin(2 * np.pi * 1.3 * t + seed)) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 20))
    envelope = (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t + seed)) ** 2
    breath = np.convolve(rng.standard_normal(len(t)), np.ones(8) / 8, "same")
    return (0.2 * envelope * voiced + 0.02 * breath).astype(np.float32)


def noisy(wave: np.ndarray, snr_db: float, seed: int = 1) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(len(wave))
    return wave + noise * np.sqrt(np.mean(wave.astype(np.float64) ** 2) / np.mean(noise**2) / 10 ** (snr_db / 10))


def mu_law(wave: np.ndarray, mu: int = 255) -> np.ndarray:
    """8-bit mu-law encoding and decoding (G.711's curve)."""
    coded = np.round(np.sign(wave) * np.log1p(mu * np.abs(wave)) / np.log1p(mu) * 127) / 127
    return np.sign(coded) * np.expm1(np.abs(coded) * np.log1p(mu)) / mu


def codec(wave: np.ndarray, rate: int, fmt: str) -> np.ndarray:
    soundfile = pytest.importorskip("soundfile")
    if fmt not in soundfile.available_formats():
        pytest.skip(f"libsndfile here has no {fmt}")
    buffer = io.BytesIO()
    soundfile.write(buffer, wave, rate, format=fmt)
    buffer.seek(0)
    return soundfile.read(buffer, dtype="float32")[0][:len(wave)]


ATTACKS = {
    "none": lambda y, r: y,
    "resample 16k-8k-16k": lambda y, r: resample(resample(y, r, 8000), 8000, r),
    "noise 20 dB": lambda y, r: noisy(y, 20),
    "resample and noise": lambda y, r: noisy(resample(resample(y, r, 8000), 8000, r), 20),
    "8-bit": lambda y, r: np.round(y * 127) / 127,
    "mu-law": lambda y, r: mu_law(y),
    "OGG": lambda y, r: codec(y, r, "OGG"),
    "MP3": lambda y, r: codec(y, r, "MP3"),
    "cut 0.4 s from the start and 0.2 s from the end": lambda y, r: y[int(0.4 * r):-int(0.2 * r)],
}


@pytest.mark.parametrize("attack", ATTACKS)
def test_the_mark_survives(attack):
    mark = AudioWatermark(KEY)
    for seed, rate in ((0, 16_000), (1, 22_050)):
        clean = speechlike(2.0, rate, seed)
        marked = mark.mark(clean, rate)
        got = mark.detect(ATTACKS[attack](marked, rate), rate)
        assert got.marked and got.p_value < 1e-6, (attack, rate, got)


def test_the_mark_is_quiet_and_keyed():
    mark, other = AudioWatermark(KEY), AudioWatermark("another-key-456")
    for seed in range(3):
        clean = speechlike(2.0, 16_000, seed)
        marked = mark.mark(clean, 16_000)
        snr = 10 * np.log10(np.sum(clean.astype(np.float64) ** 2) / np.sum((marked - clean).astype(np.float64) ** 2))
        assert 30.0 <= snr <= 33.0
        assert not mark.detect(clean, 16_000).marked
        assert not other.detect(marked, 16_000).marked
        assert mark.detect(clean, 16_000).p_value > 1e-3 and other.detect(marked, 16_000).p_value > 1e-3


def test_too_short_or_broken_clips_are_one_clear_error():
    mark = AudioWatermark(KEY)
    with pytest.raises(GenloomError, match="too short for the audio mark"):
        mark.detect(np.zeros(1000, dtype=np.float32), 16_000)
    with pytest.raises(GenloomError, match="not finite"):
        mark.detect(np.full(8000, np.nan, dtype=np.float32), 16_000)
    assert not mark.detect(np.zeros(8000, dtype=np.float32), 16_000).marked      # silence: nothing to find
