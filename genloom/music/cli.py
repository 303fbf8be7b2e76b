"""`genloom generate music`: compose, continue an opening or harmonise a melody with a music model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..cli.options import (
    Device,
    NoVerify,
    Seed,
    announce_seed,
    checkpoint_option,
    friendly,
    group,
    load_handle,
)
from ..core.errors import GenloomError
from .handle import MusicModel

__all__ = ["register"]


def generate_music(
    checkpoint: checkpoint_option("A run folder of a music model (e.g. trained "
                                  "with the bach-chorales recipe)."),
    out: Annotated[Path, typer.Option("--out", help="Folder for the pieces: NAME.mid, .musicxml, .wav and a "
                                      "piano-roll .png each.")] = Path("music"),
    num_samples: Annotated[int, typer.Option("--num-samples", min=1, help="How many pieces to write.")] = 1,
    seed: Seed = None,
    bars: Annotated[int, typer.Option("--bars", min=1, help="Bars to compose (after the opening, when "
                                      "continuing).")] = 8,
    key: Annotated[Optional[str], typer.Option("--key", help="Key of a new piece, e.g. 'G major' or 'e minor' "
                                               "(default: drawn by the seed).")] = None,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="Sampling temperature; lower is "
                                               "safer, higher more adventurous; 0 = greedy.")] = 1.0,
    opening: Annotated[Optional[str], typer.Option("--opening", help="Continue this opening: a MIDI or MusicXML "
                                                   "file, or heldout:N (held-out piece N of the training "
                                                   "source).")] = None,
    opening_bars: Annotated[int, typer.Option("--opening-bars", min=1, help="How many bars of the opening to "
                                              "keep.")] = 2,
    melody: Annotated[Optional[str], typer.Option("--melody", help="Harmonise this soprano melody (the top part "
                                                  "of a MIDI/MusicXML file, or heldout:N): the model writes "
                                                  "alto, tenor and bass.")] = None,
    voice_leading: Annotated[bool, typer.Option("--voice-leading", help="Grid models: the decoder also forbids "
                                                "parallel fifths and octaves between voices (a rule on top of "
                                                "the model).")] = False,
    synth: Annotated[str, typer.Option("--synth", help="WAV renderer: genloom (built-in numpy synthesizer), "
                                       "fluidsynth (needs FluidSynth and a General MIDI soundfont), or auto.")] = "genloom",
    tempo: Annotated[float, typer.Option("--tempo", min=10.0, help="Quarter notes per minute in the MIDI and "
                                         "WAV files.")] = 80.0,
    no_verify: NoVerify = False,
    device: Device = "auto",
) -> None:
    """Compose new pieces, continue an opening (--opening) or harmonise a melody (--melody) with a music
    model, writing MIDI, MusicXML, WAV and a piano-roll PNG for each."""

    if opening and melody:
        raise GenloomError("give --opening (continue a piece) or --melody (harmonise it), not both")
    model = load_handle(checkpoint, device, MusicModel, "a music model; train one with the bach-chorales recipe", verify=not no_verify)
    if synth not in ("genloom", "fluidsynth", "auto"):
        raise GenloomError(f"--synth {synth!r}: expected genloom, fluidsynth or auto")
    seed = announce_seed(model, seed)
    options = dict(num_samples=num_samples, seed=seed, temperature=temperature, voice_leading=voice_leading)
    if melody:
        pieces = model.harmonize(melody, **options)
    elif opening:
        pieces = model.continue_piece(opening, bars=bars, opening_bars=opening_bars, **options)
    else:
        pieces = model.compose(bars=bars, key=key, **options)
    for piece in pieces:
        paths = model.write(piece, out / piece.name.replace("/", "-"), synth=synth, tempo=tempo)
        typer.echo(f"{paths[0].with_suffix('')}.{{mid,musicxml,wav,png}}: {len(piece.notes)} notes, "
                   f"{-(-piece.length // piece.bar)} bars, {piece.key_name}")


def register(app: typer.Typer) -> None:
    group(app, "generate").command("music")(friendly(generate_music))
