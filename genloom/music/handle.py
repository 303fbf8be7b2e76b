"""The handle of a music model (trained on `data.kind = "music"`): compose, continue, harmonise, write, score.

`genloom.load(DIR)` returns a `MusicModel` for such a checkpoint.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Sequence

import torch

from ..core.config import RunConfig
from ..core.errors import GenloomError
from ..handle import EvalRequest, Handle, score_with
from ..lm.windows import score_split
from .data import MusicData, parse_music_file
from .eval import (
    KeyConsistencyResult,
    MusicEvalResult,
    evaluate_key_consistency,
    in_key_share,
    music_stats,
    pitch_class_distance,
)
from .generate import compose, write_piece
from .tokens import PITCH_CLASSES, Piece

__all__ = ["MusicModel", "parse_key", "open_checkpoint", "score"]

_NAMES = {name.lower(): i for i, name in enumerate(PITCH_CLASSES)} | {
    "db": 1, "d#": 3, "gb": 6, "g#": 8, "a#": 10, "cb": 11, "e#": 5, "fb": 4, "b#": 0}


def parse_key(text: str) -> tuple[int, str]:
    """'G major', 'e minor', 'F# minor', 'Bb' (major) -> (tonic pitch class, mode)."""
    words = text.replace("-", " ").split()
    if not words or words[0].lower() not in _NAMES or len(words) > 2 or (
            len(words) == 2 and words[1].lower() not in ("major", "minor")):
        raise GenloomError(f"--key {text!r}: expected a key such as 'G major', 'e minor' or 'Bb major'")
    return _NAMES[words[0].lower()], (words[1].lower() if len(words) == 2 else "major")


class MusicModel(Handle):
    """A transformer over music tokens, with the encoding and voices it was trained on."""

    def __init__(self, path: Path, config: RunConfig, model: torch.nn.Module):
        super().__init__(path, config, model)
        self.encoding = config.data.encoding
        self.voices = 1 if config.data.path == "builtin:essen" else config.data.voices
        self._data: MusicData | None = None

    @property
    def data(self) -> MusicData:
        """The training source, split as in training (parsed once, cached)."""
        if self._data is None:
            self._data = MusicData(self.config.data, self.model.config.block_size)
            self._data.prepare()
        return self._data

    def held_out(self) -> list[Piece]:
        return self.data.pieces["val"]

    def _piece(self, source: str | Path | Piece, what: str) -> Piece:
        if isinstance(source, Piece):
            return source
        text = str(source)
        if text.startswith("heldout:"):
            pieces = self.held_out()
            try:
                return pieces[int(text.split(":", 1)[1])]
            except (ValueError, IndexError):
                raise GenloomError(f"{what} {text!r}: expected heldout:N with N from 0 to {len(pieces) - 1}") from None
        return parse_music_file(text, self.voices)

    def _check_range(self, piece: Piece, what: str) -> None:
        outside = [n.pitch for n in piece.notes if not 21 <= n.pitch <= 108]
        if outside:
            raise GenloomError(f"{what}: pitches {sorted(set(outside))[:5]} are outside the model's range (MIDI 21-108, "
                               "the piano's keys)")

    def compose(self, *, num_samples: int = 1, bars: int = 8, key: str | None = None, seed: int | None = None,
                temperature: float = 1.0, voice_leading: bool = False) -> list[Piece]:
        """New pieces of `bars` bars; `key` like 'G major' (default: drawn by the seed); sample i uses seed + i.
        `voice_leading`: the decoder also forbids parallel fifths and octaves (grid models)."""
        seed = self.draw_seed(seed)
        out = []
        for i in range(num_samples):
            chosen = parse_key(key) if key else (random.Random(seed + i).randrange(12),
                                                 random.Random(seed + i + 10**6).choice(["major", "minor"]))
            piece = compose(self.model, self.encoding, self.voices, bars, seed + i, temperature, chosen,
                            voice_leading=voice_leading)
            piece.name = f"composed-{seed + i}"
            out.append(piece)
        return out

    def continue_piece(self, opening: str | Path | Piece, *, bars: int = 8, opening_bars: int = 2,
                       num_samples: int = 1, seed: int | None = None, temperature: float = 1.0,
                       voice_leading: bool = False) -> list[Piece]:
        """The first `opening_bars` bars of `opening` (a MIDI/MusicXML file, heldout:N, or a Piece) and `bars`
        more."""
        piece = self._piece(opening, "--opening")
        self._check_range(piece, "--opening")
        seed = self.draw_seed(seed)
        out = []
        for i in range(num_samples):
            result = compose(self.model, self.encoding, self.voices, bars, seed + i, temperature,
                             opening=piece, opening_bars=opening_bars, voice_leading=voice_leading)
            result.name = f"{piece.name}-continued-{seed + i}"
            out.append(result)
        return out

    def harmonize(self, melody: str | Path | Piece, *, num_samples: int = 1, seed: int | None = None,
                  temperature: float = 1.0, voice_leading: bool = False) -> list[Piece]:
        """Alto, tenor and bass under a soprano melody (the top voice of a file, heldout:N, or a Piece)."""
        piece = self._piece(melody, "--melody")
        self._check_range(Piece(piece.name, piece.voice(0)), "--melody")
        seed = self.draw_seed(seed)
        out = []
        for i in range(num_samples):
            result = compose(self.model, self.encoding, self.voices, seed=seed + i, temperature=temperature,
                             melody=piece, voice_leading=voice_leading)
            result.name = f"{piece.name}-harmonised-{seed + i}"
            out.append(result)
        return out

    def write(self, piece: Piece, stem: str | Path, *, formats: Sequence[str] = ("mid", "musicxml", "wav", "png"),
              synth: str = "genloom", tempo: float = 80.0) -> list[Path]:
        return write_piece(piece, Path(stem), formats, synth, tempo)

    def evaluate(self, *, num_samples: int = 20, temperature: float = 1.0, seed: int = 0,
                 harmonise: int = 20, voice_leading: bool = False, progress: bool = True) -> MusicEvalResult:
        """Held-out NLL per note and per sixteenth frame; statistics of `num_samples` composed pieces (each in the
        key and of the length of a held-out piece) beside the held-out pieces; and the in-key share of the
        lower voices when harmonising `harmonise` held-out sopranos."""
        from tqdm.auto import tqdm

        data = self.data
        nats, tokens = score_split(self.model, data, progress=progress)
        real = self.held_out()
        generated = []
        for i in tqdm(range(num_samples), desc="composing", disable=not progress, leave=False):
            like = real[i % len(real)]
            bars = max(1, -(-like.length // like.bar))
            piece = compose(self.model, self.encoding, self.voices, bars, seed + i, temperature,
                            (like.tonic, like.mode), like.bar, voice_leading=voice_leading)
            generated.append(piece)
        result = MusicEvalResult(
            source=data.describe(), nll_per_note=nats / data.meta["val_notes"],
            nll_per_frame=nats / data.meta["val_frames"], nats_per_token=nats / tokens,
            generated=music_stats(generated), real=music_stats(real),
            pitch_class_distance=pitch_class_distance(generated, real),
            settings={"num_samples": num_samples, "temperature": temperature, "seed": seed,
                      "voice_leading": voice_leading})
        if harmonise and self.encoding == "grid" and self.voices > 1:
            sopranos = real[:harmonise]
            harmonised = [compose(self.model, self.encoding, self.voices, seed=seed + i, temperature=temperature,
                                  melody=p, voice_leading=voice_leading)
                          for i, p in enumerate(tqdm(sopranos, desc="harmonising", disable=not progress, leave=False))]
            lower = range(1, self.voices)
            result.harmonised_in_key = in_key_share(harmonised, lower)
            result.real_lower_in_key = in_key_share(sopranos, lower)
        if not math.isfinite(result.nll_per_note):
            raise GenloomError("the held-out score is not finite")
        return result

    def key_consistency(self, *, num_samples: int = 20, bars: int = 32, window_bars: int = 2, seed: int = 0,
                        temperature: float = 1.0, progress: bool = True) -> KeyConsistencyResult:
        """Krumhansl-Schmuckler keys of `num_samples` composed pieces of `bars` bars (each in the key and metre of
        a training piece) over the whole piece and `window_bars`-bar windows, beside the training pieces: the
        share of windows in the piece's key, early and late, and modulations (`--task consistency`)."""
        def generate(like: Piece, length: int, sample_seed: int) -> Piece:
            piece = compose(self.model, self.encoding, self.voices, length, sample_seed, temperature,
                            (like.tonic, like.mode), like.bar)
            piece.name = f"composed-{sample_seed}"
            return piece

        return evaluate_key_consistency(generate, self.data.pieces["train"], num_samples=num_samples, bars=bars,
                                        window_bars=window_bars, seed=seed, progress=progress,
                                        reference_name=f"training pieces of {self.data.describe()}")


def open_checkpoint(checkpoint) -> MusicModel:
    return MusicModel(checkpoint.path, checkpoint.config, checkpoint.model)


def score(handle: MusicModel, request: EvalRequest) -> MusicEvalResult:
    """`genloom eval` of a music model: held-out NLL and statistics of composed pieces beside the held-out ones;
    `--task consistency`: the key held over long composed pieces beside the training pieces (`keys.py`)."""
    if request.task == "consistency":
        request.check({"task", "num_samples", "seed"}, "--task consistency")
        return handle.key_consistency(num_samples=request.get("num_samples", 20), seed=request.get("seed", 0),
                                      progress=request.progress)
    if request.task is not None:
        raise GenloomError(f"--task {request.task!r}: music models have the task 'consistency' (the key held over "
                           "long composed pieces)")
    return score_with(handle, request, "a music model", {"num_samples": 20, "seed": 0})
