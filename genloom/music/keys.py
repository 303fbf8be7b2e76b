"""Key finding for pieces: the Krumhansl-Schmuckler algorithm, over a whole piece and over sliding windows.

Krumhansl-Schmuckler (Krumhansl 1990, "Cognitive Foundations of Musical Pitch", ch. 4): sum each pitch
class's sounding duration, correlate (Pearson) that 12-vector with the Krumhansl-Kessler probe-tone
profile of every major and minor key (the profile rotated to the key's tonic), and take the key with the
highest correlation. Over windows of a few bars (hop one bar) the same estimate gives the key heard at each
point of the piece; `key_consistency` turns that into the share of windows in the piece's own key and a
modulation count (a move to another key that then holds for `hold` windows in a row).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .tokens import PITCH_CLASSES, Piece

__all__ = ["MAJOR_PROFILE", "MINOR_PROFILE", "Key", "pitch_class_durations", "estimate_key", "key_scores",
           "window_keys", "KeyConsistency", "key_consistency", "count_modulations"]

# Krumhansl & Kessler (1982) probe-tone ratings, tonic first (C major / C minor).
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
MODES = ("major", "minor")


@dataclass(frozen=True)
class Key:
    tonic: int             # pitch class 0-11 (0 = C)
    mode: str              # major | minor
    correlation: float = field(default=0.0, compare=False)

    @property
    def name(self) -> str:
        return f"{PITCH_CLASSES[self.tonic]} {self.mode}"

    @property
    def index(self) -> int:
        """0-23: C major .. B major, then C minor .. B minor."""
        return self.tonic + 12 * MODES.index(self.mode)


def pitch_class_durations(piece: Piece, start: int = 0, end: int | None = None) -> np.ndarray:
    """Sixteenths each pitch class sounds within [start, end) (all voices; a note is cut to the window)."""
    end = piece.length if end is None else end
    durations = np.zeros(12)
    for n in piece.notes:
        overlap = min(n.end, end) - max(n.start, start)
        if overlap > 0:
            durations[n.pitch % 12] += overlap
    return durations


def _profiles() -> np.ndarray:
    """(24, 12): row k is key k's profile over absolute pitch classes (rotated to its tonic)."""
    return np.stack([np.roll(profile, tonic) for profile in (MAJOR_PROFILE, MINOR_PROFILE) for tonic in range(12)])


_KEY_PROFILES = _profiles()


def key_scores(durations: np.ndarray) -> np.ndarray:
    """(24,) Pearson correlation of a pitch-class duration vector with each key's profile (NaN if the vector is
    flat: no notes, or every pitch class equally long)."""
    d = np.asarray(durations, dtype=float)
    dc = d - d.mean()
    norm = np.sqrt((dc ** 2).sum())
    if norm == 0:
        return np.full(24, np.nan)
    pc = _KEY_PROFILES - _KEY_PROFILES.mean(1, keepdims=True)
    return pc @ dc / (np.sqrt((pc ** 2).sum(1)) * norm)


def estimate_key(durations: np.ndarray) -> Key | None:
    """The best-correlated key of a pitch-class duration vector; None when it cannot tell (no notes)."""
    scores = key_scores(durations)
    if np.isnan(scores).all():
        return None
    best = int(np.nanargmax(scores))
    return Key(best % 12, MODES[best // 12], float(scores[best]))


def window_keys(piece: Piece, bars: int = 2, hop: int = 1) -> list[Key | None]:
    """The key of every window of `bars` bars, one every `hop` bars (a piece shorter than a window: one window
    over all of it); None for a window without notes."""
    length, bar = piece.length, piece.bar
    total_bars = max(1, -(-length // bar))
    starts = range(0, max(total_bars - bars, 0) + 1, hop)
    return [estimate_key(pitch_class_durations(piece, s * bar, (s + bars) * bar)) for s in starts]


def count_modulations(keys: Sequence[Key | None], hold: int = 2) -> int:
    """Moves from one key to another, counting only keys that hold for at least `hold` windows in a row (a
    shorter excursion is a passing tonicisation, not a modulation); windows without notes are skipped."""
    runs: list[list] = []                                  # [key index, length]
    for key in keys:
        if key is None:
            continue
        if runs and runs[-1][0] == key.index:
            runs[-1][1] += 1
        else:
            runs.append([key.index, 1])
    held = [k for k, n in runs if n >= hold]
    return sum(a != b for a, b in zip(held, held[1:]))


@dataclass
class KeyConsistency:
    """How one piece holds its key."""

    key: Key | None                # the whole piece's key
    window_keys: list[Key | None]
    in_key_share: float            # share of windows (with notes) in the whole piece's key
    modulations: int
    bars: int

    def to_json(self) -> dict:
        return {"key": self.key.name if self.key else None, "in_key_share": self.in_key_share,
                "modulations": self.modulations, "bars": self.bars,
                "window_keys": [k.name if k else None for k in self.window_keys]}


def key_consistency(piece: Piece, bars: int = 2, hold: int = 2) -> KeyConsistency:
    """The piece's key (Krumhansl-Schmuckler over all of it), the keys of its `bars`-bar windows, the share of
    windows in the piece's key, and its modulations."""
    key = estimate_key(pitch_class_durations(piece))
    keys = window_keys(piece, bars)
    heard = [k for k in keys if k is not None]
    share = sum(key is not None and k.index == key.index for k in heard) / len(heard) if heard else 0.0
    return KeyConsistency(key, keys, share, count_modulations(keys, hold), max(1, -(-piece.length // piece.bar)))
