"""Short video clips for video diffusion: generated moving digits, or a folder of GIFs / frame folders.

`builtin:moving-digits`: one handwritten digit (scikit-learn's 8x8 digits, the built-in image set) moves
in a straight line across a dark square frame — left, right, up or down, one or two pixels a frame (as
fast as the frame allows without bouncing), starting at the edge it moves away from; clips long enough to
reach the other edge bounce off it. Each clip's label is (digit, direction)
and its caption says so: "the digit 3 moving right". The class of a clip is digit x 4 + direction, so
the class-conditional diffusion model is conditioned on both. A fixed seeded split keeps about 10% of the
clips (and different handwriting: the digit images are split first) for validation.

`builtin:moving-glyphs`: a coloured letter or digit (the glyphs of the image data) moving across a 32x32
frame in one of four directions while it turns and grows or shrinks, with a caption ("a red letter K
moving left, turning, growing"); the class is character x direction.

A folder: every .gif file (its frames) and every subfolder holding numbered .png/.jpg frames is a clip;
the clip's parent folder name is its class (a flat folder is unconditional). Clips are cut or rejected to
`frames` frames and resized to `size`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from ..core.config import require, validate
from ..core.errors import DataError
from ..core.registry import register
from ..media.video import FRAME_SUFFIXES, read_clip

__all__ = ["VideoDataConfig", "VideoData", "moving_digits", "moving_glyphs", "DIRECTIONS", "clip_caption", "read_clip",
           "parse_video_prompt"]

log = logging.getLogger(__name__)

DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}   # (row, column) steps
DIRECTION_NAMES = list(DIRECTIONS)
BUILTIN_CLIPS = ("builtin:moving-digits", "builtin:moving-glyphs")


def clip_caption(digit: int, direction: str) -> str:
    return f"the digit {digit} moving {direction}"


def parse_video_prompt(prompt: str, classes: list[str]) -> int:
    """The class a prompt names: 'the digit 3 moving right', '3 right', or a class name."""
    if prompt in classes:
        return classes.index(prompt)
    words = prompt.replace(",", " ").split()
    signs = [w.upper() for w in words if len(w) == 1 and w.isalnum() and w.lower() != "a"]
    directions = [w.lower() for w in words if w.lower() in DIRECTIONS]
    if len(signs) == 1 and len(directions) == 1 and f"{signs[0]} {directions[0]}" in classes:
        return classes.index(f"{signs[0]} {directions[0]}")
    raise DataError(f"prompt {prompt!r}: expected a digit (or letter) and a direction, e.g. 'the digit 3 moving "
                    f"right' (directions: {', '.join(DIRECTIONS)})" if classes and " " in classes[0] else
                    f"prompt {prompt!r}: expected one of the classes {', '.join(classes[:20])}")


def _digit_images() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("data.path=builtin:moving-digits needs scikit-learn: pip install scikit-learn") from None
    digits = load_digits()
    return np.round(digits.images * (255 / 16)).astype(np.uint8), digits.target.astype(np.int64)


def moving_digits(count: int, frames: int = 8, size: int = 16, seed: int = 0, sprites: np.ndarray | None = None,
                  sprite_labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """`count` clips (count, frames, size, size) uint8, their classes (digit x 4 + direction) and attributes
    ({digit, direction, speed, path: [(row, column) of the sprite's top-left corner per frame]})."""
    if sprites is None:
        sprites, sprite_labels = _digit_images()
    side = sprites.shape[1]
    if size < side + 2:
        raise DataError(f"data.size={size}: the frame must be at least {side + 2} pixels for an {side}x{side} digit")
    rng = np.random.default_rng(seed)
    room = size - side                                        # top-left corner positions 0..room
    clips = np.zeros((count, frames, size, size), dtype=np.uint8)
    classes = np.zeros(count, dtype=np.int64)
    attributes = []
    for i in range(count):
        k = int(rng.integers(len(sprites)))
        digit = int(sprite_labels[k])
        direction = DIRECTION_NAMES[int(rng.integers(4))]
        fastest = max(1, min(2, room // max(frames - 1, 1)))  # as fast as the frame allows without bouncing
        speed = int(rng.integers(1, fastest + 1))
        step = np.array(DIRECTIONS[direction]) * speed
        # start where the clip can run in its direction as long as possible before bouncing
        position = rng.integers(0, room + 1, size=2)
        axis = 0 if step[0] else 1
        position[axis] = 0 if step[axis] > 0 else room
        path = []
        for f in range(frames):
            path.append((int(position[0]), int(position[1])))
            r, c = position
            clips[i, f, r:r + side, c:c + side] = np.maximum(clips[i, f, r:r + side, c:c + side], sprites[k])
            nxt = position + step
            if not 0 <= nxt[axis] <= room:                    # bounce off the edge
                step = -step
                nxt = position + step
            position = nxt
        classes[i] = digit * 4 + DIRECTION_NAMES.index(direction)
        attributes.append({"digit": digit, "direction": direction, "speed": speed, "path": path,
                           "sprite": k})
    return clips, classes, attributes


def moving_glyphs(count: int, frames: int = 8, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """`count` clips (count, frames, size, size, 3) uint8 of a coloured letter or digit that moves (left, right,
    up or down), turns and grows or shrinks; classes = character x 4 + direction; attributes include a
    caption ("a red letter K moving left, turning, growing")."""
    from PIL import ImageDraw, ImageFont

    from ..images.data import GLYPH_CHARACTERS, GLYPH_COLOURS

    rng = np.random.default_rng(seed)
    k = 4                                                     # drawn at 4x, then averaged: smooth edges
    fonts: dict[int, ImageFont.FreeTypeFont] = {}
    clips = np.zeros((count, frames, size, size, 3), dtype=np.uint8)
    classes = np.zeros(count, dtype=np.int64)
    attributes = []
    for i in range(count):
        char = GLYPH_CHARACTERS[int(rng.integers(len(GLYPH_CHARACTERS)))]
        colour = list(GLYPH_COLOURS)[int(rng.integers(len(GLYPH_COLOURS)))]
        direction = DIRECTION_NAMES[int(rng.integers(4))]
        start_px, end_px = (int(v) for v in rng.integers(size * 3 // 8, size * 5 // 8 + 1, size=2))
        spin = int(rng.choice([-6, -3, 0, 3, 6]))             # degrees per frame
        travel = size / 2
        step = np.array(DIRECTIONS[direction], dtype=float) * travel / max(frames - 1, 1)
        centre = np.array([size / 2, size / 2]) - step * (frames - 1) / 2
        path = []
        for f in range(frames):
            px = round(start_px + (end_px - start_px) * f / max(frames - 1, 1))
            font = fonts.setdefault(px, ImageFont.load_default(size=px * k))
            canvas = Image.new("L", (size * k, size * k), 0)
            cy, cx = (centre + step * f) * k
            left, top, right, bottom = font.getbbox(char)
            ImageDraw.Draw(canvas).text((cx - (left + right) / 2, cy - (top + bottom) / 2), char, fill=255, font=font)
            mask = np.asarray(canvas.rotate(spin * f, resample=Image.BILINEAR, center=(cx, cy)).reduce(k))
            rgb = np.array(GLYPH_COLOURS[colour], dtype=np.uint16)
            clips[i, f] = ((mask[:, :, None].astype(np.uint16) * rgb + 127) // 255).astype(np.uint8)
            path.append((float(centre[0] + step[0] * f), float(centre[1] + step[1] * f)))
        kind = "digit" if char.isdigit() else "letter"
        change = "growing" if end_px > start_px else "shrinking" if end_px < start_px else "keeping its size"
        caption = f"a {colour} {kind} {char} moving {direction}, " + ("turning, " if spin else "") + change
        classes[i] = GLYPH_CHARACTERS.index(char) * 4 + DIRECTION_NAMES.index(direction)
        attributes.append({"char": char, "colour": colour, "direction": direction, "spin": spin,
                           "sizes": (start_px, end_px), "path": path, "caption": caption})
    return clips, classes, attributes




def _folder_clips(root: Path, frames: int, size: int, channels: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    entries = sorted(p for p in root.rglob("*") if (p.is_file() and p.suffix.lower() == ".gif") or (
        p.is_dir() and any(f.suffix.lower() in FRAME_SUFFIXES for f in p.iterdir())))
    if not entries:
        raise DataError(f"data.path: no clips under {root} (expected .gif files or folders of frames)")
    class_names = sorted({p.parent.relative_to(root).as_posix() for p in entries} - {"."})
    clips, labels = [], []
    for entry in entries:
        clips.append(read_clip(entry, frames, size, channels))
        parent = entry.parent.relative_to(root).as_posix()
        labels.append(class_names.index(parent) if parent in class_names else 0)
    return np.stack(clips), np.asarray(labels, dtype=np.int64), class_names


# -- the data component --------------------------------------------------------------------------------
@dataclass(frozen=True)
class VideoDataConfig:
    kind: Literal["video"] = "video"
    path: str = "builtin:moving-digits"   # builtin:moving-digits, builtin:moving-glyphs, or a folder of clips
    frames: int = 8                       # frames per clip
    size: int = 16                        # frame side in pixels
    channels: int = 1                     # 1 (gray) or 3
    count: int = 6000                     # clips builtin:moving-digits generates
    val_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        validate(self, "data")
        require(self.frames >= 2, "data.frames", "must be at least 2")
        require(self.size >= 4, "data.size", "must be at least 4 pixels")
        require(self.channels in (1, 3), "data.channels", "must be 1 (gray) or 3 (RGB)")
        require(0 < self.val_fraction < 1, "data.val_fraction", "must be between 0 and 1 (e.g. 0.1)")
        require(not self.path.startswith("builtin:") or self.path in BUILTIN_CLIPS, "data.path",
                f"unknown built-in clips {self.path!r}; available: {', '.join(BUILTIN_CLIPS)}")


class VideoData:
    """Clips in memory as uint8, served as (B, C, T, H, W) in [-1, 1] with their classes."""

    item_name = "clip"
    items_per_example = 1

    def __init__(self, config: VideoDataConfig):
        self.config = config
        self.classes: list[str] = []
        self.attributes: list[dict] | None = None
        self._clips = torch.empty(0, dtype=torch.uint8)      # (N, C, T, H, W)
        self._labels = torch.empty(0, dtype=torch.long)
        self._splits: dict[str, torch.Tensor] = {}

    def prepare(self) -> None:
        if self._splits:
            return
        cfg = self.config
        if cfg.path == "builtin:moving-digits":
            sprites, sprite_labels = _digit_images()
            # different handwriting for validation: split the digit images first, then make clips of each part
            order = np.random.default_rng(cfg.seed).permutation(len(sprites))
            held = order[:max(1, int(len(sprites) * cfg.val_fraction))]
            kept = order[len(held):]
            n_val = max(1, int(cfg.count * cfg.val_fraction))
            train = moving_digits(cfg.count - n_val, cfg.frames, cfg.size, cfg.seed, sprites[kept], sprite_labels[kept])
            val = moving_digits(n_val, cfg.frames, cfg.size, cfg.seed + 1, sprites[held], sprite_labels[held])
            clips = np.concatenate([train[0], val[0]])[:, :, :, :, None]
            if cfg.channels == 3:
                clips = clips.repeat(3, axis=-1)
            labels = np.concatenate([train[1], val[1]])
            self.attributes = train[2] + val[2]
            self.classes = [f"{d} {direction}" for d in range(10) for direction in DIRECTION_NAMES]
            ids = torch.arange(len(labels))
            self._splits = {"train": ids[:len(train[1])], "val": ids[len(train[1]):]}
        elif cfg.path == "builtin:moving-glyphs":
            from ..images.data import GLYPH_CHARACTERS

            clips, labels, self.attributes = moving_glyphs(cfg.count, cfg.frames, cfg.size, cfg.seed)
            if cfg.channels == 1:
                clips = clips.max(axis=-1, keepdims=True)
            self.classes = [f"{c} {direction}" for c in GLYPH_CHARACTERS for direction in DIRECTION_NAMES]
            order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(cfg.seed))
            n_val = max(1, int(len(labels) * cfg.val_fraction))
            self._splits = {"train": order[:-n_val], "val": order[-n_val:]}
        else:
            root = Path(cfg.path).expanduser()
            if not root.is_dir():
                raise DataError(f"data.path: {cfg.path} is not a folder (expected builtin:moving-digits or a "
                                "folder of .gif clips / frame folders)")
            clips, labels, self.classes = _folder_clips(root, cfg.frames, cfg.size, cfg.channels)
            if len(clips) < 2:
                raise DataError(f"data.path: {root} has {len(clips)} clip; training and validation need 2")
            order = torch.randperm(len(clips), generator=torch.Generator().manual_seed(cfg.seed))
            n_val = min(len(clips) - 1, max(1, round(len(clips) * cfg.val_fraction)))
            self._splits = {"train": order[:-n_val], "val": order[-n_val:]}
        self._clips = torch.from_numpy(np.ascontiguousarray(clips)).permute(0, 4, 1, 2, 3).contiguous()
        self._labels = torch.from_numpy(labels)
        log.info("%s: %d clips of %d frames %dx%d; %d for training", cfg.path, len(labels), cfg.frames, cfg.size,
                 cfg.size, len(self._splits["train"]))

    def num_examples(self, split: str) -> int:
        self.prepare()
        return len(self._splits[split])

    def model_settings(self) -> dict:
        self.prepare()
        _, channels, frames, height, _ = self._clips.shape
        factors = [len(self.classes) // len(DIRECTION_NAMES), len(DIRECTION_NAMES)] if self.config.path in BUILTIN_CLIPS else [0]
        return {"image_size": height, "channels": channels, "frames": frames, "num_classes": len(self.classes),
                "label_factors": tuple(factors)}

    def save_assets(self, folder: Path) -> None:
        import json

        settings = self.model_settings()
        (Path(folder) / "labels.json").write_text(json.dumps({"classes": self.classes, **settings,
                                                              "source": self.config.path}, indent=2))

    def sample_indices(self, generator: torch.Generator, n: int) -> torch.Tensor:
        return torch.randint(0, self.num_examples("train"), (n,), generator=generator)

    def val_indices(self, n: int) -> torch.Tensor:
        return torch.arange(n) % self.num_examples("val")

    def batch(self, indices: torch.Tensor, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """Clips (B, C, T, H, W) float32 in [-1, 1] and classes (B,)."""
        self.prepare()
        ids = self._splits[split][indices]
        return self._clips[ids].float() / 127.5 - 1, self._labels[ids]

    def clip(self, split: str, index: int) -> tuple[torch.Tensor, int]:
        clips, labels = self.batch(torch.tensor([index]), split)
        return clips[0], int(labels[0])


@register("data", "video", VideoDataConfig)
def build_video_data(config: VideoDataConfig, run=None) -> VideoData:
    return VideoData(config)
