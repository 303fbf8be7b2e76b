"""Image files: tensors in [-1, 1] to PNG files (one image per file, a grid of many, an animated GIF), and
pictures conformed to a model's size and channels (resized, centre-cropped, grey or RGB).

Samplers, the trainer and the command line all write images through these functions, so a sample looks
the same wherever it was made.

Generated PNGs keep their recipe: `save_png` / `png_bytes` write the parameters that drew an image into
PNG text chunks (all of them as JSON in the iTXt chunk "genloom", the main ones also as readable chunks:
prompt, seed, steps, sampler, ...), and `read_generation_params` reads them back (what `genloom generate
image --like FILE.png` redraws from).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..core.errors import GenloomError
from ..core.memory import require

__all__ = ["to_pil_image", "save_image_grid", "save_images", "save_gif", "conform_image", "conform_array",
           "require_image_memory", "GRAY_MODES", "PICTURE_FORMATS", "PARAMS_KEY", "PARAMS_FORMAT", "save_png",
           "png_bytes", "read_generation_params"]

# Formats genloom opens (Pillow picks a decoder by a file's content, not its name: without this list an EPS
# file named x.png would be handed to Ghostscript where it is installed).
PICTURE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
GRID_PADDING_GREY = 128  # the lines between grid cells, visible on black and on white backgrounds
PARAMS_KEY = "genloom"                 # the PNG text chunk holding an image's generation parameters (JSON)
PARAMS_FORMAT = "genloom-image-params-1"
READABLE_PARAMS = ("model", "checkpoint", "prompt", "negative_prompt", "label", "seed", "steps", "sampler",
                   "guidance", "size")  # also written one per chunk, for image viewers and people


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) floats in [-1, 1] -> (N, H, W, C) uint8 in [0, 255], C being 1 or 3."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (N, 1 or 3, H, W), got {tuple(images.shape)}")
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).numpy()  # (N, H, W, C)


def _pil(pixels: np.ndarray, scale: int) -> Image.Image:
    """One (H, W, C) uint8 array as a grayscale or RGB picture, enlarged `scale` times (nearest)."""
    pixels = pixels.repeat(scale, axis=0).repeat(scale, axis=1)
    return Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)


def to_pil_image(image: torch.Tensor, scale: int = 1) -> Image.Image:
    """One (C, H, W) image in [-1, 1] as a Pillow image, enlarged `scale` times (nearest neighbour)."""
    return _pil(_to_uint8(image[None])[0], scale)


def save_image_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 1,
                    padding: int = 2) -> Path:
    """Write (N, C, H, W) images in [-1, 1] as one PNG grid with `nrow` images per row.

    `nrow` defaults to about the square root of N. Each image is enlarged `scale` times with
    nearest-neighbour pixels (an 8x8 digit is unreadable otherwise), and `padding` grey pixels
    separate the cells: the PNG is cols*(W*scale + padding) + padding pixels wide.
    """
    if scale < 1 or padding < 0:
        raise ValueError(f"scale must be at least 1 and padding at least 0, got {scale} and {padding}")
    pixels = _to_uint8(images)  # (N, H, W, C)
    count, height, width, channels = pixels.shape
    columns = min(nrow or math.ceil(math.sqrt(count)), count)
    rows = math.ceil(count / columns)
    cell_h, cell_w = height * scale, width * scale
    grid = np.full((rows * (cell_h + padding) + padding, columns * (cell_w + padding) + padding, channels),
                   GRID_PADDING_GREY, dtype=np.uint8)
    for i, image in enumerate(pixels):
        row, column = divmod(i, columns)
        top, left = padding + row * (cell_h + padding), padding + column * (cell_w + padding)
        grid[top:top + cell_h, left:left + cell_w] = image.repeat(scale, axis=0).repeat(scale, axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid[:, :, 0] if channels == 1 else grid).save(path)
    return path


def save_images(images: torch.Tensor, folder: str | Path, prefix: str = "image", scale: int = 1) -> list[Path]:
    """Write each of (N, C, H, W) images in [-1, 1] to FOLDER/PREFIX_0000.png, PREFIX_0001.png, ..."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, pixels in enumerate(_to_uint8(images)):
        paths.append(folder / f"{prefix}_{i:04d}.png")
        _pil(pixels, scale).save(paths[-1])
    return paths


def save_gif(frames: torch.Tensor, path: str | Path, scale: int = 1, seconds: float = 2.0,
             bounce: bool = True) -> Path:
    """Frames (N, C, H, W) in [-1, 1] as an animated GIF that loops (forth and back when `bounce`)."""
    pictures = [to_pil_image(frame, scale) for frame in frames]
    if bounce and len(pictures) > 2:
        pictures = pictures + pictures[-2:0:-1]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    duration = max(20, int(1000 * seconds / len(pictures)))
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=duration, loop=0)
    return path


def _png_info(params: dict[str, Any]) -> PngInfo:
    info = PngInfo()
    info.add_itxt(PARAMS_KEY, json.dumps({"format": PARAMS_FORMAT, **params}, sort_keys=True))
    for key in READABLE_PARAMS:
        if params.get(key) is not None:
            info.add_text(key, str(params[key]))        # tEXt, or iTXt where the text is not Latin-1
    if params.get("genloom_version"):
        info.add_text("Software", f"genloom {params['genloom_version']}")
    return info


def save_png(image: Image.Image, path: str | Path, params: dict[str, Any]) -> Path:
    """Write `image` to `path` as a PNG carrying `params` (JSON-serialisable) in its text chunks."""
    path = Path(path)
    image.save(path, format="PNG", pnginfo=_png_info(params))
    return path


def png_bytes(image: Image.Image, params: dict[str, Any]) -> bytes:
    """The PNG file of `image` with `params` in its text chunks, in memory (the server's images)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=_png_info(params))
    return buffer.getvalue()


def read_generation_params(path: str | Path) -> dict[str, Any]:
    """The generation parameters a genloom PNG carries (`save_png`), refused in one line naming the file when
    it is not a PNG or has none."""
    path = Path(path)
    try:
        with Image.open(path, formats=["PNG"]) as image:
            image.load()                                 # text chunks after the pixels are read with them
            text = getattr(image, "text", {}).get(PARAMS_KEY)
    except FileNotFoundError:
        raise GenloomError(f"{path}: no such file") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise GenloomError(f"{path}: not a PNG file Pillow can read ({error})") from None
    if text is None:
        raise GenloomError(f"{path} carries no genloom generation parameters (PNGs written by `genloom generate "
                           "image` and `genloom serve` have them in a text chunk named 'genloom')")
    try:
        params = json.loads(text)
    except ValueError:
        params = None
    if not isinstance(params, dict) or params.get("format") != PARAMS_FORMAT:
        found = params.get("format") if isinstance(params, dict) else None
        raise GenloomError(f"{path}: its 'genloom' text chunk is not genloom's generation parameters (format "
                           f"{found!r}, expected {PARAMS_FORMAT!r})")
    return params


GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


def conform_image(image: Image.Image, size: int, channels: int) -> np.ndarray:
    """One picture as (size, size, channels) uint8: transparency flattened onto white, 16-bit gray
    scaled to 8 bits, then resized so its shorter side is `size` and centre-cropped (size 0: kept)."""
    if image.mode.startswith("I"):  # 16-bit gray
        image = Image.fromarray(np.clip(np.asarray(image, dtype=np.float64) / 257, 0, 255).round().astype(np.uint8))
    if image.mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image.alpha_composite(rgba)
    image = image.convert("L" if channels == 1 else "RGB")
    width, height = image.size
    if size and (width, height) != (size, size):
        side = min(width, height)
        box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
        image = image.resize((size, size), Image.BILINEAR, box=box)  # Pillow averages when shrinking
    pixels = np.asarray(image)
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def require_image_memory(count: int, size: int, channels: int) -> None:
    """Refuse, before allocating, `count` images of size x size x channels that cannot fit in memory (the
    uint8 pixels and the tensor copy the data module keeps)."""
    require(2 * count * size * size * channels, f"data.image_size = {size}: {count:,} images of {size}x{size}x"
            f"{channels}", "choose a smaller data.image_size")


def conform_array(pixels: np.ndarray, size: int, channels: int) -> np.ndarray:
    """(N, H, W, C) uint8 -> (N, size, size, channels) through `conform_image` (untouched when it fits)."""
    if size in (0, pixels.shape[1]) and channels == pixels.shape[3]:  # the built-in images are square
        return pixels
    require_image_memory(len(pixels), size, channels)
    return np.stack([conform_image(Image.fromarray(p[:, :, 0] if p.shape[2] == 1 else p), size, channels)
                     for p in pixels])
