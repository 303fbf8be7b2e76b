"""A keyed spread-spectrum image watermark: a periodic luminance pattern, found by correlation after a search
over scale and position.

Marking: the key draws a 16x16 tile (keyed normal numbers, band-limited to 2-5 cycles per tile: wavelengths
of 3.2-8 pixels, which JPEG's 8x8 quantisation and resampling keep), repeated over the picture and added to
its luminance (the same amount to R, G and B, so colours keep their hue), scaled so that the marked picture
is `psnr` dB (default 38) from the original after rounding to 8 bits and clipping.

Detection: for each of SCALES (a resize by 0.5x to 2x, 1% apart, changes the tile's period), the picture's
luminance is resampled by 1 / scale (bicubic, over a source box of exactly that ratio), folded onto one 16x16
tile (every pixel summed into its position modulo 16: the mark adds up, the picture mostly does not) and
whitened (each frequency divided by the fold's own magnitude there); its circular correlation with the key's
tile at all 256 shifts finds a picture cut anywhere. Unmarked, the whitened fold's phases are uniform and
independent, which gives each correlation's standard deviation in closed form (sqrt(sum |T_k|^2) / 256). A
third of the false-positive budget goes to the picture as marked (scale 1, shift 0), a third to the best
shift at scale 1 (a crop; its p-value multiplied by the 256 shifts), a third to the best scale and shift
(multiplied by the len(SCALES) x 256 tests): the Bonferroni bound, which is conservative (neighbouring tests
are correlated).

A classical scheme, chosen over a learned encoder/decoder (HiDDeN-style) by measurement: the learned one,
trained for minutes on the shared CPUs, did not get past chance (docs/watermarks.md has the figures).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..core.errors import GenloomError
from .keys import check_key, keyed_normal, subkey

__all__ = ["ImageWatermark", "ImageDetection", "ImageTooSmallError", "MIN_MARK_SIZE", "MIN_DETECT_SIZE", "MAX_DETECT_SIZE", "TILE",
           "SCALES"]

TILE = 16                      # the pattern's period in pixels
BAND = (2.0, 5.0)              # its frequencies, cycles per tile (radius of the 2D frequency)
MIN_MARK_SIZE = 32             # the smaller side of a picture to mark (two tiles)
MIN_DETECT_SIZE = 16           # ... and of one to check (a marked 32 px picture resized by 0.5x)
MAX_DETECT_SIZE = 256          # a larger picture is checked in its central 256x256 window (bounded time)
SCALES = tuple(float(s) for s in np.exp(np.arange(-70, 71) * math.log(2.0) / 70))          # 1% apart; 1 exactly
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
        noise = keyed_normal(key, b"tile", TILE * TILE).reshape(TILE, TILE)
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
    def _correlations(self, luma: np.ndarray) -> np.ndarray:
        """The whitened circular correlation of a luminance picture's fold with the tile at every shift."""
        height, width = luma.shape
        index = ((np.arange(height) % TILE)[:, None] * TILE + (np.arange(width) % TILE)[None, :]).ravel()
        fold = np.bincount(index, weights=(luma - luma.mean()).ravel(), minlength=TILE * TILE).reshape(TILE, TILE)
        spectrum = np.fft.fft2(fold)
        spectrum /= np.abs(spectrum) + 1e-9 * (np.abs(spectrum).max() + 1e-12)
        return np.real(np.fft.ifft2(spectrum * self._spectrum))

    def detect(self, picture, threshold: float = 1e-3, where: str = "the image") -> ImageDetection:
        from PIL import Image

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
        image = Image.fromarray(luma.astype(np.float32), mode="F")
        z0, z1, best = 0.0, -math.inf, (-math.inf, 1.0, (0, 0))
        for scale in SCALES:
            if scale == 1.0:
                resampled = luma
            else:                 # undo a resize by `scale` exactly: the source box is a whole number of outputs
                size = (max(1, math.floor(width / scale)), max(1, math.floor(height / scale)))
                resampled = np.asarray(image.resize(size, Image.BICUBIC, box=(0, 0, size[0] * scale,
                                                                              size[1] * scale)), dtype=np.float64)
            scores = self._correlations(resampled)
            z = scores / self._sigma
            if scale == 1.0:
                z0, z1 = float(z[0, 0]), float(z.max())
            top = int(np.argmax(z))
            if z.flat[top] > best[0]:
                best = (float(z.flat[top]), scale, divmod(top, TILE))
        tests = len(SCALES) * TILE * TILE
        p = min(1.0, 3 * _normal_sf(z0), 3 * TILE * TILE * _normal_sf(z1), 3 * tests * _normal_sf(best[0]))
        return ImageDetection(round(z0, 4), round(best[0], 4), round(best[1], 4),
                              (int(best[2][0]), int(best[2][1])), p, p < threshold)


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
