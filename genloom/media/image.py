"""Image files: tensors in [-1, 1] to PNG files (one image per file, a grid of many, an animated GIF), and
pictures conformed to a model's size and channels (resized, centre-cropped, grey or RGB).

Samplers, the trainer and the command line all write images through these functions, so a sample looks
the same wherever it was made.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..core.memory import require

__all__ = ["to_pil_image", "save_image_grid", "save_images", "save_gif", "conform_image", "conform_array",
           "require_image_memory", "GRAY_MODES", "PICTURE_FORMATS"]

# Formats genloom opens (Pillow picks a decoder by a file's content, not its name: without this list an EPS
# file named x.png would be handed to Ghostscript where it is installed).
PICTURE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
GRID_PADDING_GREY = 128  # the lines between grid cells, visible on black and on white backgrounds


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
