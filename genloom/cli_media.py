"""`genloom generate code | music | video | audio`: the generation commands of the code, music, video and audio
families.

They register on the `generate` sub-command of `genloom.cli` when that module is imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .cli import _friendly, generate_app
from .core.errors import GenloomError


@generate_app.command("code")
@_friendly
def generate_code(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="A run folder of a code model (e.g. trained with "
                                             "the python-code recipe).")],
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="Code to continue, e.g. \"def mean(xs):\". "
                                                  "The completion ends where the function or block ends.")] = None,
    prefix: Annotated[Optional[str], typer.Option("--prefix", help="Fill in the middle: the code before the gap "
                                                  "(give --suffix too).")] = None,
    suffix: Annotated[Optional[str], typer.Option("--suffix", help="Fill in the middle: the code after the "
                                                  "gap.")] = None,
    stop_at: Annotated[str, typer.Option("--stop-at", help="block: end where the function/block ends; line: end "
                                         "at the end of the line; none: only at the model's end of text.")] = "",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Tokens to generate at most per "
                                                "sample.")] = 256,
    temperature: Annotated[Optional[float], typer.Option("--temperature", min=0.0, help="Sampling temperature; "
                                                         "0 = greedy (default: 0.8 to continue, 0 to fill "
                                                         "in).")] = None,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling: the smallest set of "
                                         "tokens holding this much probability.")] = 0.95,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed; sample i uses seed + i "
                                                "(default: a random seed, printed).")] = None,
    num_samples: Annotated[int, typer.Option("--num-samples", min=1, help="How many samples to write.")] = 1,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Continue Python code (--prompt) or fill in a gap (--prefix and --suffix) with a code model, printing
    the prompt followed by its completion (for a gap: prefix, middle, suffix)."""
    from . import api
    from .code.handle import STOP_RULES, CodeModel

    infilling = prefix is not None or suffix is not None
    if infilling and prompt is not None:
        raise GenloomError("give either --prompt (continue code) or --prefix/--suffix (fill in a gap), not both")
    if stop_at and stop_at not in STOP_RULES:
        raise GenloomError(f"--stop-at {stop_at!r}: expected one of {', '.join(STOP_RULES)}")
    model = api.load(checkpoint, device=device)
    if not isinstance(model, CodeModel):
        raise GenloomError(f"{checkpoint} is not a code model (it was trained on data.kind = "
                           f"{model.config.data.kind!r}); use `genloom generate text`, or train one with the "
                           "python-code recipe")
    if seed is None:
        seed = model._seed(None)
        typer.echo(f"genloom: seed {seed}", err=True)
    if temperature is None:
        temperature = 0.0 if infilling else 0.8
    for i in range(num_samples):
        if num_samples > 1:
            typer.echo(f"--- sample {i + 1} (seed {seed + i}) ---", err=True)
        if infilling:
            typer.echo(prefix or "", nl=False)
            pieces = model.stream_code(prefix or "", max_new_tokens, temperature, top_p, seed + i, stop_at or "none",
                                       suffix=suffix or "")
        else:
            typer.echo(prompt or "", nl=False)
            pieces = model.stream_code(prompt or "", max_new_tokens, temperature, top_p, seed + i, stop_at or "block")
        for piece in pieces:
            typer.echo(piece, nl=False)
        typer.echo(suffix or "" if infilling else "")


@generate_app.command("music")
@_friendly
def generate_music(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="A run folder of a music model (e.g. trained "
                                             "with the bach-chorales recipe).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the pieces: NAME.mid, .musicxml, .wav and a "
                                      "piano-roll .png each.")] = Path("music"),
    num_samples: Annotated[int, typer.Option("--num-samples", min=1, help="How many pieces to write.")] = 1,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed; piece i uses seed + i (default: a "
                                                "random seed, printed).")] = None,
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
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Compose new pieces, continue an opening (--opening) or harmonise a melody (--melody) with a music
    model, writing MIDI, MusicXML, WAV and a piano-roll PNG for each."""
    from . import api
    from .music.handle import MusicModel

    if opening and melody:
        raise GenloomError("give --opening (continue a piece) or --melody (harmonise it), not both")
    model = api.load(checkpoint, device=device)
    if not isinstance(model, MusicModel):
        raise GenloomError(f"{checkpoint} is not a music model; train one with the bach-chorales recipe")
    if synth not in ("genloom", "fluidsynth", "auto"):
        raise GenloomError(f"--synth {synth!r}: expected genloom, fluidsynth or auto")
    if seed is None:
        seed = model._seed(None)
        typer.echo(f"genloom: seed {seed}", err=True)
    if melody:
        pieces = model.harmonize(melody, num_samples, seed, temperature, voice_leading)
    elif opening:
        pieces = model.continue_piece(opening, bars, opening_bars, num_samples, seed, temperature, voice_leading)
    else:
        pieces = model.compose(num_samples, bars, key, seed, temperature, voice_leading)
    for piece in pieces:
        paths = model.write(piece, out / piece.name.replace("/", "-"), synth=synth, tempo=tempo)
        typer.echo(f"{paths[0].with_suffix('')}.{{mid,musicxml,wav,png}}: {len(piece.notes)} notes, "
                   f"{-(-piece.length // piece.bar)} bars, {piece.key_name}")


@generate_app.command("video")
@_friendly
def generate_video(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="A run folder of a video model (e.g. trained "
                                             "with the moving-digits recipe).")],
    prompt: Annotated[list[str], typer.Option("--prompt", help="What to show, e.g. \"the digit 3 moving right\" "
                                              "(repeatable).")] = [],
    num_samples: Annotated[int, typer.Option("--num-samples", min=1, help="Clips per prompt.")] = 1,
    frames: Annotated[Optional[int], typer.Option("--frames", min=1, help="Frames per clip (default: the model's; "
                                                  "more are made in overlapping windows).")] = None,
    init_video: Annotated[Optional[Path], typer.Option("--init-video", help="Extend this footage: a GIF or a "
                                                       "folder of frames.")] = None,
    context_frames: Annotated[int, typer.Option("--context-frames", min=0, help="With --init-video: how many of "
                                                "its first frames to keep; the rest is generated.")] = 0,
    end_video: Annotated[Optional[Path], typer.Option("--end-video", help="Make the frames between: a picture, GIF "
                                                      "or frame folder whose last --end-frames frames end the "
                                                      "clip (with --init-video for the start, or alone).")] = None,
    end_frames: Annotated[int, typer.Option("--end-frames", min=1, help="With --end-video: how many of its last "
                                            "frames end the clip.")] = 1,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Sampler steps (default: the "
                                                 "recipe's).")] = None,
    sampler: Annotated[Optional[str], typer.Option("--sampler", help="ddpm, ddim, dpmpp_2m, euler or heun "
                                                   "(default: the recipe's).")] = None,
    guidance: Annotated[Optional[float], typer.Option("--guidance", min=0.0, help="Classifier-free guidance scale "
                                                      "(default: the recipe's).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed; clip j of a prompt uses seed + j "
                                                "(default: a random seed, printed).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for the clips: an animated GIF and a frame strip PNG "
                                      "each (and an MP4 when imageio with ffmpeg is installed).")] = Path("videos"),
    scale: Annotated[int, typer.Option("--scale", min=1, help="Enlarge the frames this many times.")] = 4,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Generate short clips from a prompt, extend footage (--init-video with --context-frames), or make the frames
    between two given ones (--init-video and --end-video)."""
    from . import api
    from .media.video import save_clip
    from .video.handle import VideoModel

    model = api.load(checkpoint, device=device)
    if not isinstance(model, VideoModel):
        raise GenloomError(f"{checkpoint} is not a video model; train one with the moving-digits recipe")
    if not prompt:
        raise GenloomError("give --prompt, e.g. --prompt \"the digit 3 moving right\"")
    if seed is None:
        seed = model._seed(None)
        typer.echo(f"genloom: seed {seed}", err=True)
    clips = model.generate(prompt, num_samples, seed, steps, sampler, guidance, frames, init_video, context_frames,
                           end_video, end_frames)
    for i, clip in enumerate(clips):
        name = "-".join(prompt[i // num_samples].lower().split())[:60]
        paths = save_clip(clip, out / f"{name}-{seed + i % num_samples}", scale)
        typer.echo(" ".join(str(p) for p in paths))


@generate_app.command("audio")
@_friendly
def generate_audio(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="A run folder of an audio model (trained with "
                                             "the spoken-digits or sound-effects recipe).")],
    prompt: Annotated[list[str], typer.Option("--prompt", help="What to say or sound: a word (\"seven\") or a "
                                              "sound (\"a plucked string, high pitch\"); repeatable.")] = [],
    voice: Annotated[Optional[Path], typer.Option("--voice", help="Speak in this voice: a WAV/FLAC/OGG clip of "
                                                  "1-3 s of speech (any sample rate; it is resampled).")] = None,
    num_samples: Annotated[int, typer.Option("--num-samples", min=1, help="Clips per prompt.")] = 1,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Sampler steps (default: the "
                                                 "recipe's).")] = None,
    sampler: Annotated[Optional[str], typer.Option("--sampler", help="ddpm, ddim, dpmpp_2m, euler or heun "
                                                   "(default: the recipe's).")] = None,
    guidance: Annotated[Optional[float], typer.Option("--guidance", min=0.0, help="Classifier-free guidance scale "
                                                      "on the word or sound (default: the recipe's).")] = None,
    voice_guidance: Annotated[Optional[float], typer.Option("--voice-guidance", min=0.0, help="Guidance towards "
                                                            "the --voice: 1 = none; higher sounds more like the "
                                                            "reference, at some cost in clarity of the word "
                                                            "(default: the recipe's).")] = None,
    vocoder: Annotated[str, typer.Option("--vocoder", help="From spectrogram to sound: auto (the run's neural "
                                         "vocoder where it has one, else Griffin-Lim), neural or "
                                         "griffin-lim.")] = "auto",
    vocoder_iterations: Annotated[Optional[int], typer.Option("--vocoder-iterations", min=1, help="Griffin-Lim "
                                                              "iterations from spectrogram to sound (default: the "
                                                              "recipe's, 64).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed; clip j of a prompt uses seed + j "
                                                "(default: a random seed, printed).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for the clips: a WAV file and a spectrogram PNG "
                                      "each.")] = Path("sounds"),
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Generate spoken words or sound effects from a prompt, optionally in the voice of a reference clip."""
    from . import api
    from .audio.handle import AudioModel, save_sound

    model = api.load(checkpoint, device=device)
    if not isinstance(model, AudioModel):
        raise GenloomError(f"{checkpoint} is not an audio model; train one with the spoken-digits or sound-effects "
                           "recipe")
    if not prompt:
        raise GenloomError("give --prompt, e.g. --prompt \"seven\"")
    if seed is None:
        seed = model._seed(None)
        typer.echo(f"genloom: seed {seed}", err=True)
    waves, pictures = model.generate(prompt, num_samples, seed, steps, sampler, guidance, voice, vocoder_iterations,
                                     voice_guidance, vocoder)
    for i, (wave, picture) in enumerate(zip(waves, pictures)):
        name = "-".join(prompt[i // num_samples].lower().replace(",", "").split())[:60]
        paths = save_sound(wave, picture, out / f"{name}-{seed + i % num_samples}", model.sample_rate)
        typer.echo(" ".join(str(p) for p in paths))
