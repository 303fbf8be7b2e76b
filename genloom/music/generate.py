"""Making music with a trained model and writing it out to be heard and seen.

- `compose`: a piece from nothing, or continuing an opening, or harmonising a soprano melody. With the
  grid encoding, decoding follows the grid's grammar (a `SlotGrammar`, a `genloom.lm.constraints.Constraint`
  like the text grammars, masked by the same `mask_logits`): `BAR` is placed at every bar, every step gets one
  token per voice from {a new pitch, HOLD, REST}, the piece ends after the requested bars, and when
  harmonising, the soprano's tokens are the melody's (only alto, tenor and bass are sampled).
- `synthesize`: genloom's own synthesizer in numpy (additive timbres with attack/decay/release envelopes,
  one timbre per voice, mixed and scaled below full scale); `render_wav` uses FluidSynth with a General
  MIDI soundfont instead when asked and installed.
- `write_piece`: .mid and .musicxml (through music21), .wav, and a piano-roll .png.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..core.errors import GenloomError
from ..lm.constraints import mask_logits
from ..media.audio import write_wav
from .tokens import (
    PITCH_CLASSES,
    TOKEN_ID,
    VOCAB,
    Note,
    Piece,
    decode,
    encode,
    grid_tokens,
)

__all__ = ["compose", "SlotGrammar", "synthesize", "render_wav", "piano_roll", "write_piece", "to_music21",
           "TIMBRES", "find_soundfont"]

SAMPLE_RATE = 22050           # genloom's own synthesizer's rate (FluidSynth renders at 44.1 kHz)
PITCHES = torch.tensor([t.startswith("P_") and 21 <= int(t[2:]) <= 108 for t in VOCAB])
GRID_VOICE = PITCHES | torch.tensor([t in ("HOLD", "REST") for t in VOCAB])
REMI_BODY = torch.tensor([t.startswith(("BAR", "POS_", "V_", "P_", "D_")) or t == "<end>" for t in VOCAB])


class SlotGrammar:
    """Music's token grammar as a `genloom.lm.constraints.Constraint`: one slot per token to come, where an int
    slot forces that token, a boolean mask slot allows its True tokens and a callable slot gives that mask from
    the tokens so far (voice leading); `stop(tokens)` may end it early."""

    ended_by = None                       # every token of a piece is part of it

    def __init__(self, prompt: Sequence[int], slots: Sequence, stop=None):
        self.tokens, self.slots, self.stop, self.at = list(prompt), list(slots), stop, 0
        self.done = not self.slots
        self._mask: torch.Tensor | None = None

    def forced(self) -> int | None:
        slot = self.slots[self.at]
        return slot if isinstance(slot, int) else None

    def allowed(self) -> torch.Tensor:
        if self._mask is None:
            slot = self.slots[self.at]
            if isinstance(slot, int):
                slot = torch.arange(len(VOCAB)) == slot
            elif callable(slot):
                slot = slot(self.tokens)                    # a mask that depends on what came before
            self._mask = slot
        return self._mask

    def advance(self, token: int) -> None:
        self.tokens.append(int(token))
        self.at, self._mask = self.at + 1, None
        self.done = self.at == len(self.slots) or (self.stop is not None and self.stop(self.tokens))


@torch.no_grad()
def _sample(model: nn.Module, prompt: list[int], grammar: SlotGrammar, generator: torch.Generator,
            temperature: float) -> list[int]:
    """Extend `prompt` until `grammar` is done: a token it forces is appended without sampling, any other is
    sampled among the tokens it allows (`mask_logits`, as text decoding masks). Forced tokens are fed in one
    pass with the next sampled one (KV cache; past the context the window moves by half a context)."""
    device = next(model.parameters()).device
    block = model.config.block_size
    tokens = list(prompt)
    cache, pending = None, list(prompt)
    while not grammar.done:
        forced = grammar.forced()
        if forced is not None:
            tokens.append(forced)
            pending.append(forced)
            grammar.advance(forced)
            continue
        if cache is None or cache.length + len(pending) > block:
            cache = model.new_cache(1, block)               # (re)fill: the last half context, or all that fits
            pending = tokens[-(block // 2):] if len(tokens) > block else tokens
        logits = model(torch.tensor([pending], device=device), cache)[0, -1].float()
        logits = mask_logits(logits[None], [grammar])[0]
        if temperature == 0:
            choice = int(logits.argmax())
        else:
            choice = int(torch.multinomial((logits / temperature).softmax(-1), 1, generator=generator))
        tokens.append(choice)
        pending = [choice]
        grammar.advance(choice)
    return tokens


def _melody_tokens(melody: Piece, bar: int) -> list[str]:
    """The soprano's grid tokens, one per step (its first voice)."""
    solo = Piece(melody.name, [Note(n.start, 0, n.pitch, n.duration) for n in melody.voice(0)], 1, bar)
    return [t for t in grid_tokens(solo) if t != "BAR"]


class _VoiceLeading:
    """Grid decoding with the rule against parallel fifths and octaves: a voice may not move to a pitch that
    makes a perfect fifth or octave (or unison) with a voice above it, decided at the same step, when the
    two voices made that interval before and both move in the same direction."""

    def __init__(self, voices: int, start: int):
        self.voices, self.seen = voices, start
        self.before: list[int | None] = [None] * voices    # sounding pitch per voice at the previous step
        self.now: list[int | None] = [None] * voices       # at this step (filled voice by voice)
        self.voice = 0

    def _advance(self, tokens: list[int]) -> None:
        for token in tokens[self.seen:]:
            name = VOCAB[token]
            if not (name.startswith("P_") or name in ("HOLD", "REST")):
                continue
            v = self.voice
            self.now[v] = int(name[2:]) if name.startswith("P_") else (self.before[v] if name == "HOLD" else None)
            self.voice += 1
            if self.voice == self.voices:
                self.before, self.now, self.voice = self.now, [None] * self.voices, 0
        self.seen = len(tokens)

    def __call__(self, tokens: list[int]) -> torch.Tensor:
        self._advance(tokens)
        v, mask = self.voice, GRID_VOICE.clone()
        low = self.before[v]
        if low is None:
            return mask
        for u in range(v):
            high, high_now = self.before[u], self.now[u]
            interval = abs(high - low) % 12 if high is not None else None
            if high_now is None or high_now == high or interval not in (0, 7):
                continue
            for x in range(21, 109):
                if x != low and (x > low) == (high_now > high) and abs(high_now - x) % 12 == interval:
                    mask[TOKEN_ID[f"P_{x}"]] = False
        return mask


def compose(model: nn.Module, encoding: str, voices: int = 4, bars: int = 8, seed: int = 0, temperature: float = 1.0,
            key: tuple[int, str] = (0, "major"), bar: int = 16, opening: Piece | None = None,
            opening_bars: int = 2, melody: Piece | None = None, voice_leading: bool = False) -> Piece:
    """A new piece of `bars` bars (after the opening's, if any), or the melody harmonised. `voice_leading`:
    grid decoding also forbids parallel fifths and octaves between the voices (a rule, not the model)."""
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    if melody is not None:
        if encoding != "grid":
            raise GenloomError("harmonising a melody needs a model trained with data.encoding = \"grid\"")
        if voices < 2:
            raise GenloomError("harmonising a melody needs a model of several voices")
        key, bar = (melody.tonic, melody.mode), melody.bar
        opening = None
    if opening is not None:
        key, bar = (opening.tonic, opening.mode), opening.bar
        cut = opening_bars * bar
        kept = [Note(n.start, n.voice, n.pitch, min(n.duration, cut - n.start)) for n in opening.notes
                if n.start < cut and n.voice < voices]
        opening = Piece(opening.name, kept, voices, bar, opening.tonic, opening.mode)
    header = [TOKEN_ID["<piece>"], TOKEN_ID[f"KEY_{key[0]}_{key[1]}"], TOKEN_ID[f"TS_{bar}"]]
    prompt = header
    if opening is not None:
        prompt = encode(opening, encoding)[:-1]                     # without <end> (whole bars)
    if encoding == "grid":
        slots: list = []
        steps = bars * bar if melody is None else -(-melody.length // bar) * bar
        soprano = _melody_tokens(melody, bar) if melody is not None else []
        soprano += ["REST"] * (steps - len(soprano))
        rule = _VoiceLeading(voices, len(prompt)) if voice_leading else None
        if rule is not None and opening is not None:              # the opening's last step is "before"
            rule.seen = len(prompt) - voices * bar                  # (replays its last bar)
        for t in range(steps):
            if t % bar == 0:
                slots.append(TOKEN_ID["BAR"])
            for v in range(voices):
                slots.append(TOKEN_ID[soprano[t]] if melody is not None and v == 0 else rule or GRID_VOICE)
        slots.append(TOKEN_ID["<end>"])
        tokens = _sample(model, prompt, SlotGrammar(prompt, slots), generator, temperature)
    else:
        budget = bars * bar * voices * 4

        def stop(tokens: list[int]) -> bool:
            return tokens[-1] == TOKEN_ID["<end>"] or tokens.count(TOKEN_ID["BAR"]) > bars + (
                opening_bars if opening is not None else 0)

        tokens = _sample(model, prompt, SlotGrammar(prompt, [REMI_BODY] * budget, stop), generator, temperature)
        if tokens[-1] == TOKEN_ID["BAR"]:
            tokens = tokens[:-1]
    return decode(tokens, encoding, voices)


# -- sound ------------------------------------------------------------------------------------------------
TIMBRES = {                     # harmonic amplitudes, attack, decay, sustain level, release (seconds)
    "flute": ([1.0, 0.12, 0.05], 0.04, 0.1, 0.85, 0.08),
    "organ": ([1.0, 0.55, 0.3, 0.18, 0.1, 0.06], 0.01, 0.05, 0.9, 0.05),
    "clarinet": ([1.0, 0.0, 0.45, 0.0, 0.25, 0.0, 0.12], 0.03, 0.1, 0.8, 0.06),
    "strings": ([1.0 / k for k in range(1, 9)], 0.07, 0.1, 0.85, 0.12),
    "piano": ([1.0, 0.5, 0.25, 0.12, 0.06], 0.005, 0.6, 0.25, 0.15),
}
VOICE_TIMBRES = ("flute", "clarinet", "strings", "organ")


def synthesize(piece: Piece, sample_rate: int = SAMPLE_RATE, tempo: float = 80.0,
               timbres: Sequence[str] = VOICE_TIMBRES, peak: float = 0.89) -> np.ndarray:
    """The piece as mono float32 audio in [-peak, peak]: quarter note = 60/tempo seconds, voice v played with
    timbres[v % len(timbres)]."""
    for name in timbres:
        if name not in TIMBRES:
            raise GenloomError(f"unknown timbre {name!r}; available: {', '.join(TIMBRES)}")
    sixteenth = 60.0 / tempo / 4
    longest_release = max(TIMBRES[t][4] for t in timbres)
    total = int((piece.length * sixteenth + longest_release) * sample_rate) + 1
    out = np.zeros(total, dtype=np.float64)
    for n in piece.notes:
        harmonics, attack, decay, sustain, release = TIMBRES[timbres[n.voice % len(timbres)]]
        held = n.duration * sixteenth
        count = int((held + release) * sample_rate)
        t = np.arange(count) / sample_rate
        frequency = 440.0 * 2 ** ((n.pitch - 69) / 12)
        wave_ = np.zeros(count)
        for k, amplitude in enumerate(harmonics, start=1):
            if amplitude and k * frequency < sample_rate / 2:        # nothing above Nyquist
                wave_ += amplitude * np.sin(2 * np.pi * k * frequency * t)
        envelope = np.where(t < attack, t / attack,
                            np.where(t < attack + decay, 1 - (1 - sustain) * (t - attack) / decay, sustain))
        level_at_release = np.interp(held, t, envelope) if count else 0.0
        envelope = np.where(t < held, envelope, level_at_release * np.clip(1 - (t - held) / release, 0, 1))
        start = int(n.start * sixteenth * sample_rate)
        out[start:start + count] += wave_ * envelope / sum(harmonics)
    loudest = np.abs(out).max()
    if loudest > 0:
        out *= peak / loudest
    return out.astype(np.float32)


def find_soundfont() -> Path | None:
    for folder in ("/usr/share/sounds/sf2", "/usr/share/soundfonts", "/usr/share/sounds/sf3"):
        found = sorted(Path(folder).glob("*.sf[23]")) if Path(folder).is_dir() else []
        if found:
            return found[0]
    return None


def render_wav(piece: Piece, path: Path, synth: str = "genloom", tempo: float = 80.0) -> str:
    """Write the piece as a WAV file with `synth` = genloom (numpy), fluidsynth (needs the program and a
    soundfont) or auto (fluidsynth when available). Returns the synthesizer used."""
    soundfont = find_soundfont()
    available = shutil.which("fluidsynth") is not None and soundfont is not None
    if synth == "fluidsynth" and not available:
        raise GenloomError("--synth fluidsynth needs FluidSynth and a General MIDI soundfont: "
                           "apt-get install fluidsynth timgm6mb-soundfont (or use --synth genloom)")
    if synth in ("fluidsynth", "auto") and available:
        midi = Path(path).with_suffix(".fluidsynth.mid")
        to_music21(piece, tempo).write("midi", fp=str(midi))
        subprocess.run(["fluidsynth", "-ni", "-g", "0.6", "-F", str(path), "-r", "44100", str(soundfont), str(midi)],
                       check=True, capture_output=True, timeout=300)
        midi.unlink()
        return "fluidsynth"
    if synth not in ("genloom", "auto"):
        raise GenloomError(f"--synth {synth!r}: expected genloom, fluidsynth or auto")
    write_wav(path, synthesize(piece, tempo=tempo), SAMPLE_RATE)
    return "genloom"


# -- notation and pictures ------------------------------------------------------------------------------
PART_NAMES = ("Soprano", "Alto", "Tenor", "Bass")


def to_music21(piece: Piece, tempo: float = 80.0):
    """The piece as a music21 Score (one part per voice, key and time signature, tempo)."""
    from music21 import key as m21key
    from music21 import meter, note, stream
    from music21 import tempo as m21tempo

    score = stream.Score()
    for v in range(piece.voices):
        part = stream.Part()
        part.partName = PART_NAMES[v] if piece.voices == 4 else f"Voice {v + 1}"
        part.insert(0, meter.TimeSignature(f"{piece.bar}/16" if piece.bar % 4 else f"{piece.bar // 4}/4"))
        tonic = PITCH_CLASSES[piece.tonic].replace("b", "-")
        part.insert(0, m21key.Key(tonic.lower() if piece.mode == "minor" else tonic))
        if v == 0:
            part.insert(0, m21tempo.MetronomeMark(number=tempo))
        for n in piece.voice(v):
            part.insert(n.start / 4, note.Note(n.pitch, quarterLength=n.duration / 4))
        score.insert(0, part)
    return score


VOICE_COLOURS = ((214, 39, 40), (31, 119, 180), (44, 160, 44), (148, 103, 189))


def piano_roll(piece: Piece, path: Path, cell: int = 6, row: int = 4) -> None:
    """A piano-roll PNG: time across (bar lines drawn), pitch up, one colour per voice."""
    from PIL import Image, ImageDraw

    if not piece.notes:
        Image.new("RGB", (200, 60), "white").save(path)
        return
    low = min(n.pitch for n in piece.notes) - 2
    high = max(n.pitch for n in piece.notes) + 2
    steps = -(-piece.length // piece.bar) * piece.bar
    image = Image.new("RGB", (steps * cell + 1, (high - low + 1) * row), "white")
    draw = ImageDraw.Draw(image)
    for p in range(low, high + 1):
        if p % 12 in (1, 3, 6, 8, 10):                       # black keys shaded
            y = (high - p) * row
            draw.rectangle([0, y, image.width, y + row - 1], fill=(244, 244, 244))
    for b in range(0, steps + 1, piece.bar):
        draw.line([b * cell, 0, b * cell, image.height], fill=(170, 170, 170))
    for n in piece.notes:
        y = (high - n.pitch) * row
        colour = VOICE_COLOURS[n.voice % len(VOICE_COLOURS)]
        draw.rectangle([n.start * cell + 1, y, n.end * cell - 1, y + row - 1], fill=colour, outline=(40, 40, 40))
    image.save(path)


def write_piece(piece: Piece, stem: Path, formats: Sequence[str] = ("mid", "musicxml", "wav", "png"),
                synth: str = "genloom", tempo: float = 80.0) -> list[Path]:
    """Write `stem`.mid, .musicxml, .wav and .png (those in `formats`); returns the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    score = to_music21(piece, tempo) if {"mid", "musicxml"} & set(formats) else None
    for fmt in formats:
        path = stem.with_name(stem.name + "." + fmt)
        if fmt == "mid":
            score.write("midi", fp=str(path))
        elif fmt == "musicxml":
            score.write("musicxml", fp=str(path))
        elif fmt == "wav":
            render_wav(piece, path, synth, tempo)
        elif fmt == "png":
            piano_roll(piece, path)
        else:
            raise GenloomError(f"unknown output format {fmt!r}")
        written.append(path)
    return written
