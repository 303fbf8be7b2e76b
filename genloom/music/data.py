"""Symbolic music for the text transformer: pieces of notes, two token encodings, and training windows.

A piece is a list of notes (voice, MIDI pitch, start and duration in sixteenth notes) with its key and bar
length; sources are the Bach chorales of the music21 corpus (`builtin:chorales`: the 371 four-part
chorales in Riemenschneider numbering), its Essen folk songs (`builtin:essen`, melodies), or a folder of
MIDI / MusicXML files. Parsing is slow, so the parsed pieces are cached as JSON.

Two encodings share one vocabulary (`VOCAB`); a recipe picks one with `data.encoding`:
- "grid": a time grid at sixteenth notes; every step has one token per voice, soprano first: `P_<pitch>`
  (a note starts), `HOLD` (the note goes on) or `REST`; `BAR` opens every bar. Hold and a repeated note
  stay apart, so the grid decodes to exactly the notes it came from. Harmonising a melody is filling
  the alto, tenor and bass tokens of each step with the soprano's given.
- "remi" (Huang & Yang 2020, "Pop Music Transformer"): events — `BAR`, `POS_<sixteenth in bar>`,
  then for each note starting there `V_<voice> P_<pitch> D_<sixteenths>`. Shorter for sparse music.
Both start with `<piece> KEY_<tonic>_<mode> TS_<sixteenths per bar>` and end with `<end>`.

The split is fixed: a hash of each piece's name puts about `val_fraction` of them in validation.
Training pieces are transposed by every shift in `transpose` that keeps them inside MIDI range.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

import numpy as np

from ..core.cache import default_cache_dir
from ..core.config import require, validate
from ..core.errors import DataError
from ..core.registry import register
from ..lm.windows import TokenWindows
from .tokens import MAX_BAR, MAX_DURATION, MusicTokenizer, Note, Piece, encode

__all__ = ["Note", "Piece", "MusicDataConfig", "MusicData", "encode", "load_pieces", "parse_music_file", "MusicTokenizer"]

log = logging.getLogger(__name__)

CACHE_FORMAT = 1























# -- reading scores --------------------------------------------------------------------------------------
SUFFIXES = (".mid", ".midi", ".xml", ".musicxml", ".mxl", ".krn", ".abc")


def _music21():
    try:
        import music21
    except ImportError:
        raise DataError("music data needs the music21 package: pip install music21") from None
    return music21


def _parse_source(path: str | Path):
    """A music file parsed from the file itself. music21's own `converter.parse` and `corpus.parse` look in
    its scratch folder (`<tmp>/music21/m21-<version>-<python>-<md5 of the path>.p.gz`, a name anyone can
    work out) for a pickle newer than the file and unpickle it, and write one after parsing: a pickle
    planted there would run code. `forceSource=True` skips the lookup and, with `storePickle=False`,
    nothing is written; `parseFile` (not `parse`) takes the path as a path, never as data or a URL. The
    parsed pieces are kept as JSON in genloom's own cache (`load_pieces`)."""
    return _music21().converter.parseFile(str(path), forceSource=True, storePickle=False)


def score_to_piece(score, name: str, max_voices: int = 4) -> Piece:
    """A music21 score as a Piece: its top `max_voices` parts, quantised to sixteenth notes, chords reduced to
    their highest note, a pickup bar aligned to the bar lines, overlaps within a part cut."""
    m21 = _music21()
    parts = list(score.parts) if hasattr(score, "parts") and len(score.parts) else [score]
    parts = parts[:max_voices]
    signatures = list(score.recurse().getElementsByClass(m21.meter.TimeSignature))
    bar = int(round(signatures[0].barDuration.quarterLength * 4)) if signatures else 16
    measures = list(parts[0].getElementsByClass(m21.stream.Measure))
    pickup = 0
    if measures and measures[0].paddingLeft:
        pickup = int(round(float(measures[0].paddingLeft) * 4))
    notes = []
    for v, part in enumerate(parts):
        events = []
        for n in part.flatten().stripTies().notes:
            pitch = max(p.midi for p in n.pitches) if n.isChord else n.pitch.midi
            start = int(round(float(n.getOffsetInHierarchy(part)) * 4)) + pickup
            duration = max(1, int(round(float(n.quarterLength) * 4)))
            if n.quarterLength == 0:
                continue                      # grace notes
            events.append([start, pitch, duration])
        events.sort()
        for i, (start, pitch, duration) in enumerate(events):
            if i + 1 < len(events) and events[i + 1][0] == start:
                continue                      # two notes at once in one part: keep the later-listed one
            if i + 1 < len(events):
                duration = min(duration, events[i + 1][0] - start)
            notes.append(Note(start, v, pitch, min(duration, MAX_DURATION)))
    if not notes:
        raise DataError(f"{name}: no notes")
    key = score.analyze("key")
    tonic, mode = key.tonic.pitchClass, "minor" if key.mode == "minor" else "major"
    return Piece(name, notes, len(parts), bar if 1 <= bar <= MAX_BAR else 16, tonic, mode)


def parse_music_file(path: str | Path, max_voices: int = 4) -> Piece:
    """A MIDI or MusicXML (or kern/ABC) file as a Piece; a clear error for an empty or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty (expected MIDI or MusicXML)")
    if path.suffix.lower() not in SUFFIXES:
        raise DataError(f"{path}: not a music file (expected one of {', '.join(SUFFIXES)})")
    _music21()                                # a missing package is its own error, not an unreadable file
    try:
        score = _parse_source(path)
    except Exception as e:                    # music21 raises many kinds for a corrupt file
        raise DataError(f"{path}: cannot be read as {path.suffix.lstrip('.').upper()} ({type(e).__name__}: "
                        f"{str(e)[:120]})") from None
    return score_to_piece(score, path.stem, max_voices)


def _chorales() -> Iterable[tuple[str, object]]:
    m21 = _music21()
    for name in m21.corpus.chorales.Iterator(numberingSystem="riemenschneider", returnType="filename"):
        found = m21.corpus.getWork(name)         # the file's path (corpus.parse would go through the pickle cache)
        score = _parse_source(found[0] if isinstance(found, list) else found)
        if len(score.parts) == 4:             # the four sung parts (a few chorales add instruments)
            yield name, score


def _essen() -> Iterable[tuple[str, object]]:
    m21 = _music21()
    for path in m21.corpus.getComposer("essenFolksong"):
        opus = _parse_source(path)
        for i, score in enumerate(getattr(opus, "scores", [opus])):
            yield f"{Path(path).stem}/{i}", score


def _source_fingerprint(path: str) -> tuple[str, list[Path]]:
    if path in ("builtin:chorales", "builtin:essen"):
        return f"{path}|music21 {_music21().__version__}", []
    if path.startswith("builtin:"):
        raise DataError(f"data.path: unknown built-in music {path!r}; available: builtin:chorales, builtin:essen")
    root = Path(path).expanduser()
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(f for f in root.rglob("*") if f.suffix.lower() in SUFFIXES and f.is_file())
    else:
        raise DataError(f"data.path: {path} does not exist (expected builtin:chorales, builtin:essen, or a folder of "
                        "MIDI/MusicXML files)")
    if not files:
        raise DataError(f"data.path: no MIDI or MusicXML files under {root}")
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f}|{f.stat().st_size}|{f.stat().st_mtime_ns}".encode())
    return h.hexdigest(), files


def load_pieces(path: str, voices: int = 4, cache_dir: str = "", progress: bool = True) -> list[Piece]:
    """Every piece of a source, parsed once and cached as JSON."""
    fingerprint, files = _source_fingerprint(path)
    key = hashlib.sha256(f"{CACHE_FORMAT}|{fingerprint}|{voices}".encode()).hexdigest()[:20]
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    cached = root / "music" / f"{key}.json"
    if cached.is_file():
        return [Piece.from_json(r) for r in json.loads(cached.read_text())]
    from tqdm.auto import tqdm

    pieces = []
    if path == "builtin:chorales":
        for name, score in tqdm(_chorales(), desc="parsing the Bach chorales (once)", total=371, disable=not progress):
            pieces.append(score_to_piece(score, name, voices))
    elif path == "builtin:essen":
        skipped = 0
        for name, score in tqdm(_essen(), desc="parsing the Essen folk songs (once, ~10 minutes)",
                                disable=not progress):
            try:
                pieces.append(score_to_piece(score, name, 1))
            except Exception:                 # a song music21 reads without notes, or oddly: leave it out
                skipped += 1
        log.info("Essen folk songs: %d melodies, %d left out", len(pieces), skipped)
    else:
        for f in tqdm(files, desc="parsing music files (once)", disable=not progress):
            pieces.append(parse_music_file(f, voices))
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps([p.to_json() for p in pieces]))
    tmp.replace(cached)
    return pieces


def is_held_out(name: str, fraction: float) -> bool:
    return zlib.crc32(name.encode()) % 1000 < fraction * 1000


# -- the data component ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MusicDataConfig:
    kind: Literal["music"] = "music"
    path: str = "builtin:chorales"         # builtin:chorales, builtin:essen (melodies), or a folder of MIDI/MusicXML
    encoding: Literal["grid", "remi"] = "grid"
    voices: int = 4                        # parts kept per piece (the top ones); builtin:essen has 1
    transpose: tuple[int, int] = (-5, 6)   # training pieces are also transposed by every shift in this range
    val_fraction: float = 0.1              # share of pieces held out (by a hash of the name)
    cache_dir: str = ""

    def __post_init__(self) -> None:
        validate(self, "data")
        require(0 < self.val_fraction < 1, "data.val_fraction", "must be between 0 and 1 (e.g. 0.1)")
        require(1 <= self.voices <= 4, "data.voices", "must be 1 to 4")
        require(len(self.transpose) == 2 and self.transpose[0] <= 0 <= self.transpose[1], "data.transpose",
                f"expected [lowest, highest] shifts around 0, e.g. [-5, 6]; got {list(self.transpose)}")


class MusicData(TokenWindows):
    """Token arrays of the (transposed) training pieces and the held-out pieces, with the pieces themselves."""

    def __init__(self, config: MusicDataConfig, block_size: int, tokenizer: MusicTokenizer | None = None):
        self.config, self.block_size = config, block_size
        self.tokenizer = tokenizer or MusicTokenizer()
        self._arrays: dict[str, np.ndarray] = {}
        self.pieces: dict[str, list[Piece]] = {}
        self.meta: dict = {}

    def describe(self) -> str:
        return {"builtin:chorales": "the Bach chorales (music21)", "builtin:essen": "the Essen folk songs (music21)"
                }.get(self.config.path, self.config.path)

    def prepare(self) -> None:
        if self._arrays:
            return
        cfg = self.config
        voices = 1 if cfg.path == "builtin:essen" else cfg.voices
        pieces = load_pieces(cfg.path, voices, cfg.cache_dir)
        self.pieces = {"train": [p for p in pieces if not is_held_out(p.name, cfg.val_fraction)],
                       "val": [p for p in pieces if is_held_out(p.name, cfg.val_fraction)]}
        if not self.pieces["train"] or not self.pieces["val"]:
            raise DataError(f"data.path: {cfg.path} has {len(pieces)} piece(s); the split left "
                            f"{len(self.pieces['train'])} for training and {len(self.pieces['val'])} held out "
                            "(need both; add pieces or change data.val_fraction)")
        ids = {"train": [], "val": []}
        low, high = cfg.transpose
        for piece in self.pieces["train"]:
            pitches = [n.pitch for n in piece.notes]
            for shift in range(low, high + 1):
                if 0 <= min(pitches) + shift and max(pitches) + shift < 128:
                    ids["train"] += encode(piece.transpose(shift), cfg.encoding)
        for piece in self.pieces["val"]:
            ids["val"] += encode(piece, cfg.encoding)
        self._arrays = {split: np.asarray(v, dtype=np.int16) for split, v in ids.items()}
        self.meta = {"train_pieces": len(self.pieces["train"]), "val_pieces": len(self.pieces["val"]),
                     "val_notes": sum(len(p.notes) for p in self.pieces["val"]),
                     "val_frames": sum(-(-p.length // p.bar) * p.bar for p in self.pieces["val"])}
        self._check_length(self.describe())

    def save_assets(self, folder: Path) -> None:
        self.tokenizer.save(Path(folder) / "tokenizer.json")

    def write_sample(self, model, folder: Path, step: int, length: int, temperature: float) -> str:
        """At each evaluation: a short piece composed from nothing, as MIDI and a piano roll."""
        from .generate import compose, write_piece

        piece = compose(model, self.config.encoding, self.pieces["train"][0].voices, bars=4, seed=step,
                        temperature=temperature, key=(0, "major"), bar=16)
        folder.mkdir(parents=True, exist_ok=True)
        write_piece(piece, folder / f"step_{step:07d}", formats=("mid", "png"))
        return f"{len(piece.notes)} notes"


@register("data", "music", MusicDataConfig)
def build_music_data(config: MusicDataConfig, run, tokenizer=None) -> MusicData:
    return MusicData(config, run.model.block_size, None)
