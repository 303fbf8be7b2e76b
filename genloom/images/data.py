"""Image data for diffusion models and GANs: a source -> uint8 pixels in memory -> batches in [-1, 1].

Four sources: `builtin:digits` (scikit-learn's 1,797 handwritten 8x8 digits), `builtin:glyphs`
(letters and digits rendered by Pillow in random colours, sizes, places and rotations, each with a
caption), `builtin:glyphs64` (the same glyphs drawn at 64x64 over textured backgrounds: stripes, checks,
dots, gradients) and a folder of images whose subfolders are the classes. Every image of a run has the
same size and channel count (a folder of 64-256 px images trains at its size; `data.image_size` resizes
and centre-crops every image to one square size); the pixels are held in memory as uint8 and turned into
floats per batch.

With a latent denoiser (`model.autoencoder = DIR`) every image is encoded once, the latent means are
cached memory-mapped under the cache folder (keyed by the data settings and the autoencoder's weights),
and batches are the scaled latents instead of pixels.

An index names an example of a split; with `flip` on, index i >= N (N examples in the split) is
example i - N mirrored left to right. So `batch(indices)` depends on nothing but the indices, and a
resumed run that replays the same indices sees the same pixels.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..core.config import require, validate
from ..core.errors import CheckpointError, ConfigError, DataError
from ..core.registry import register
from ..media.image import (
    GRAY_MODES,
    PICTURE_FORMATS,
    conform_array,
    conform_image,
    require_image_memory,
    save_image_grid,
    save_images,
    to_pil_image,
)
from ..train.data import split_examples

__all__ = [
    "ImageDataConfig",
    "ImageData",
    "ImageSource",
    "load_image_source",
    "render_glyphs",
    "glyph_caption",
    "load_labels",
    "save_image_grid",
    "save_images",
    "to_pil_image",
    "IMAGE_EXTENSIONS",
    "LatentTable",
]

log = logging.getLogger(__name__)

BUILTIN_SOURCES = ("builtin:digits", "builtin:glyphs", "builtin:glyphs64")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
LABELS_FILE = "labels.json"


@dataclass(frozen=True)
class ImageDataConfig:
    kind: Literal["images"] = "images"
    path: str = "builtin:digits"   # builtin:digits, builtin:glyphs, builtin:glyphs64 or a folder (class = subfolder)
    image_size: int = 0            # 0 = the source's size; N = resize (and centre-crop) every image to N x N
    channels: int = 0              # 0 = the source's (digits 1, glyphs 3, a folder 1 if all gray else 3); 1 or 3
    flip: bool = False             # random left-right mirroring (off: a mirrored 7 or R is no longer one)
    val_fraction: float = 0.1      # share of the images, chosen by a seeded shuffle, kept for validation
    glyphs_count: int = 6000       # how many glyphs builtin:glyphs / builtin:glyphs64 renders
    seed: int = 0                  # seeds the glyphs' rendering and the train/validation split

    def __post_init__(self) -> None:
        validate(self, "data")
        require(bool(self.path), "data.path", f"must name a folder of images or one of {', '.join(BUILTIN_SOURCES)}")
        require(not self.path.startswith("builtin:") or self.path in BUILTIN_SOURCES, "data.path",
                f"unknown built-in source {self.path!r}; valid choices: {', '.join(BUILTIN_SOURCES)}")
        require(self.image_size == 0 or self.image_size >= 2, "data.image_size",
                "must be 0 (the source's size) or a size in pixels of at least 2")
        require(self.channels in (0, 1, 3), "data.channels",
                f"{self.channels!r} is not allowed; valid choices: 0 (the source's), 1 (gray), 3 (RGB)")
        require(0 < self.val_fraction < 1, "data.val_fraction", "must be between 0 and 1 (e.g. 0.1)")
        require(self.glyphs_count >= len(GLYPH_CHARACTERS), "data.glyphs_count",
                f"must be at least {len(GLYPH_CHARACTERS)}, one per character")


@dataclass
class ImageSource:
    """Every image of a source, at the run's size and channel count."""

    pixels: np.ndarray                  # (N, H, W, C) uint8
    labels: np.ndarray                  # (N,) int64 indices into `classes` (all 0 when there are no classes)
    classes: list[str]                  # class names; [] = unconditional
    description: str                    # for messages: "builtin:digits", "folder /data/cats"
    attributes: list[dict] | None = None  # per-image glyph attributes (builtin:glyphs only)


# ----------------------------------------------------------------------------------------------
# builtin:glyphs — letters and digits drawn with Pillow's scalable default font
# ----------------------------------------------------------------------------------------------

GLYPH_CHARACTERS = string.ascii_uppercase + string.digits
GLYPH_IMAGE_SIZE = 32
GLYPH_SUPERSAMPLE = 4             # draw and rotate at 4x, then average 4x4 blocks: smooth edges
GLYPH_COLOURS = {
    "red": (230, 40, 40), "green": (40, 200, 60), "blue": (60, 100, 255), "yellow": (240, 220, 40),
    "magenta": (230, 50, 220), "cyan": (40, 220, 230), "orange": (255, 140, 20), "white": (240, 240, 240),
}
GLYPH_SIZES = {"small": 12, "medium": 17, "large": 22}   # font size in pixels of the 32x32 image
GLYPH_SHIFTS = {"small": 8, "medium": 6, "large": 4}     # pixels a glyph moves for left/right, top/bottom
HORIZONTAL = {"left": -1, "centre": 0, "right": 1}
VERTICAL = {"top": -1, "middle": 0, "bottom": 1}
GLYPH_ROTATIONS = tuple(range(-30, 31, 5))              # degrees counter-clockwise (positive leans left)


def _supersample(size: int) -> int:
    """Drawing scale: 4x at 32 pixels, 2x at 64 (the canvas stays 128 pixels wide)."""
    return max(1, GLYPH_SUPERSAMPLE * GLYPH_IMAGE_SIZE // size)


def _glyph_fonts(size: int = GLYPH_IMAGE_SIZE) -> dict[str, ImageFont.FreeTypeFont]:
    scale = _supersample(size) * size / GLYPH_IMAGE_SIZE
    try:
        fonts = {name: ImageFont.load_default(size=round(px * scale)) for name, px in GLYPH_SIZES.items()}
    except TypeError:  # Pillow < 10.1 has no size argument
        fonts = {}
    if not all(isinstance(font, ImageFont.FreeTypeFont) for font in fonts.values()) or not fonts:
        raise DataError("data.path=builtin:glyphs needs Pillow >= 10.1 built with FreeType "
                        "(pip install -U Pillow)")
    return fonts


def _glyph_mask(attributes: dict, font: ImageFont.FreeTypeFont, size: int = GLYPH_IMAGE_SIZE) -> np.ndarray:
    """The coverage (size, size) uint8 of one glyph: drawn centred, shifted, rotated, then downsampled."""
    k = _supersample(size)
    side = size * k
    shift = GLYPH_SHIFTS[attributes["size"]] * k * size / GLYPH_IMAGE_SIZE
    centre_x = side / 2 + HORIZONTAL[attributes["horizontal"]] * shift
    centre_y = side / 2 + VERTICAL[attributes["vertical"]] * shift
    left, top, right, bottom = font.getbbox(attributes["char"])
    canvas = Image.new("L", (side, side), 0)
    ImageDraw.Draw(canvas).text((centre_x - (left + right) / 2, centre_y - (top + bottom) / 2),
                                attributes["char"], fill=255, font=font)
    canvas = canvas.rotate(attributes["rotation"], resample=Image.BILINEAR, center=(centre_x, centre_y))
    return np.asarray(canvas.reduce(k))


def render_glyphs(count: int, seed: int, size: int = GLYPH_IMAGE_SIZE,
                  textured: bool = False) -> tuple[np.ndarray, list[dict]]:
    """`count` glyph images (N, size, size, 3) uint8 on black (or, `textured`, on a textured background),
    and each one's attributes.

    Every character appears count // 36 or count // 36 + 1 times; colour, size, place and rotation
    (and background) are drawn independently. The same arguments always give the same images.
    """
    rng = np.random.default_rng(seed)
    colour_names, size_names = list(GLYPH_COLOURS), list(GLYPH_SIZES)
    characters = rng.permutation(np.arange(count) % len(GLYPH_CHARACTERS))
    colours = rng.integers(0, len(colour_names), count)
    sizes = rng.integers(0, len(size_names), count)
    horizontal = rng.integers(0, len(HORIZONTAL), count)
    vertical = rng.integers(0, len(VERTICAL), count)
    rotations = rng.choice(GLYPH_ROTATIONS, count)
    attributes = [{"char": GLYPH_CHARACTERS[characters[i]], "colour": colour_names[colours[i]],
                   "size": size_names[sizes[i]], "horizontal": list(HORIZONTAL)[horizontal[i]],
                   "vertical": list(VERTICAL)[vertical[i]], "rotation": int(rotations[i])}
                  for i in range(count)]
    fonts = _glyph_fonts(size)
    masks = np.stack([_glyph_mask(a, fonts[a["size"]], size) for a in attributes])     # (N, S, S)
    rgb = np.array([GLYPH_COLOURS[a["colour"]] for a in attributes], dtype=np.uint16)  # (N, 3)
    if not textured:
        pixels = (masks[:, :, :, None].astype(np.uint16) * rgb[:, None, None, :] + 127) // 255
        return pixels.astype(np.uint8), attributes
    backgrounds = _textures(attributes, size, np.random.default_rng(seed + 1))           # (N, S, S, 3) uint16
    cover = masks[:, :, :, None].astype(np.uint16)
    pixels = (cover * rgb[:, None, None, :] + (255 - cover) * backgrounds + 127) // 255
    return pixels.astype(np.uint8), attributes


BACKGROUND_COLOURS = {"navy": (20, 30, 90), "maroon": (90, 20, 30), "khaki": (70, 70, 20), "teal": (20, 80, 80),
                      "grey": (70, 70, 70), "purple": (70, 25, 90)}
TEXTURES = ("plain", "stripes", "checks", "dots", "gradient")


def _textures(attributes: list[dict], size: int, rng: np.random.Generator) -> np.ndarray:
    """A dim textured background (N, S, S, 3) uint16 per glyph; adds "background" and "texture" to each
    one's attributes. Periods of 6-12 pixels: detail an autoencoder must keep."""
    colour_names = list(BACKGROUND_COLOURS)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.empty((len(attributes), size, size, 3), dtype=np.uint16)
    for i, attribute in enumerate(attributes):
        colour = np.array(BACKGROUND_COLOURS[colour_names[rng.integers(len(colour_names))]], dtype=np.float32)
        texture = TEXTURES[rng.integers(len(TEXTURES))]
        period = float(rng.choice([6, 8, 12]))
        angle = float(rng.choice([0, 45, 90, 135])) * np.pi / 180
        if texture == "stripes":
            level = ((x * np.cos(angle) + y * np.sin(angle)) / period) % 2 < 1
        elif texture == "checks":
            level = ((x // period + y // period) % 2) == 0
        elif texture == "dots":
            level = ((x % period - period / 2) ** 2 + (y % period - period / 2) ** 2) < (period / 3) ** 2
        elif texture == "gradient":
            level = (x * np.cos(angle) + y * np.sin(angle)) / (size * 1.5) + 0.3
        else:
            level = np.ones_like(x)
        brightness = 0.45 + 0.55 * np.clip(level.astype(np.float32), 0, 1)          # (S, S) in [0.45, 1]
        out[i] = np.round(brightness[:, :, None] * colour).astype(np.uint16)
        attribute["background"] = colour_names[list(BACKGROUND_COLOURS.values()).index(tuple(colour.astype(int)))]
        attribute["texture"] = texture
    return out


def glyph_caption(attributes: dict) -> str:
    """A sentence describing a glyph, e.g. 'a large red letter A at the top left, rotated 15 degrees left'."""
    char, horizontal, vertical = attributes["char"], attributes["horizontal"], attributes["vertical"]
    if horizontal == "centre" and vertical == "middle":
        place = "in the centre"
    elif vertical == "middle":
        place = f"on the {horizontal}"
    elif horizontal == "centre":
        place = f"at the {vertical}"
    else:
        place = f"at the {vertical} {horizontal}"
    rotation = attributes["rotation"]
    turn = "upright" if rotation == 0 else f"rotated {abs(rotation)} degrees {'left' if rotation > 0 else 'right'}"
    kind = "digit" if char.isdigit() else "letter"
    caption = f"a {attributes['size']} {attributes['colour']} {kind} {char} {place}, {turn}"
    if "texture" in attributes:
        caption += f", on a {attributes['background']} {attributes['texture']} background"
    return caption


# ----------------------------------------------------------------------------------------------
# Making every image the same size and mode
# ----------------------------------------------------------------------------------------------







# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------

def _digits(config: ImageDataConfig) -> ImageSource:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("data.path=builtin:digits needs scikit-learn: pip install scikit-learn") from None
    digits = load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)[:, :, :, None]  # values 0..16 -> 0..255
    pixels = conform_array(pixels, config.image_size, config.channels or 1)
    return ImageSource(pixels, digits.target.astype(np.int64), [str(d) for d in range(10)], config.path)


def _glyphs(config: ImageDataConfig) -> ImageSource:
    large = config.path == "builtin:glyphs64"
    pixels, attributes = render_glyphs(config.glyphs_count, config.seed, 64 if large else GLYPH_IMAGE_SIZE, large)
    pixels = conform_array(pixels, config.image_size, config.channels or 3)
    labels = np.array([GLYPH_CHARACTERS.index(a["char"]) for a in attributes], dtype=np.int64)
    return ImageSource(pixels, labels, list(GLYPH_CHARACTERS), config.path, attributes)


def image_files(root: Path) -> list[Path]:
    """Image files under `root`, recursively and in a fixed order, skipping hidden files and folders."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _folder(config: ImageDataConfig) -> ImageSource:
    root = Path(config.path).expanduser()
    if not root.exists():
        raise DataError(f"data.path: {root} does not exist (expected a folder of images or one of "
                        f"{', '.join(BUILTIN_SOURCES)})")
    if not root.is_dir():
        raise DataError(f"data.path: {root} is not a folder; put the images in a folder (one subfolder per class)")
    files = image_files(root)
    if not files:
        raise DataError(f"data.path: no images in {root} (looked for {', '.join(IMAGE_EXTENSIONS)}, in "
                        "subfolders too)")

    unreadable: list[tuple[Path, Exception]] = []
    errors = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
    headers: dict[Path, tuple[str, tuple[int, int]]] = {}  # first pass: mode and size from the header
    for path in files:
        try:
            with Image.open(path, formats=PICTURE_FORMATS) as image:
                headers[path] = (image.mode, image.size)
        except errors as error:
            unreadable.append((path, error))

    channels = config.channels or (1 if all(mode in GRAY_MODES for mode, _ in headers.values()) else 3)
    size = config.image_size
    if not size and headers:
        first, (_, first_size) = next(iter(headers.items()))
        other = next((p for p, (_, s) in headers.items() if s != first_size), None)
        if other is not None:
            raise DataError(f"data.path: the images in {root} differ in size: {first} is "
                            f"{first_size[0]}x{first_size[1]} but {other} is {headers[other][1][0]}x"
                            f"{headers[other][1][1]}; resize them all with --set data.image_size=N (each is "
                            "scaled to N on its short side and centre-cropped: genloom trains one square size per "
                            "run, it has no aspect-ratio buckets)")
        if first_size[0] != first_size[1]:
            raise DataError(f"data.path: the images in {root} are {first_size[0]}x{first_size[1]}, not square; "
                            "resize and centre-crop them with --set data.image_size=N")
        size = first_size[0]

    log.info("loading %d images from %s", len(headers), root)
    require_image_memory(len(headers), size, channels)
    pixels = np.empty((len(headers), size, size, channels), dtype=np.uint8)
    kept: list[Path] = []
    for path in headers:  # second pass: decode (a truncated file only fails here)
        try:
            with Image.open(path, formats=PICTURE_FORMATS) as image:
                pixels[len(kept)] = conform_image(image, size, channels)
            kept.append(path)
        except errors as error:
            unreadable.append((path, error))
    if unreadable:
        path, error = unreadable[0]
        log.warning("skipped %d unreadable image file(s) in %s, the first being %s (%s)",
                    len(unreadable), root, path, error)
    if not kept:
        raise DataError(f"data.path: none of the {len(files)} image files in {root} could be read")

    # The class of an image is its first folder under the root; images in the root itself are unlabelled.
    folders = [p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else None for p in kept]
    loose = [p for p, folder in zip(kept, folders) if folder is None]
    if loose and len(loose) < len(kept):
        raise DataError(f"data.path: {root} holds images both in subfolders (classes) and directly in the folder "
                        f"(e.g. {loose[0]}); put every image in a class subfolder, or all of them in the folder "
                        "for an unconditional model")
    classes = sorted(set(folders)) if not loose else []
    labels = np.array([classes.index(f) if classes else 0 for f in folders], dtype=np.int64)
    return ImageSource(pixels[:len(kept)], labels, classes, f"folder {root}")


def load_image_source(config: ImageDataConfig) -> ImageSource:
    """Read (or render) every image of `config.path` at the configured size and channel count."""
    if config.path == "builtin:digits":
        return _digits(config)
    if config.path in ("builtin:glyphs", "builtin:glyphs64"):
        return _glyphs(config)
    return _folder(config)


# ----------------------------------------------------------------------------------------------
# The data module the training loop uses
# ----------------------------------------------------------------------------------------------





class ImageData:
    """Images and class labels in memory, split once by a seeded shuffle, served as (B, C, H, W) in [-1, 1]
    (or, for a latent denoiser, as the cached scaled latents (B, L, H/f, W/f) of the images)."""

    item_name = "img"
    items_per_example = 1

    def __init__(self, config: ImageDataConfig, model_config=None, progress: bool = True):
        self.config = config
        self.model_config = model_config                     # the run's model config (latent runs name an autoencoder)
        self.autoencoder_path = getattr(model_config, "autoencoder", "") or ""
        self.latents: LatentTable | None = None             # latent runs: the cached latents, once prepared
        self.progress = progress
        self.classes: list[str] = []                         # class names in label order; [] = unconditional
        self.attributes: list[dict] | None = None            # per-image glyph attributes (builtin:glyphs)
        self._pixels = torch.empty(0, dtype=torch.uint8)    # (N, C, H, W)
        self._labels = torch.empty(0, dtype=torch.long)     # (N,)
        self._splits: dict[str, torch.Tensor] = {}          # split -> example ids into _pixels

    def prepare(self) -> None:
        """Load or render the images and split them (once; later calls do nothing)."""
        if self._splits:
            return
        source = load_image_source(self.config)
        count = len(source.pixels)
        if count < 2:
            raise DataError(f"data.path: {source.description} has {count} image; training and validation "
                            "need at least 2")
        self._pixels = torch.from_numpy(source.pixels).permute(0, 3, 1, 2).contiguous()
        self._labels = torch.from_numpy(source.labels)
        self.classes, self.attributes = source.classes, source.attributes
        self._splits = split_examples(count, self.config.val_fraction, self.config.seed)
        num_val = len(self._splits["val"])
        log.info("%s: %d images of %dx%dx%d, %d classes; %d for training, %d for validation",
                 source.description, count, *self._pixels.shape[1:], len(self.classes), count - num_val, num_val)
        if self.autoencoder_path:
            self.latents = LatentTable(self._pixels, self.config, self.autoencoder_path, self.model_config,
                                       self.config.flip, self.progress)

    # -- what the trainer and the model need ----------------------------------------------------
    def num_examples(self, split: str) -> int:
        self.prepare()
        return len(self._splits[split])

    def training_images(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every training image and its label: the reference generated images are compared with."""
        return self.pixel_batch(torch.arange(self.num_examples("train")), "train")

    def perceptual_network(self):
        """The frozen image network an autoencoder's perceptual loss compares features of: a feature classifier
        like the one behind FID-<data> but trained with another seed, so that the network the metric uses is
        never the one training optimised against (with no classes: the same architecture, randomly initialised;
        random convolutional features already rank image distortions well, Zhang et al. 2018)."""
        from .eval import data_feature_classifier

        return data_feature_classifier(self, seed=1, progress=self.progress)

    def feature_classifier(self, reference: tuple[torch.Tensor, torch.Tensor] | None = None, progress: bool = True):
        """The cached classifier whose features FID-<data>, KID and class accuracy are computed on (see eval.py)."""
        from .eval import data_feature_classifier

        return data_feature_classifier(self, reference, progress=progress)

    def model_settings(self) -> dict:
        """The denoiser's input: the images, or (latent runs) the latents: image_size, channels, num_classes."""
        self.prepare()
        _, channels, height, _ = self._pixels.shape if self.latents is None else self.latents.shape
        return {"image_size": height, "channels": channels, "num_classes": len(self.classes)}

    def save_assets(self, folder: Path) -> None:
        """Write labels.json: the class names in label order, so "7" or "A" can be mapped to an index; a latent
        run also keeps a copy of its autoencoder (autoencoder.json + autoencoder.safetensors)."""
        self.prepare()
        _, channels, size, _ = self._pixels.shape
        payload = {"classes": self.classes, "image_size": size, "channels": channels, "source": self.config.path}
        if self.latents is not None:
            payload["latent"] = self.latents.save(Path(folder))
        (Path(folder) / LABELS_FILE).write_text(json.dumps(payload, indent=2))

    def sample_indices(self, generator: torch.Generator, n: int) -> torch.Tensor:
        """`n` training examples drawn uniformly with replacement; with `flip`, half of the range is mirrored."""
        high = self.num_examples("train") * (2 if self.config.flip else 1)
        return torch.randint(0, high, (n,), generator=generator)

    def val_indices(self, n: int) -> torch.Tensor:
        """The first `n` validation examples (cycling when `n` is larger than the split), never mirrored."""
        return torch.arange(n) % self.num_examples("val")

    def example_ids(self, indices: torch.Tensor, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """Which source images `indices` of `split` name, and whether each is mirrored."""
        self.prepare()
        ids = self._splits[split]
        count = len(ids)
        if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= 2 * count):
            raise IndexError(f"image indices of the {split} split must be in [0, {2 * count})")
        return ids[indices % count], indices >= count

    def batch(self, indices: torch.Tensor, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, C, H, W) float32 in [-1, 1] (latent runs: scaled latents (B, L, h, w)) and labels (B,)
        int64 for `indices` of `split`."""
        if self.latents is None:
            return self.pixel_batch(indices, split)
        ids, mirrored = self.example_ids(indices, split)
        return self.latents.rows(ids, mirrored), self._labels[ids]

    def pixel_batch(self, indices: torch.Tensor, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, C, H, W) float32 in [-1, 1] and labels (B,) int64 for `indices` of `split`."""
        ids, mirrored = self.example_ids(indices, split)
        images = self._pixels[ids].float() / 127.5 - 1   # (B, C, H, W)
        images[mirrored] = images[mirrored].flip(-1)
        return images, self._labels[ids]

    def caption(self, example_id: int) -> str:
        """The sentence describing source image `example_id` (builtin:glyphs only; see `example_ids`)."""
        self.prepare()
        if self.attributes is None:
            raise DataError(f"data.path: {self.config.path} has no captions; only builtin:glyphs has them")
        return glyph_caption(self.attributes[example_id])


class LatentTable:
    """The scaled latents of a data set's images for a latent denoiser (`model.autoencoder`): every image (and,
    with `flip`, its mirror image) is encoded once and the latent means are cached memory-mapped under
    `<cache>/latents/<data>-<hash>/`, keyed by the data settings and the autoencoder's config and weights;
    an interrupted encoding resumes where it stopped (`diffusion.latents.cached_latents`)."""

    def __init__(self, pixels: torch.Tensor, data_config, autoencoder_path: str, model_config, flip: bool,
                 progress: bool = True):
        import hashlib

        from ..core.cache import cache_folder
        from ..diffusion.latents import autoencoder_identity, cached_latents, open_autoencoder
        from .eval import data_name

        self.path = autoencoder_path
        autoencoder = open_autoencoder(autoencoder_path)
        cfg = autoencoder.config
        count, channels, size, width = pixels.shape                          # (N, C, H, W) uint8
        if channels != cfg.channels:
            raise ConfigError(f"model.autoencoder: {autoencoder_path} encodes {cfg.channels}-channel images but "
                              f"{data_config.path} has {channels}-channel ones; set data.channels={cfg.channels}")
        if size % cfg.downsampling or width % cfg.downsampling:
            raise ConfigError(f"model.autoencoder: {autoencoder_path} downsamples {cfg.downsampling}x but the "
                              f"images are {size}x{width}; set data.image_size to a multiple of {cfg.downsampling}")
        latent_size = size // cfg.downsampling
        if getattr(model_config, "channels", 0) not in (0, cfg.latent_channels):
            raise ConfigError(f"model.channels={model_config.channels} does not fit the autoencoder {autoencoder_path}, "
                              f"whose latents have {cfg.latent_channels} channels; leave model.channels at 0")
        if getattr(model_config, "image_size", 0) not in (0, latent_size):
            raise ConfigError(f"model.image_size={model_config.image_size} does not fit the autoencoder "
                              f"{autoencoder_path}: {size}-pixel images make {latent_size}x{latent_size} latents "
                              f"({cfg.downsampling}x); leave model.image_size at 0")
        fields = {k: v for k, v in dataclasses.asdict(data_config).items() if k != "kind"}
        identity = autoencoder_identity(autoencoder_path)
        digest = hashlib.sha1(json.dumps([fields, identity, flip], sort_keys=True).encode()).hexdigest()[:16]
        folder = cache_folder("latents", f"{data_name(data_config)}-{digest}")
        self.count = count
        rows = count * (2 if flip else 1)
        shape = (cfg.latent_channels, latent_size, width // cfg.downsampling)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        net = autoencoder.to(device)

        @torch.no_grad()
        def encode(start: int, stop: int) -> torch.Tensor:
            ids = torch.arange(start, stop)
            images = pixels[ids % count].float() / 127.5 - 1
            mirrored = ids >= count
            images[mirrored] = images[mirrored].flip(-1)
            return net.encode(images.to(device))[0].cpu()

        self.table = cached_latents(folder, rows, shape, encode, {"data": fields, "autoencoder": identity,
                                                                  "flip": flip}, progress=progress)
        self.autoencoder = autoencoder.cpu()
        self.scale, self.shift = autoencoder.scale, cfg.shift_factor
        self.shape = self.table.shape
        log.info("latents: %d of %s (scale %.4f) from %s, cached in %s", rows, shape, self.scale, autoencoder_path,
                 folder)

    def rows(self, ids: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, L, h, w) of source images `ids` (mirrored where `mirrored`)."""
        rows = (ids + mirrored.long() * self.count).numpy()
        return (torch.from_numpy(np.ascontiguousarray(self.table[rows])) - self.shift) * self.scale

    def save(self, folder: Path) -> dict:
        """Keep the autoencoder beside a checkpoint; what labels.json records of the latents."""
        from ..diffusion.latents import save_autoencoder_copy

        save_autoencoder_copy(self.autoencoder, folder)
        return {"image_size": int(self.shape[2]), "channels": int(self.shape[1]), "autoencoder": self.path,
                "scale": self.scale}


def load_labels(folder: str | Path) -> list[str]:
    """The class names a checkpoint was trained with, in label order ([] for an unconditional model)."""
    path = Path(folder) / LABELS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; is {folder} a checkpoint of an image model?")
    return [str(name) for name in json.loads(path.read_text())["classes"]]


@register("data", "images", ImageDataConfig)
def build_image_data(config: ImageDataConfig, run=None) -> ImageData:
    return ImageData(config, run.model if run is not None else None,
                     progress=run.train.progress if run is not None else True)
