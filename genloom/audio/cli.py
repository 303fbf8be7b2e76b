"""`genloom generate audio`: spoken words or sound effects from a prompt, in the voice of a reference clip."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..cli.options import (
    Device,
    NoVerify,
    Sampler,
    Seed,
    Steps,
    announce_seed,
    checkpoint_option,
    friendly,
    group,
    load_handle,
    sample_files,
)
from ..cli.watermark import Watermark
from ..core.errors import GenloomError
from .handle import AudioModel, save_sound

__all__ = ["register"]


def generate_audio(
    checkpoint: checkpoint_option("A run folder of an audio model (trained with "
                                  "the spoken-digits or sound-effects recipe)."),
    prompt: Annotated[list[str], typer.Option("--prompt", help="What to say or sound: a word (\"seven\") or a "
                                              "sound (\"a plucked string, high pitch\"); repeatable.")] = [],
    voice: Annotated[Optional[Path], typer.Option("--voice", help="Speak in this voice: a WAV/FLAC/OGG clip of "
                                                  "1-3 s of speech (any sample rate; it is resampled).")] = None,
    num_samples: Annotated[int, typer.Option("--num-samples", min=1, help="Clips per prompt.")] = 1,
    steps: Steps = None,
    sampler: Sampler = None,
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
    seed: Seed = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for the clips: a WAV file and a spectrogram PNG "
                                      "each.")] = Path("sounds"),
    watermark: Watermark = None,
    no_verify: NoVerify = False,
    device: Device = "auto",
) -> None:
    """Generate spoken words or sound effects from a prompt, optionally in the voice of a reference clip."""
    model = load_handle(checkpoint, device, AudioModel, "an audio model; train one with the spoken-digits or "
                        "sound-effects recipe", verify=not no_verify)
    if not prompt:
        raise GenloomError("give --prompt, e.g. --prompt \"seven\"")
    mark = None
    if watermark is not None:
        from ..watermark.audio import AudioWatermark
        mark = AudioWatermark(watermark)
    seed = announce_seed(model, seed)
    waves, pictures = model.generate(prompt, num_samples=num_samples, seed=seed, steps=steps, sampler=sampler,
                                     guidance=guidance, voice=voice, vocoder_iterations=vocoder_iterations,
                                     voice_guidance=voice_guidance, vocoder=vocoder)
    for wave, picture, stem in zip(waves, pictures, sample_files(prompt, num_samples, seed, out)):
        if mark is not None:                    # a spread-spectrum mark 32 dB under the clip (docs/watermarks.md)
            wave = mark.mark(wave.detach().cpu().numpy() if hasattr(wave, "detach") else wave, model.sample_rate)
        typer.echo(" ".join(str(p) for p in save_sound(wave, picture, stem, model.sample_rate)))


def register(app: typer.Typer) -> None:
    group(app, "generate").command("audio")(friendly(generate_audio))
