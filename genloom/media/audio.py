"""Sound files in and out, and checks on a clip, for every package that handles sound (audio, music).

Samples are mono float32 in [-1, 1]. `read_audio` reads WAV (and FLAC/OGG with soundfile) at the rate asked
for, resampling when the file's differs; `write_wav(path, wave, sample_rate)` writes 16-bit PCM, the one
WAV writer genloom has; `check_clip` turns away silent or too short reference clips.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from ..core.errors import DataError

log = logging.getLogger(__name__)


# -- reading, writing and checking sound ---------------------------------------------------------------
def read_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """A sound file as mono float32 samples in [-1, 1] at `sample_rate` (resampled when the file's rate
    differs). Clear errors for missing, unreadable or empty files."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such sound file")
    try:
        import soundfile

        wave, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except ImportError:
        wave, rate = _read_wav_scipy(path)
    except Exception as e:                               # libsndfile says "Format not recognised" and the like
        raise DataError(f"{path}: cannot be read as sound ({type(e).__name__}: {str(e)[:120]}); expected "
                        "a WAV, FLAC or OGG file") from None
    if wave.size == 0:
        raise DataError(f"{path}: holds no samples")
    return resample(wave.mean(axis=1), rate, sample_rate)


def _read_wav_scipy(path: Path) -> tuple[np.ndarray, int]:
    from scipy.io import wavfile

    try:
        rate, wave = wavfile.read(path)
    except Exception as e:
        raise DataError(f"{path}: cannot be read as a WAV file ({type(e).__name__}: {str(e)[:120]})") from None
    if wave.dtype.kind == "i":
        wave = wave / float(np.iinfo(wave.dtype).max)
    elif wave.dtype.kind == "u":
        wave = (wave.astype(np.float64) - 128) / 128
    wave = np.asarray(wave, dtype=np.float32)
    return (wave[:, None] if wave.ndim == 1 else wave), int(rate)


def resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Band-limited resampling by a rational factor (polyphase filtering, scipy)."""
    if rate == target:
        return wave.astype(np.float32)
    from scipy.signal import resample_poly

    g = math.gcd(int(rate), int(target))
    return resample_poly(wave, target // g, rate // g).astype(np.float32)


def write_wav(path: str | Path, wave: np.ndarray | torch.Tensor, sample_rate: int) -> Path:
    """Mono samples (N,) in [-1, 1] as a 16-bit PCM WAV file at `path` (its folder made if needed; peaks
    beyond +-1 are clipped); returns the path."""
    from scipy.io import wavfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = np.asarray(wave.detach().cpu() if isinstance(wave, torch.Tensor) else wave, dtype=np.float32)
    wavfile.write(path, sample_rate, (np.clip(samples, -1, 1) * 32767).round().astype(np.int16))
    return path


def check_clip(wave: np.ndarray, sample_rate: int, name: str, min_seconds: float = 0.0) -> np.ndarray:
    """A clip made ready for use: an error for a silent or too short one, a warning for a clipped one;
    returned peak-normalised to 0.9."""
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    if peak < 1e-3:
        raise DataError(f"{name}: the clip is silent (peak {peak:.1e}); give a recording of a voice or sound")
    voiced = _voiced_seconds(wave, sample_rate)
    if voiced < min_seconds:
        raise DataError(f"{name}: {voiced:.2f} s of sound ({len(wave) / sample_rate:.2f} s in all); at least "
                        f"{min_seconds:g} s is needed (a reference voice clip should hold 1-3 s of speech)")
    if np.mean(np.abs(wave) >= 0.999 * max(peak, 1.0 - 1e-3)) > 0.005 and peak >= 0.99:
        log.warning("%s: %.1f%% of the samples are clipped at full scale; the voice is measured from it anyway",
                    name, 100 * np.mean(np.abs(wave) >= 0.99))
    return (wave * (0.9 / peak)).astype(np.float32)


def _voiced_seconds(wave: np.ndarray, sample_rate: int, window: float = 0.02) -> float:
    """Seconds of 20-ms windows louder than 1/30 of the loudest one (about -30 dB)."""
    size = max(1, int(sample_rate * window))
    n = len(wave) // size
    if n == 0:
        return 0.0
    energy = np.sqrt((wave[:n * size].reshape(n, size) ** 2).mean(axis=1))
    return float((energy > energy.max() / 30).sum() * window)
