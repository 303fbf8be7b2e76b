"""Video files: a clip read from a GIF, a video file, a folder of frames or one picture; a clip written as a GIF,
a frame strip PNG and (with imageio) an MP4."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageSequence

from ..core.errors import DataError
from .image import PICTURE_FORMATS

__all__ = ["read_clip", "save_clip", "check_container", "FRAME_SUFFIXES"]


def save_clip(clip: torch.Tensor, stem: Path, scale: int = 4, seconds: float = 1.0) -> list[Path]:
    """One clip (C, T, H, W) in [-1, 1] as `stem`.gif (looping), a frame strip `stem`.png, and `stem`.mp4 when
    imageio with ffmpeg is installed."""
    from .image import save_gif, save_image_grid

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    frames = clip.transpose(0, 1)                                             # (T, C, H, W)
    written = [stem.with_suffix(".gif"), stem.with_suffix(".png")]
    save_gif(frames, written[0], scale=scale, seconds=seconds, bounce=False)
    save_image_grid(frames, written[1], nrow=len(frames), scale=scale)
    try:
        import imageio.v3 as iio

        pixels = ((frames.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        pixels = pixels.repeat(scale, 1).repeat(scale, 2)
        if pixels.shape[-1] == 1:
            pixels = pixels.repeat(3, -1)
        iio.imwrite(stem.with_suffix(".mp4"), pixels, fps=max(1, round(len(frames) / seconds)))
        written.append(stem.with_suffix(".mp4"))
    except Exception:                                  # no imageio / ffmpeg: the GIF and PNG are enough
        pass
    return written


FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


# -- clips from files ---------------------------------------------------------------------------------
def check_container(path: Path) -> None:
    """Refuse a video file whose first bytes are not an MP4/MOV, WebM or AVI container: ffmpeg decides by content,
    and a playlist (HLS, concat) named .mp4 would make it read other files or URLs into the frames."""
    with open(path, "rb") as f:
        head = f.read(12)
    if not (head[4:8] == b"ftyp" or head[:4] == b"\x1a\x45\xdf\xa3" or (head[:4] == b"RIFF" and head[8:12] == b"AVI ")):
        raise DataError(f"{path}: not an MP4, MOV, WebM or AVI video (its first bytes are {head[:8]!r})")


def read_clip(path: str | Path, frames: int, size: int, channels: int, at_most: bool = False) -> np.ndarray:
    """A GIF, a video file, a folder of numbered frames or one picture, as (frames, size, size, channels) uint8: the first `frames`
    frames (`at_most`: up to that many), each resized (centre-cropped to a square). Clear errors for
    unreadable or too short clips."""
    from .image import conform_image

    path = Path(path)
    pictures: list[Image.Image] = []
    try:
        if path.is_dir():
            files = sorted(f for f in path.iterdir() if f.suffix.lower() in FRAME_SUFFIXES)
            pictures = []
            for f in files:                              # read each frame now: a truncated file fails here
                try:
                    with Image.open(f, formats=PICTURE_FORMATS) as frame:
                        frame.load()
                        pictures.append(frame.copy())
                except Exception as e:
                    raise DataError(f"{f}: a frame of {path} that cannot be read ({type(e).__name__}: "
                                    f"{str(e)[:120]})") from None
        elif path.suffix.lower() == ".gif":
            with Image.open(path, formats=PICTURE_FORMATS) as gif:
                pictures = [frame.copy() for frame in ImageSequence.Iterator(gif)]
        elif path.suffix.lower() in FRAME_SUFFIXES:      # one picture: a clip of one frame
            with Image.open(path, formats=PICTURE_FORMATS) as picture:
                pictures = [picture.copy()]
        elif path.suffix.lower() in (".mp4", ".webm", ".mov", ".avi"):
            try:
                import imageio.v3 as iio
            except ImportError:
                raise DataError(f"{path}: reading {path.suffix} files needs imageio with ffmpeg: "
                                "pip install 'genloom[video]' (or convert it to a GIF)") from None
            check_container(path)
            pictures = [Image.fromarray(frame) for frame in iio.imiter(path)]
        else:
            raise DataError(f"{path}: not a clip (expected a .gif, a video file, or a folder of frames)")
    except DataError:
        raise
    except Exception as e:                               # Pillow/imageio raise many kinds for a corrupt file
        raise DataError(f"{path}: cannot be read as a video ({type(e).__name__}: {str(e)[:120]})") from None
    if at_most and pictures:
        frames = min(frames, len(pictures))
    if len(pictures) < frames or not pictures:
        raise DataError(f"{path}: {len(pictures)} frame(s); at least {frames} are needed (data.frames)")
    return np.stack([conform_image(p, size, channels) for p in pictures[:frames]])
