"""Musical statistics of pieces, to set generated chorales beside real ones.

- in key: the share of notes whose pitch class belongs to the piece's key (major scale; for minor keys the
  natural minor with the raised sixth and seventh of the melodic and harmonic forms);
- in range: the share of notes inside their voice's usual choral range (four-voice pieces);
- voice crossings: the share of sixteenth-note frames, over adjacent voice pairs sounding together, where the
  lower voice is above the upper one;
- parallel fifths/octaves: over every pair of voices, moves where both voices change pitch in the same
  direction and form a perfect fifth (or octave/unison) before and after, per 100 such joint moves;
- pitch-class distance: total variation distance (0 = same, 1 = disjoint) between the key-relative
  pitch-class histograms of two sets of pieces.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.figures import pyplot, save_figure
from .tokens import Note, Piece

__all__ = ["MusicStats", "music_stats", "pitch_class_histogram", "pitch_class_distance", "MusicEvalResult",
           "in_key_share", "VOICE_RANGES", "KeyConsistencyResult", "evaluate_key_consistency"]

MAJOR = {0, 2, 4, 5, 7, 9, 11}
MINOR = {0, 2, 3, 5, 7, 8, 9, 10, 11}
VOICE_RANGES = ((60, 81), (53, 74), (48, 69), (36, 64))     # soprano C4-A5, alto F3-D5, tenor C3-A4, bass C2-E4


@dataclass
class MusicStats:
    pieces: int
    notes: int
    in_key: float
    in_range: float | None
    crossings: float | None
    parallels_per_100: float | None
    notes_per_bar: float


def in_key_share(pieces: Sequence[Piece], voices: Sequence[int] | None = None) -> float:
    total = right = 0
    for piece in pieces:
        scale = MAJOR if piece.mode == "major" else MINOR
        for n in piece.notes:
            if voices is None or n.voice in voices:
                total += 1
                right += (n.pitch - piece.tonic) % 12 in scale
    return right / max(total, 1)


def _frames(piece: Piece) -> np.ndarray:
    """(voices, steps) pitch sounding at each sixteenth, -1 for silence."""
    grid = -np.ones((piece.voices, max(piece.length, 1)), dtype=np.int64)
    for n in piece.notes:
        grid[n.voice, n.start:n.end] = n.pitch
    return grid


def _onsets(piece: Piece) -> np.ndarray:
    grid = np.zeros((piece.voices, max(piece.length, 1)), dtype=bool)
    for n in piece.notes:
        grid[n.voice, n.start] = True
    return grid


def music_stats(pieces: Sequence[Piece]) -> MusicStats:
    notes = sum(len(p.notes) for p in pieces)
    in_range = crossings = parallels = None
    four = [p for p in pieces if p.voices == 4]
    if four:
        inside = sum(lo <= n.pitch <= hi for p in four for n in p.notes for lo, hi in [VOICE_RANGES[n.voice]])
        in_range = inside / max(sum(len(p.notes) for p in four), 1)
    several = [p for p in pieces if p.voices >= 2]
    if several:
        crossed = together = moves = parallel = 0
        for p in several:
            grid, onsets = _frames(p), _onsets(p)
            for v in range(p.voices - 1):
                both = (grid[v] >= 0) & (grid[v + 1] >= 0)
                together += int(both.sum())
                crossed += int((both & (grid[v] < grid[v + 1])).sum())
            for a in range(p.voices):
                for b in range(a + 1, p.voices):
                    changes = np.flatnonzero(onsets[a] | onsets[b])
                    for t0, t1 in zip(changes[:-1], changes[1:]):
                        before, after = (grid[a, t0], grid[b, t0]), (grid[a, t1], grid[b, t1])
                        if min(*before, *after) < 0:
                            continue
                        da, db = after[0] - before[0], after[1] - before[1]
                        if da == 0 or db == 0 or (da > 0) != (db > 0):
                            continue
                        moves += 1
                        first, second = abs(before[0] - before[1]) % 12, abs(after[0] - after[1]) % 12
                        parallel += first == second and first in (0, 7)
        crossings = crossed / max(together, 1)
        parallels = 100 * parallel / max(moves, 1)
    bars = sum(-(-p.length // p.bar) for p in pieces)
    return MusicStats(len(pieces), notes, in_key_share(pieces), in_range, crossings, parallels, notes / max(bars, 1))


def pitch_class_histogram(pieces: Sequence[Piece]) -> np.ndarray:
    counts = np.zeros(12)
    for p in pieces:
        for n in p.notes:
            counts[(n.pitch - p.tonic) % 12] += n.duration
    return counts / max(counts.sum(), 1)


def pitch_class_distance(a: Sequence[Piece], b: Sequence[Piece]) -> float:
    return float(0.5 * np.abs(pitch_class_histogram(a) - pitch_class_histogram(b)).sum())


@dataclass
class MusicEvalResult:
    source: str
    nll_per_note: float
    nll_per_frame: float
    nats_per_token: float
    generated: MusicStats
    real: MusicStats
    pitch_class_distance: float
    harmonised_in_key: float | None = None        # lower voices of harmonised held-out sopranos
    real_lower_in_key: float | None = None
    settings: dict = field(default_factory=dict)

    def summary(self) -> str:
        rows = [("in key", "in_key", "{:.1%}"), ("in voice range", "in_range", "{:.1%}"),
                ("voice crossings (frames)", "crossings", "{:.2%}"),
                ("parallel 5ths/8ves per 100 joint moves", "parallels_per_100", "{:.2f}"),
                ("notes per bar", "notes_per_bar", "{:.1f}")]
        lines = [f"data: {self.source} (held-out pieces)",
                 f"held-out NLL: {self.nll_per_note:.3f} nats per note, {self.nll_per_frame:.3f} nats per sixteenth "
                 f"frame ({self.nats_per_token:.3f} per token)", "",
                 f"| statistic | generated ({self.generated.pieces}) | real ({self.real.pieces}) | ratio |",
                 "|---|---|---|---|"]
        for label, name, fmt in rows:
            g, r = getattr(self.generated, name), getattr(self.real, name)
            if g is None or r is None:
                continue
            ratio = f"{g / r:.2f}" if r else "-"
            lines.append(f"| {label} | {fmt.format(g)} | {fmt.format(r)} | {ratio} |")
        lines.append(f"| pitch-class distance to real | {self.pitch_class_distance:.3f} | 0 | |")
        if self.harmonised_in_key is not None:
            lines.append(f"\nharmonised held-out sopranos: alto, tenor and bass in key {self.harmonised_in_key:.1%} "
                         f"(the real lower voices: {self.real_lower_in_key:.1%})")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return asdict(self)


# -- key consistency (`genloom eval --task consistency`) -------------------------------------------------
@dataclass
class KeyConsistencyResult:
    """How long generated pieces hold their key, beside the training pieces (the reference distribution):
    Krumhansl-Schmuckler keys over each piece and its `window_bars`-bar windows (see `keys.py`)."""

    task: str
    figures: dict                                   # name -> {"generated": x, "real": y}
    by_bar: dict                                    # "generated"/"real" -> share of windows in key per window start
    pieces: dict                                    # "generated"/"real" -> per-piece records
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        labels = {"in_key_share": ("windows in the piece's key", "{:.1%}"),
                  "in_key_first_half": ("... in the first half", "{:.1%}"),
                  "in_key_second_half": ("... in the second half", "{:.1%}"),
                  "modulations_per_piece": ("modulations per piece", "{:.2f}"),
                  "modulations_per_8_bars": ("modulations per 8 bars", "{:.2f}"),
                  "key_matches_label": ("whole-piece key = its KEY token / music21's key", "{:.1%}"),
                  "bars_per_piece": ("bars per piece", "{:.1f}")}
        s = self.settings
        lines = [f"task: {self.task} (Krumhansl-Schmuckler keys over {s['window_bars']}-bar windows, hop 1 bar; a "
                 f"modulation is a new key held {s['hold']}+ windows)",
                 f"| figure | generated ({s['num_samples']} x {s['bars']} bars) | the same, cut to their training "
                 f"piece's length | training pieces ({s['reference']}) |",
                 "|---|---|---|---|"]
        for name, (label, fmt) in labels.items():
            row = self.figures[name]
            lines.append(f"| {label} | {fmt.format(row['generated'])} | {fmt.format(row['generated_cut'])} | "
                         f"{fmt.format(row['real'])} |")
        lines.append(f"({self.seconds:.0f} s)")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"task": self.task, "figures": self.figures, "by_bar": self.by_bar, "settings": self.settings,
                "seconds": self.seconds, "pieces": self.pieces}

    def plot(self, path) -> Path | None:
        """Share of windows in the piece's key by position in the piece, and the per-piece shares."""
        plt = pyplot()
        if plt is None:
            return None
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        for name, colour in (("generated", "tab:red"), ("real", "tab:blue")):
            shares = self.by_bar[name]
            left.plot(range(1, len(shares) + 1), shares, color=colour, label=f"{name}")
            right.hist([p["in_key_share"] for p in self.pieces[name]], bins=np.linspace(0, 1, 21), alpha=0.5,
                       color=colour, density=True, label=name)
        left.set(xlabel="window start (bar)", ylabel="share of windows in the piece's key", ylim=(0, 1.02),
                 title="key held over the piece")
        right.set(xlabel="share of a piece's windows in its key", ylabel="density", title="per piece")
        left.legend()
        right.legend()
        return save_figure(fig, path, f"genloom eval --task {self.task}")


def _consistency_figures(pieces: Sequence[Piece], window_bars: int, hold: int) -> tuple[dict, list, list[dict]]:
    from .keys import key_consistency

    records, by_start, first, second = [], {}, [], []
    for piece in pieces:
        result = key_consistency(piece, window_bars, hold)
        record = result.to_json()
        record.update(name=piece.name, label=piece.key_name,
                      label_match=result.key is not None and (result.key.tonic, result.key.mode) == (piece.tonic,
                                                                                                      piece.mode))
        records.append(record)
        keyed = [(i, k) for i, k in enumerate(result.window_keys) if k is not None]
        for i, k in keyed:
            by_start.setdefault(i, []).append(result.key is not None and k.index == result.key.index)
        half = len(result.window_keys) / 2
        first += [result.key is not None and k.index == result.key.index for i, k in keyed if i < half]
        second += [result.key is not None and k.index == result.key.index for i, k in keyed if i >= half]
    n = max(len(records), 1)
    bars = sum(r["bars"] for r in records)
    figures = {"in_key_share": sum(r["in_key_share"] for r in records) / n,
               "in_key_first_half": float(np.mean(first)) if first else 0.0,
               "in_key_second_half": float(np.mean(second)) if second else 0.0,
               "modulations_per_piece": sum(r["modulations"] for r in records) / n,
               "modulations_per_8_bars": 8 * sum(r["modulations"] for r in records) / max(bars, 1),
               "key_matches_label": sum(r["label_match"] for r in records) / n,
               "bars_per_piece": bars / n}
    # Share per window start, over the pieces that reach it (at least 5, so the curve's tail is not one piece).
    curve = [float(np.mean(by_start[i])) for i in sorted(by_start) if len(by_start[i]) >= min(5, len(pieces))]
    return figures, curve, records


def evaluate_key_consistency(generate, reference: Sequence[Piece], *, num_samples: int = 20, bars: int = 32,
                             window_bars: int = 2, hold: int = 2, seed: int = 0, reference_name: str = "",
                             progress: bool = True) -> KeyConsistencyResult:
    """`generate(like, bars, seed) -> Piece` composes a piece of `bars` bars in the key and metre of the
    reference piece `like`; `num_samples` such pieces (cycling through the reference) are set beside all the
    reference pieces on the key figures."""
    import time

    from tqdm.auto import tqdm

    from ..core.errors import GenloomError

    if not reference:
        raise GenloomError("--task consistency: the model's training source has no pieces to compare with")
    if bars < window_bars:
        raise GenloomError(f"--task consistency: {bars} bars is shorter than one {window_bars}-bar window")
    start = time.perf_counter()
    likes = [reference[i % len(reference)] for i in range(num_samples)]
    generated = [generate(like, bars, seed + i) for i, like in
                 enumerate(tqdm(likes, desc="composing long pieces", disable=not progress, leave=False))]
    # The same pieces cut to the length (in whole bars) of the training piece each imitates: like for like.
    cut = []
    for piece, like in zip(generated, likes):
        end = max(-(-like.length // like.bar), window_bars) * piece.bar
        cut.append(Piece(piece.name, [Note(n.start, n.voice, n.pitch, min(n.duration, end - n.start))
                                      for n in piece.notes if n.start < end], piece.voices, piece.bar, piece.tonic,
                         piece.mode))
    g_fig, g_curve, g_rec = _consistency_figures(generated, window_bars, hold)
    c_fig, _, _ = _consistency_figures(cut, window_bars, hold)
    r_fig, r_curve, r_rec = _consistency_figures(reference, window_bars, hold)
    figures = {name: {"generated": g_fig[name], "generated_cut": c_fig[name], "real": r_fig[name]} for name in g_fig}
    return KeyConsistencyResult(
        "consistency", figures, {"generated": g_curve, "real": r_curve}, {"generated": g_rec, "real": r_rec},
        {"num_samples": num_samples, "bars": bars, "window_bars": window_bars, "hold": hold, "seed": seed,
         "reference": f"{len(reference)} {reference_name}".strip()},
        time.perf_counter() - start)
