"""A keyed spread-spectrum image watermark: a periodic luminance pattern, found by correlation after a search
over scale and position.

Marking: the key draws a 32x32 tile (keyed normal numbers, band-limited to 4-10 cycles per tile: wavelengths
of 3.2-8 pixels, which JPEG's 8x8 quantisation and a 0.75x resize keep), repeated over the picture and added
to its luminance (the same amount to R, G and B, so colours keep their hue), scaled so that the marked
picture is `psnr` dB (default 38) from the original after rounding to 8 bits and clipping.

Detection: for each of SCALES (a resize by 0.5x to 2x, 1% apart, changes the tile's period), the picture's
luminance is resampled by 1 / scale (Keys' bicubic, widened by the scale when it shrinks) and folded onto one
32x32 tile (every pixel summed into its position modulo 32: the mark adds up, the picture mostly does not).
Resampling and folding are linear and separable, so both are one matrix per side and per scale (cached by
the picture's size): all 141 folds are two batched matrix products. Each fold is whitened (each frequency
divided by its own magnitude: a picture's strong frequencies, stripes and checks included, weigh no more
than its weak ones); its circular correlation with the key's tile at all 1,024 shifts finds a picture cut
anywhere. Unmarked, the whitened fold's phases are uniform and independent, which gives each correlation's
standard deviation in closed form (sqrt(sum |T_k|^2) / 1024). A third of the false-positive budget goes to
the picture as marked (scale 1, shift 0), a third to the best shift at scale 1 (a crop; its p-value
multiplied by the 1,024 shifts), a third to the best scale and shift (multiplied by the len(SCALES) x 1,024
tests): the Bonferroni bound (neighbouring tests are correlated, which makes it conservative). The phases of
a real picture are not quite independent, though (a nearest-neighbour enlargement, as genloom saves its
pictures, ties each frequency to its mirror image): on 1,000 unmarked pictures of each built-in set z0's
spread was 0.72-1.10 times the closed form, and the p-value at 1% let through up to 1.9% of them. So the
p-value reads each z divided by NULL_SPREAD = 1.1; with it, 3 keys x 5 picture sets x 6 edits x 1,000
unmarked pictures gave at most 0.8% under p < 0.01 (bench/watermark_bench.py and docs/watermarks.md).

Why 32x32 at 4-10 cycles: a whitened 16x16 fold has 72 frequencies in its band (2-5 cycles), and phase-only
correlation cannot score above about sqrt(72) = 8.5, however strong the mark; a 32x32 tile has 272, and on 64
px pictures its median scores after a resize or a crop are 1.4-1.7x higher (docs/watermarks.md has the
comparison, and the ones against lower bands, a 64x64 tile and a texture-masked amplitude).

A classical scheme, chosen over a learned encoder/decoder (HiDDeN-style) by measurement: the learned one,
trained for minutes on the shared CPUs, did not get past chance (docs/watermarks.md has the figures).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import numpy as np

from ..core.errors import GenloomError
from .keys import check_key, keyed_normal, subkey

__all__ = ["ImageWatermark", "ImageDetection", "ImageTooSmallError", "MIN_MARK_SIZE", "MIN_DETECT_SIZE", "MAX_DETECT_SIZE", "TILE",
           "SCALES"]

TILE = 32                      # the pattern's period in pixels
BAND = (4.0, 10.0)             # its frequencies, cycles per tile (radius of the 2D frequency)
MIN_MARK_SIZE = 32             # the smaller side of a picture to mark (one tile)
MIN_DETECT_SIZE = 16           # ... and of one to check (a marked 32 px picture resized by 0.5x)
MAX_DETECT_SIZE = 256          # a larger picture is checked in its central 256x256 window (bounded time)
SCALES = tuple(float(s) for s in np.exp(np.arange(-70, 71) * math.log(2.0) / 70))          # 1% apart; 1 exactly
NULL_SPREAD = 1.1              # measured: unmarked pictures' z spread up to ~1.1x the closed form (see below)
LUMA = np.array([0.299, 0.587, 0.114])


class ImageTooSmallError(GenloomError):
    """A picture too small to hold (or to be checked for) the mark."""


@dataclass(frozen=True)
class ImageDetection:
    z: float                   # the correlation at scale 1, shift 0, in null standard deviations
    z_best: float              # the best over every scale and shift
    scale: float               # the resize the best one undoes (1 = none)
    shift: tuple[int, int]     # its offset (rows, columns) modulo the tile
    p_value: float
    marked: bool

    def to_json(self) -> dict:
        out = asdict(self)
        out["shift"] = list(self.shift)
        return {k: (round(v, 4) if isinstance(v, float) and k != "p_value" else v) for k, v in out.items()}


def _normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


class ImageWatermark:
    """`ImageWatermark(key).mark(picture)` -> the marked picture (same type and size); `.detect(picture)` ->
    ImageDetection. Pictures: a Pillow image or a uint8 array (H, W) or (H, W, C) with C = 1, 3 or 4."""

    def __init__(self, key: str | bytes, psnr: float = 38.0, where: str = "--watermark"):
        if not 20.0 <= psnr <= 60.0:
            raise GenloomError(f"psnr {psnr}: the mark's strength is 20 to 60 dB")
        self.psnr = float(psnr)
        self._tile = self._make_tile(subkey(check_key(key, where), "image"))
        self._spectrum = np.conj(np.fft.fft2(self._tile))
        # a whitened fold has unit magnitude at every frequency; unmarked, its phases are independent and
        # uniform, so each shift's correlation has variance sum |T_k|^2 / N^2 (N = TILE^2)
        self._sigma = float(np.sqrt(np.sum(np.abs(self._spectrum) ** 2))) / TILE ** 2

    @staticmethod
    def _make_tile(key: bytes) -> np.ndarray:
        noise = keyed_normal(key, b"tile-32", TILE * TILE).reshape(TILE, TILE)
        f = np.fft.fftfreq(TILE) * TILE
        radius = np.hypot(*np.meshgrid(f, f, indexing="ij"))
        spectrum = np.fft.fft2(noise) * ((radius >= BAND[0]) & (radius <= BAND[1]))
        tile = np.real(np.fft.ifft2(spectrum))
        return tile / np.sqrt(np.mean(tile ** 2))

    # -- marking ----------------------------------------------------------------------------------------------
    def mark(self, picture, where: str = "the image"):
        pixels, rebuild = _pixels(picture, where)
        height, width = pixels.shape[:2]
        if min(height, width) < MIN_MARK_SIZE:
            raise ImageTooSmallError(f"{where}: {width}x{height} pixels is an image too small for the mark "
                                     f"(genloom marks images of at least {MIN_MARK_SIZE}x{MIN_MARK_SIZE})")
        colour = pixels[..., :3].astype(np.float64)
        pattern = np.tile(self._tile, (height // TILE + 1, width // TILE + 1))[:height, :width][..., None]
        target = 255.0 ** 2 / 10 ** (self.psnr / 10)          # the mean squared change the PSNR allows

        def apply(amplitude: float) -> np.ndarray:
            return np.clip(np.round(colour + amplitude * pattern), 0, 255)

        low, high = 0.0, 4.0 * math.sqrt(target)               # clipping only lowers the change: bisect
        while np.mean((apply(high) - colour) ** 2) < target and high < 255:
            high *= 2
        for _ in range(18):
            middle = (low + high) / 2
            low, high = (middle, high) if np.mean((apply(middle) - colour) ** 2) < target else (low, middle)
        out = pixels.copy()
        out[..., :3] = apply(low).astype(np.uint8)
        return rebuild(out)

    # -- detection --------------------------------------------------------------------------------------------
    def detect(self, picture, threshold: float = 1e-3, where: str = "the image") -> ImageDetection:
        pixels, _ = _pixels(picture, where)
        height, width = pixels.shape[:2]
        if min(height, width) < MIN_DETECT_SIZE:
            raise ImageTooSmallError(f"{where}: {width}x{height} pixels is an image too small for the mark "
                                     f"(genloom checks images of at least {MIN_DETECT_SIZE}x{MIN_DETECT_SIZE})")
        if max(height, width) > MAX_DETECT_SIZE:     # the mark is the same everywhere: a central window holds it
            top, left = max(0, (height - MAX_DETECT_SIZE) // 2), max(0, (width - MAX_DETECT_SIZE) // 2)
            pixels = pixels[top:top + MAX_DETECT_SIZE, left:left + MAX_DETECT_SIZE]
            height, width = pixels.shape[:2]
        luma = pixels[..., :3].astype(np.float64) @ LUMA if pixels.shape[2] >= 3 else pixels[..., 0].astype(np.float64)
        luma = (luma - luma.mean()).astype(np.float32)
        rows, columns = _fold_matrices(height), _fold_matrices(width)       # (scales, TILE, side) each
        folds = np.matmul(np.matmul(rows, luma), columns.transpose(0, 2, 1)).astype(np.float64)
        spectrum = np.fft.rfft2(folds)                                     # real folds: half the spectrum
        magnitude = np.abs(spectrum)
        spectrum /= magnitude + 1e-9 * (magnitude.max(axis=(1, 2), keepdims=True) + 1e-12)
        z = np.fft.irfft2(spectrum * self._spectrum[:, :TILE // 2 + 1], s=(TILE, TILE)) / self._sigma
        one = SCALES.index(1.0)
        z0, z1 = float(z[one, 0, 0]), float(z[one].max())
        top = int(np.argmax(z))
        scale, shift = divmod(top, TILE * TILE)
        best = float(z.flat[top])
        tests = len(SCALES) * TILE * TILE
        z0s, z1s, bests = z0 / NULL_SPREAD, z1 / NULL_SPREAD, best / NULL_SPREAD
        p = min(1.0, 3 * _normal_sf(z0s), 3 * TILE * TILE * _normal_sf(z1s), 3 * tests * _normal_sf(bests))
        return ImageDetection(round(z0, 4), round(best, 4), round(SCALES[scale], 4), divmod(shift, TILE),
                              p, p < threshold)


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel (a = -0.5: the one Pillow's BICUBIC uses)."""
    x = np.abs(x)
    return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1, np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


@functools.lru_cache(maxsize=8)            # 4.6 MB for a 256 px side, less for smaller ones
def _fold_matrices(size: int) -> np.ndarray:
    """(len(SCALES), TILE, size) float32: row k turns one side of a picture into that side resampled by 1 /
    SCALES[k] (output pixel j at (j + 1/2) * scale - 1/2, floor(size / scale) of them, a kernel widened by the
    scale when it shrinks, weights renormalised at the borders, as Pillow does) and folded modulo TILE."""
    out = np.zeros((len(SCALES), TILE, size))
    source = np.arange(size)
    for k, scale in enumerate(SCALES):
        count = max(1, math.floor(size / scale))
        centres = (np.arange(count) + 0.5) * scale - 0.5
        stretch = max(scale, 1.0)
        weights = _cubic((source[None, :] - centres[:, None]) / stretch)
        weights /= weights.sum(axis=1, keepdims=True)
        weights = np.concatenate([weights, np.zeros(((-count) % TILE, size))])
        out[k] = weights.reshape(-1, TILE, size).sum(axis=0)
    out = out.astype(np.float32)
    out.setflags(write=False)                  # shared by every later call for this size
    return out


def _pixels(picture, where: str):
    """(uint8 array (H, W, C), a function turning such an array back into the picture's type)."""
    try:
        from PIL import Image
    except ImportError:                         # pragma: no cover - Pillow is a dependency
        Image = None
    if Image is not None and isinstance(picture, Image.Image):
        mode = picture.mode
        if mode not in ("RGB", "RGBA", "L"):
            picture = picture.convert("RGBA" if "A" in mode or "transparency" in picture.info else "RGB")
        array = np.asarray(picture)
        array = array[..., None] if array.ndim == 2 else array
        out_mode = picture.mode
        return array, lambda a: Image.fromarray(a[..., 0] if out_mode == "L" else a, out_mode)
    array = np.asarray(picture)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise GenloomError(f"{where}: a picture is a Pillow image or a uint8 array (H, W) or (H, W, 1|3|4), not "
                           f"{array.dtype} of shape {array.shape}")
    squeeze = array.ndim == 2
    array = array[..., None] if squeeze else array
    return array, (lambda a: a[..., 0]) if squeeze else (lambda a: a)
