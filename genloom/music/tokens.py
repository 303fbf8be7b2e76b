"""Music as tokens: notes and pieces, the two encodings (a four-voice sixteenth-note grid, REMI-style events)
and the tokenizer a music model reads and writes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..core.errors import DataError

__all__ = ["Note", "Piece", "encode", "decode", "grid_tokens", "MusicTokenizer", "VOCAB", "TOKEN_ID", "PITCH_CLASSES", "MAX_DURATION", "MAX_BAR"]

PITCH_CLASSES = ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]


MAX_DURATION = 64           # sixteenths (four bars of 4/4); longer notes are shortened to it


MAX_BAR = 32                # sixteenths per bar


VOCAB: list[str] = (["<piece>", "<end>", "BAR", "HOLD", "REST"]
                    + [f"KEY_{t}_{m}" for m in ("major", "minor") for t in range(12)]
                    + [f"TS_{n}" for n in range(1, MAX_BAR + 1)]
                    + [f"POS_{n}" for n in range(MAX_BAR)]
                    + [f"V_{v}" for v in range(4)]
                    + [f"P_{p}" for p in range(128)]
                    + [f"D_{d}" for d in range(1, MAX_DURATION + 1)])


TOKEN_ID = {token: i for i, token in enumerate(VOCAB)}


@dataclass(frozen=True, order=True)
class Note:
    start: int          # sixteenth notes from the piece's first bar line
    voice: int          # 0 = the highest part (soprano)
    pitch: int          # MIDI number
    duration: int       # sixteenth notes

    @property
    def end(self) -> int:
        return self.start + self.duration


@dataclass
class Piece:
    name: str
    notes: list[Note]
    voices: int = 4
    bar: int = 16                 # sixteenths per bar
    tonic: int = 0                # pitch class of the key's tonic
    mode: str = "major"           # major | minor
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.notes = sorted(self.notes)

    @property
    def length(self) -> int:
        return max((n.end for n in self.notes), default=0)

    @property
    def key_name(self) -> str:
        return f"{PITCH_CLASSES[self.tonic]} {self.mode}"

    def transpose(self, shift: int) -> "Piece":
        return Piece(self.name, [Note(n.start, n.voice, n.pitch + shift, n.duration) for n in self.notes], self.voices,
                     self.bar, (self.tonic + shift) % 12, self.mode, dict(self.meta))

    def voice(self, v: int) -> list[Note]:
        return [n for n in self.notes if n.voice == v]

    def to_json(self) -> dict:
        return {"name": self.name, "voices": self.voices, "bar": self.bar, "tonic": self.tonic, "mode": self.mode,
                "notes": [[n.start, n.voice, n.pitch, n.duration] for n in self.notes], "meta": self.meta}

    @classmethod
    def from_json(cls, record: dict) -> "Piece":
        return cls(record["name"], [Note(*n) for n in record["notes"]], record["voices"], record["bar"],
                   record["tonic"], record["mode"], record.get("meta", {}))


# -- encodings ------------------------------------------------------------------------------------------
def _header(piece: Piece) -> list[str]:
    return ["<piece>", f"KEY_{piece.tonic}_{piece.mode}", f"TS_{piece.bar}"]


def encode(piece: Piece, encoding: str) -> list[int]:
    """The token ids of a piece, from `<piece>` to `<end>`."""
    if not 1 <= piece.bar <= MAX_BAR:
        raise DataError(f"{piece.name}: a bar of {piece.bar} sixteenths (at most {MAX_BAR} can be encoded)")
    if any(not 0 <= n.pitch < 128 for n in piece.notes):
        raise DataError(f"{piece.name}: pitches outside MIDI's 0-127")
    tokens = _header(piece)
    if encoding == "grid":
        tokens += grid_tokens(piece)
    elif encoding == "remi":
        tokens += _remi_tokens(piece)
    else:
        raise DataError(f"data.encoding: {encoding!r}; expected 'grid' or 'remi'")
    return [TOKEN_ID[t] for t in tokens + ["<end>"]]


def grid_tokens(piece: Piece) -> list[str]:
    steps = -(-piece.length // piece.bar) * piece.bar              # whole bars
    grid = [["REST"] * piece.voices for _ in range(steps)]
    for n in piece.notes:
        grid[n.start][n.voice] = f"P_{n.pitch}"
        for t in range(n.start + 1, n.end):
            grid[t][n.voice] = "HOLD"
    tokens = []
    for t, row in enumerate(grid):
        if t % piece.bar == 0:
            tokens.append("BAR")
        tokens += row
    return tokens


def _remi_tokens(piece: Piece) -> list[str]:
    tokens: list[str] = []
    bars = -(-piece.length // piece.bar)
    by_bar: dict[int, list[Note]] = {}
    for n in piece.notes:
        by_bar.setdefault(n.start // piece.bar, []).append(n)
    for b in range(bars):
        tokens.append("BAR")
        position = None
        for n in sorted(by_bar.get(b, []), key=lambda n: (n.start, n.voice)):
            if n.start % piece.bar != position:
                position = n.start % piece.bar
                tokens.append(f"POS_{position}")
            tokens += [f"V_{n.voice}", f"P_{n.pitch}", f"D_{min(n.duration, MAX_DURATION)}"]
    return tokens


def decode(ids: Iterable[int], encoding: str, voices: int = 4, name: str = "generated") -> Piece:
    """The piece a token sequence describes. Generated sequences may be malformed: what cannot be read is
    skipped (a HOLD with nothing to hold is a rest, an incomplete note event is dropped)."""
    tokens = [VOCAB[i] for i in ids if 0 <= i < len(VOCAB)]
    tonic, mode, bar = 0, "major", 16
    for t in tokens[:4]:
        if t.startswith("KEY_"):
            _, tonic_text, mode = t.split("_")
            tonic = int(tonic_text)
        elif t.startswith("TS_"):
            bar = int(t[3:])
    if "<end>" in tokens:
        tokens = tokens[:tokens.index("<end>")]
    notes = _decode_grid(tokens, voices, bar) if encoding == "grid" else _decode_remi(tokens, bar)
    return Piece(name, notes, voices, bar, tonic, mode)


def _decode_grid(tokens: list[str], voices: int, bar: int) -> list[Note]:
    notes: list[Note] = []
    sounding: list[list | None] = [None] * voices            # [start, pitch, duration] per voice
    step, voice = 0, 0
    for t in tokens:
        if not (t.startswith("P_") or t in ("HOLD", "REST")):
            continue
        current = sounding[voice]
        if t == "HOLD" and current is not None:
            current[2] += 1
        else:
            if current is not None:
                notes.append(Note(current[0], voice, current[1], current[2]))
            sounding[voice] = [step, int(t[2:]), 1] if t.startswith("P_") else None
        voice += 1
        if voice == voices:
            voice, step = 0, step + 1
    for v, current in enumerate(sounding):
        if current is not None:
            notes.append(Note(current[0], v, current[1], current[2]))
    return notes


def _decode_remi(tokens: list[str], bar: int) -> list[Note]:
    notes = []
    bar_index, position, pending = -1, 0, []
    for t in tokens:
        if t == "BAR":
            bar_index += 1
            position = 0
        elif t.startswith("POS_"):
            position = int(t[4:])
        elif t.startswith(("V_", "P_", "D_")):
            pending.append(t)
            if len(pending) == 3:
                kinds = [p.split("_")[0] for p in pending]
                if kinds == ["V", "P", "D"]:
                    notes.append(Note(max(bar_index, 0) * bar + position, int(pending[0][2:]), int(pending[1][2:]),
                                      int(pending[2][2:])))
                    pending = []
                else:
                    pending = pending[1:]
            elif [p.split("_")[0] for p in pending] not in (["V"], ["V", "P"]):
                pending = [p for p in pending[-1:] if p.startswith("V_")]
    return notes


class MusicTokenizer:
    """The fixed event vocabulary, saved as a Hugging Face `tokenizer.json` (WordLevel over events split by
    spaces), so the checkpoint has the same files as every text model."""

    def __init__(self) -> None:
        self.vocab_size = len(VOCAB)

    def save(self, path: Path) -> None:
        from tokenizers import Tokenizer, models, pre_tokenizers

        tok = Tokenizer(models.WordLevel(dict(TOKEN_ID), unk_token="<end>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.save(str(path))

    @staticmethod
    def check(path: Path) -> None:
        vocab = json.loads(Path(path).read_text())["model"]["vocab"]
        if vocab != TOKEN_ID:
            raise DataError(f"{path}: this music vocabulary differs from genloom's ({len(vocab)} events)")

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(VOCAB[i] for i in ids if 0 <= i < len(VOCAB))

    def encode(self, text: str) -> list[int]:
        return [TOKEN_ID[t] for t in text.split() if t in TOKEN_ID]

    def token_id(self, piece: str) -> int | None:
        return TOKEN_ID.get(piece)
