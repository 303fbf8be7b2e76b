"""A spread-spectrum audio watermark: a keyed noise pattern in the speech band, found again by correlation.

The pattern w is one period of L = 16384 samples at 16 kHz (about 1 s): Gaussian keyed coefficients on the
frequency bins from 400 to 3400 Hz and nothing elsewhere, so it survives a trip through 8 kHz, telephone
bandwidth, lossy codecs that keep the speech band, and it repeats, so a clip cut anywhere still holds whole
periods. Marking (at 16 kHz, the mark then resampled to the clip's own rate and added):

- each period j adds a_j w, a_j following the loudness of that period (quiet passages get a quiet mark), and
- removes the clip's own correlation with w in that period (improved spread spectrum, Malvar & Florencio
  2003): the host no longer adds noise to the detector's statistic at the right alignment;
- the mark is scaled so the clip is `snr_db` (default 32 dB) above it, and never less than 2 dB under that.

Detection resamples to 16 kHz, folds the clip into one period (the periods summed) and correlates it with w
at every circular shift s (one FFT): c(s). Unmarked, c(s) is a sum of many weakly dependent terms, so the
c(s) of the L shifts give the null's scale (their median absolute deviation: one marked shift does not move
it). Two tests, each at half the false-positive budget (Bonferroni): the clip as marked (s = 0; z = c(0) /
scale, p = the normal tail), and a clip cut anywhere (the best of the L shifts; p = 1 - (1 - tail)^L).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

from ..core.errors import GenloomError
from ..media.audio import resample
from .keys import check_key, keyed_normal, subkey

__all__ = ["AudioWatermark", "AudioDetection", "RATE", "PERIOD", "MIN_SECONDS"]

RATE = 16_000                 # the mark's own sample rate
PERIOD = 16_384               # samples of one period of the pattern at RATE
BAND = (400.0, 3400.0)        # Hz: the pattern's frequencies
WHITEN = 33                   # bins of the moving average that whitens the clip's spectrum
FLOOR_DB = 2.0                # the SNR never falls more than this below snr_db
MIN_SECONDS = 0.25            # shorter clips hold too little of the mark to say anything


@dataclass(frozen=True)
class AudioDetection:
    z: float                  # the aligned test's z-score
    z_shifted: float          # the best shift's z-score (a cut clip)
    shift: int                # that shift, in samples at 16 kHz
    p_value: float            # both tests together (Bonferroni)
    marked: bool

    def to_json(self) -> dict:
        return {"z": round(self.z, 3), "z_shifted": round(self.z_shifted, 3), "shift": self.shift,
                "p_value": self.p_value, "marked": self.marked}


class AudioWatermark:
    """The audio mark of one key (`mark` a waveform, `detect` one)."""

    def __init__(self, key: str, snr_db: float = 32.0):
        if not 10 <= snr_db <= 60:
            raise GenloomError(f"audio watermark snr_db {snr_db}: between 10 and 60 dB")
        self.snr_db = snr_db
        self._key = subkey(check_key(key), "audio")
        self.pattern = self._pattern()                       # (PERIOD,) float64, unit RMS

    def __repr__(self) -> str:
        return f"AudioWatermark(snr_db={self.snr_db})"

    def _pattern(self) -> np.ndarray:
        freqs = np.fft.rfftfreq(PERIOD, 1 / RATE)
        band = np.flatnonzero((freqs >= BAND[0]) & (freqs <= BAND[1]))
        values = keyed_normal(self._key, b"pattern", 2 * len(band))
        spectrum = np.zeros(len(freqs), dtype=np.complex128)
        spectrum[band] = values[:len(band)] + 1j * values[len(band):]
        w = np.fft.irfft(spectrum, PERIOD)
        return w / np.sqrt(np.mean(w**2))

    def mark(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        """The marked clip (float32, same length and rate). A silent clip is returned unchanged."""
        x = np.asarray(wave, dtype=np.float64).reshape(-1)
        if x.size == 0 or not np.any(x):
            return x.astype(np.float32)
        x16 = np.asarray(resample(x.astype(np.float32), sample_rate, RATE), dtype=np.float64)
        n = len(x16)
        periods = -(-n // PERIOD)
        tiled = np.tile(self.pattern, periods)[:n]
        mark = np.zeros(n)
        for j in range(periods):
            part = slice(j * PERIOD, min(n, (j + 1) * PERIOD))
            mark[part] = np.sqrt(np.mean(x16[part] ** 2)) * tiled[part]      # a_j w: as loud as the period
        energy = mark @ mark
        if energy == 0:
            return x.astype(np.float32)
        mark *= math.sqrt((x16 @ x16) / energy * 10 ** (-self.snr_db / 10))
        # Improved spread spectrum: remove the host's own (whitened) correlation with the pattern at this
        # alignment, so that what the detector finds there is the mark alone. The statistic is linear in the
        # clip once its whitening is fixed, so one multiple of the tiled pattern cancels the host exactly.
        envelope = self._envelope(_fold(x16 + mark))
        host, unit = self._aligned(_fold(x16), envelope), self._aligned(_fold(tiled), envelope)
        delta = mark - host / unit * tiled
        out = np.asarray(resample(delta.astype(np.float32), RATE, sample_rate), dtype=np.float64)
        out = np.pad(out, (0, max(0, len(x) - len(out))))[:len(x)]
        # The removal adds its own (small) energy: never let the clip come closer than FLOOR_DB below snr_db.
        floor = (x @ x) * 10 ** (-(self.snr_db - FLOOR_DB) / 10)
        if out @ out > floor:
            out *= math.sqrt(floor / (out @ out))
        return (x + out).astype(np.float32)

    @staticmethod
    def _envelope(folded: np.ndarray) -> np.ndarray:
        """The clip's smoothed magnitude spectrum: the detector divides by it (whitening)."""
        return np.convolve(np.abs(np.fft.rfft(folded)), np.ones(WHITEN) / WHITEN, mode="same") + 1e-12

    def _aligned(self, folded: np.ndarray, envelope: np.ndarray) -> float:
        """The whitened correlation at shift 0 (c(0) of `detect`)."""
        return float(np.sum(np.real(np.conj(np.fft.rfft(folded)) * np.fft.rfft(self.pattern)) / envelope))

    def detect(self, wave: np.ndarray, sample_rate: int, threshold: float = 1e-3, where: str = "the clip") -> AudioDetection:
        """Look for the mark; `threshold` is the false-positive rate asked for."""
        y = np.asarray(wave, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(y)):
            raise GenloomError(f"{where}: holds samples that are not finite numbers")
        if len(y) < MIN_SECONDS * sample_rate:
            raise GenloomError(f"{where}: {len(y) / sample_rate:.3f} s is too short for the audio mark (it needs "
                               f"at least {MIN_SECONDS} s)")
        y16 = np.asarray(resample(y.astype(np.float32), sample_rate, RATE), dtype=np.float64)
        folded = _fold(y16)
        # c[s] = sum_k f[k] w[k + s], whitened by the clip's own smoothed spectrum (a loud band counts as noisier)
        c = np.fft.irfft(np.conj(np.fft.rfft(folded)) / self._envelope(folded) * np.fft.rfft(self.pattern), PERIOD)
        centre = np.median(c)
        scale = 1.4826 * np.median(np.abs(c - centre))
        if not scale > 0:                                     # silence: no evidence either way
            return AudioDetection(0.0, 0.0, 0, 1.0, False)
        z = (c - centre) / scale
        shift = int(np.argmax(z))
        tail0 = float(special.ndtr(-z[0]))
        tail = float(special.ndtr(-z[shift]))
        p_shifted = float(-np.expm1(PERIOD * np.log1p(-tail))) if tail < 1 else 1.0
        p = min(1.0, 2 * min(tail0, p_shifted))
        return AudioDetection(float(z[0]), float(z[shift]), shift, p, p < threshold)


def _fold(wave: np.ndarray) -> np.ndarray:
    """The clip's periods summed into one (the last one padded with silence)."""
    return np.pad(wave, (0, -len(wave) % PERIOD)).reshape(-1, PERIOD).sum(0)
