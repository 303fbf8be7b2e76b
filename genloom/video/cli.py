"""`genloom generate video`: clips from a prompt, footage extended, frames between two given ones."""

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
from ..core.errors import GenloomError
from ..media.video import save_clip
from .handle import VideoModel

__all__ = ["register"]


def generate_video(
    checkpoint: checkpoint_option("A run folder of a video model (e.g. trained "
                                  "with the moving-digits recipe)."),
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
    steps: Steps = None,
    sampler: Sampler = None,
    guidance: Annotated[Optional[float], typer.Option("--guidance", min=0.0, help="Classifier-free guidance scale "
                                                      "(default: the recipe's).")] = None,
    seed: Seed = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for the clips: an animated GIF and a frame strip PNG "
                                      "each (and an MP4 when imageio with ffmpeg is installed).")] = Path("videos"),
    scale: Annotated[int, typer.Option("--scale", min=1, help="Enlarge the frames this many times.")] = 4,
    no_verify: NoVerify = False,
    device: Device = "auto",
) -> None:
    """Generate short clips from a prompt, extend footage (--init-video with --context-frames), or make the frames
    between two given ones (--init-video and --end-video)."""
    model = load_handle(checkpoint, device, VideoModel, "a video model; train one with the moving-digits recipe", verify=not no_verify)
    if not prompt:
        raise GenloomError("give --prompt, e.g. --prompt \"the digit 3 moving right\"")
    seed = announce_seed(model, seed)
    clips = model.generate(prompt, num_samples=num_samples, seed=seed, steps=steps, sampler=sampler, guidance=guidance,
                           frames=frames, init_video=init_video, context_frames=context_frames, end_video=end_video,
                           end_frames=end_frames)
    for clip, stem in zip(clips, sample_files(prompt, num_samples, seed, out)):
        typer.echo(" ".join(str(p) for p in save_clip(clip, stem, scale)))


def register(app: typer.Typer) -> None:
    group(app, "generate").command("video")(friendly(generate_video))
