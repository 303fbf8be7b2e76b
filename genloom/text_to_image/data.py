"""Images with captions, for text-to-image models: sources -> pixels + token ids -> batches.

Sources: `builtin:scenes` (glyphs and shapes with compositional captions, see `scenes`), `builtin:digits`
(the handwritten digits, captioned "a handwritten seven"), a folder where each image has a caption in a
text file of the same name (`cat.png` + `cat.txt`), or a JSONL file of {"image": PATH, "caption": TEXT}
lines (PATH relative to the file).

Captions become token ids with the tokenizer of the model's text encoder: `words` (a vocabulary of the
training captions' words, for the encoder trained with the denoiser) or `minilm` (the WordPiece
tokenizer of the pretrained all-MiniLM-L6-v2 sentence encoder). Every example has `caption_variants`
captions (different templates and synonyms for the built-in scenes); index i of a split is example
i % N with caption i // N, so a batch depends on nothing but its indices and a resumed run replays it.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from ..core.config import require, validate
from ..core.errors import CheckpointError, DataError
from ..core.registry import register
from ..images.data import IMAGE_EXTENSIONS, LABELS_FILE, LatentTable, image_files
from ..media.image import PICTURE_FORMATS, conform_array, conform_image
from ..train.data import split_examples
from . import bias as planted_bias
from .scenes import (
    IDENTITIES,
    OBJECT_COLOURS,
    Scene,
    caption_scene,
    concept_scenes,
    digit_caption,
    random_scenes,
    render_scenes,
)

__all__ = ["CaptionedImageDataConfig", "CaptionedImageData", "CaptionTokenizer", "load_caption_tokenizer", "CAPTION_TOKENIZER_FILE", "finetune_assets"]

log = logging.getLogger(__name__)

BUILTIN = ("builtin:scenes", "builtin:digits", "builtin:stars")
CAPTION_TOKENIZER_FILE = "caption_tokenizer.json"
PAD, EMPTY, UNK = 0, 1, 2       # token ids shared by both tokenizers' layouts (see CaptionTokenizer)


@dataclass(frozen=True)
class CaptionedImageDataConfig:
    kind: Literal["captioned_images"] = "captioned_images"
    path: str = "builtin:scenes"      # builtin:scenes, builtin:digits, a folder (x.png + x.txt) or a .jsonl file
    image_size: int = 0               # 0 = the source's size; N = resize (and centre-crop) to N x N
    channels: int = 0                 # 0 = the source's; 1 or 3
    val_fraction: float = 0.05        # share of the images kept for validation
    scenes_count: int = 20000         # how many scenes builtin:scenes draws
    two_object_fraction: float = 0.5  # share of builtin:scenes with two objects (the rest have one)
    holdout: bool = True              # keep the held-out (object, colour) pairs out of builtin:scenes
    caption_variants: int = 8         # captions per image (templates and synonyms) cycled through in training
    max_caption_tokens: int = 32      # captions are cut to this many tokens
    seed: int = 0                     # seeds the scenes, their captions and the train/validation split
    concept_word: str = "zorp"        # builtin:stars: the new word that names the star shape in its captions
    prior_scenes: int = 0             # builtin:stars: ordinary builtin:scenes mixed in, so the model keeps what it knew
    identities: tuple[str, ...] = ()  # builtin:scenes: only these objects, e.g. ["circle", "square"] (() = all 39)
    colour_unsaid: float = 0.0        # builtin:scenes: share of caption objects whose colour is left unsaid
    bias_object: str = ""             # builtin:scenes: plant a colour bias on this object (e.g. "circle"; see bias.py)
    bias_colour: str = "red"          # ... it is drawn in this colour
    bias_rate: float = 0.8            # ... at this rate (the other colours share the rest evenly)
    bias_mitigation: Literal["none", "balanced_captions"] = "none"   # balanced_captions: unsaid colours even

    def __post_init__(self) -> None:
        validate(self, "data")
        require(bool(self.path), "data.path", f"must name one of {', '.join(BUILTIN)}, a folder or a .jsonl file")
        require(not self.path.startswith("builtin:") or self.path in BUILTIN, "data.path",
                f"unknown built-in source {self.path!r}; valid choices: {', '.join(BUILTIN)}")
        require(self.image_size == 0 or self.image_size >= 2, "data.image_size", "must be 0 or at least 2")
        require(self.channels in (0, 1, 3), "data.channels", f"{self.channels!r}: valid choices are 0, 1, 3")
        require(0 < self.val_fraction < 1, "data.val_fraction", "must be between 0 and 1 (e.g. 0.05)")
        require(self.scenes_count >= 2, "data.scenes_count", "must be at least 2")
        require(0 <= self.two_object_fraction <= 1, "data.two_object_fraction", "must be in [0, 1]")
        require(self.caption_variants >= 1, "data.caption_variants", "must be at least 1")
        require(self.max_caption_tokens >= 2, "data.max_caption_tokens", "must be at least 2")
        planted = bool(self.identities or self.bias_object or self.colour_unsaid)
        require(not planted or self.path == "builtin:scenes", "data.path",
                "data.identities, data.colour_unsaid and data.bias_object apply to builtin:scenes only")
        require(not (self.identities or self.bias_object) or not self.holdout, "data.holdout",
                "must be false with data.identities or data.bias_object (they decide the objects and colours)")
        unknown = [i for i in self.identities if i not in IDENTITIES]
        require(not unknown, "data.identities", f"unknown object {unknown[0] if unknown else ''!r}; valid: "
                "A-Z, 0-9, circle, square, triangle")
        require(not self.bias_object or self.bias_object in (self.identities or IDENTITIES), "data.bias_object",
                f"{self.bias_object!r} is not one of the scenes' objects ({', '.join(self.identities or IDENTITIES)})")
        require(self.bias_colour in OBJECT_COLOURS, "data.bias_colour",
                f"{self.bias_colour!r}; valid choices: {', '.join(OBJECT_COLOURS)}")
        require(0 <= self.bias_rate <= 1, "data.bias_rate", "must be in [0, 1] (e.g. 0.8)")
        require(0 <= self.colour_unsaid <= 1, "data.colour_unsaid", "must be in [0, 1] (e.g. 0.5)")
        require(self.bias_mitigation == "none" or (self.bias_object and self.colour_unsaid > 0), "data.bias_mitigation",
                "balanced_captions needs data.bias_object and data.colour_unsaid > 0")


# ----------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z]+|\d|[^\sA-Za-z\d]")


def caption_words(text: str) -> list[str]:
    """Words of a caption: lower case, except single letters ("letter A" stays "A"); punctuation is a word."""
    return [w if len(w) == 1 else w.lower() for w in _WORD.findall(text) if w not in ",.;:!?\"'"]


class CaptionTokenizer:
    """Caption -> (max_length,) token ids, padded with PAD.

    kind "words": ids 0 <pad>, 1 <empty> (the caption-less input that conditioning dropout trains),
    2 <unk>, then the vocabulary. kind "minilm": the WordPiece tokenizer of all-MiniLM-L6-v2 ([CLS] ...
    [SEP]); its <empty> is "[CLS] [SEP]", which the encoder maps to its own "no text" vector.
    """

    def __init__(self, kind: Literal["words", "minilm"], max_length: int, vocab: list[str] | None = None):
        self.kind, self.max_length = kind, max_length
        if kind == "words":
            self.vocab = vocab or ["<pad>", "<empty>", "<unk>"]
            self._ids = {w: i for i, w in enumerate(self.vocab)}
            self._wordpiece = None
        else:
            from tokenizers import Tokenizer

            from ..nn.text_encoders import minilm_dir

            self._wordpiece = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
            self._wordpiece.no_truncation()
            self._wordpiece.no_padding()
            self.vocab = []

    @property
    def vocab_size(self) -> int:
        return len(self.vocab) if self.kind == "words" else self._wordpiece.get_vocab_size()

    @classmethod
    def from_captions(cls, captions, max_length: int) -> "CaptionTokenizer":
        words = sorted({w for c in captions for w in caption_words(c)})
        return cls("words", max_length, ["<pad>", "<empty>", "<unk>"] + words)

    def with_words(self, words) -> "CaptionTokenizer":
        """A copy that also knows `words` (new ids after the old ones), e.g. a word naming a new concept."""
        if self.kind != "words":
            raise DataError("new words apply to the jointly trained caption encoder; MiniLM reads any word already")
        added = []
        for word in words:
            pieces = caption_words(word)
            if len(pieces) != 1:
                raise DataError(f"finetune.new_words: {word!r} is not one word (letters only, e.g. \"zorp\")")
            if pieces[0] in self._ids or pieces[0] in added:
                raise DataError(f"finetune.new_words: {word!r} is already a word the model knows; choose a new one")
            added.append(pieces[0])
        return CaptionTokenizer("words", self.max_length, self.vocab + added)

    def ids(self, text: str) -> list[int]:
        """Every token id of `text` (not cut to max_length)."""
        if self.kind == "words":
            return [self._ids.get(w, UNK) for w in caption_words(text)] or [EMPTY]
        return self._wordpiece.encode(text).ids

    def empty(self) -> torch.Tensor:
        """The (max_length,) ids of "no caption" (classifier-free guidance's unconditional input)."""
        return self.encode("", warn=False)

    def encode(self, text: str, warn: bool = True) -> torch.Tensor:
        """The (max_length,) ids of `text`, cut (with a warning) when longer, padded with PAD."""
        return self.pad(self.ids(text), warn)

    def pad(self, ids: list[int], warn: bool = True) -> torch.Tensor:
        if len(ids) > self.max_length:
            if warn:
                log.warning("the prompt has %d tokens, more than the text encoder's %d; it was cut to %r",
                            len(ids), self.max_length, self.decode(ids[:self.max_length]))
            ids = ids[:self.max_length - 1] + ids[-1:] if self.kind == "minilm" else ids[:self.max_length]
        out = torch.full((self.max_length,), PAD, dtype=torch.long)
        out[:len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, ids) -> str:
        if self.kind == "words":
            return " ".join(self.vocab[i] for i in ids if i > EMPTY)
        return self._wordpiece.decode(list(ids))

    def save(self, path: Path) -> None:
        payload = {"kind": self.kind, "max_length": self.max_length}
        if self.kind == "words":
            payload["vocab"] = self.vocab
        Path(path).write_text(json.dumps(payload, indent=1))

    @classmethod
    def load(cls, path: Path) -> "CaptionTokenizer":
        try:
            payload = json.loads(Path(path).read_text())
            return cls(payload["kind"], int(payload["max_length"]), payload.get("vocab"))
        except (OSError, ValueError, KeyError) as error:
            raise CheckpointError(f"{path}: not a genloom caption tokenizer ({error})") from None


def load_caption_tokenizer(folder: str | Path) -> CaptionTokenizer:
    path = Path(folder) / CAPTION_TOKENIZER_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; is {folder} a checkpoint of a text-to-image model?")
    return CaptionTokenizer.load(path)


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------

@dataclass
class CaptionedSource:
    pixels: np.ndarray                       # (N, H, W, C) uint8
    captions: list[list[str]]                # per image, its caption variants
    description: str
    scenes: list[Scene] | None = None        # builtin:scenes: each image's attributes


def _scenes(config: CaptionedImageDataConfig) -> CaptionedSource:
    if planted_bias.plants(config):
        scenes, captions, _ = planted_bias.planted_scenes(config)
        pixels = conform_array(render_scenes(scenes), config.image_size, config.channels or 3)
        what = f"{config.path} ({', '.join(config.identities) or 'all objects'}"
        what += f"; {config.bias_object} {config.bias_colour} at {config.bias_rate:.0%}" if config.bias_object else ""
        return CaptionedSource(pixels, captions, what + f"; colour unsaid in {config.colour_unsaid:.0%} of captions; "
                               f"mitigation {config.bias_mitigation})", scenes)
    scenes = random_scenes(config.scenes_count, config.seed, config.two_object_fraction,
                           holdout=False if config.holdout else None)
    pixels = conform_array(render_scenes(scenes), config.image_size, config.channels or 3)
    captions = [[caption_scene(s, np.random.default_rng([config.seed, i, v])) for v in range(config.caption_variants)]
                for i, s in enumerate(scenes)]
    return CaptionedSource(pixels, captions, config.path, scenes)


def _stars(config: CaptionedImageDataConfig) -> CaptionedSource:
    """`scenes_count` pictures of a star (a shape builtin:scenes never shows), named by `concept_word`,
    plus `prior_scenes` ordinary scenes."""
    concept = {"star": config.concept_word}
    stars = concept_scenes(config.scenes_count, config.seed)
    prior = random_scenes(config.prior_scenes, config.seed + 1, config.two_object_fraction,
                          holdout=False if config.holdout else None) if config.prior_scenes else []
    # The few concept pictures are repeated (each copy with other caption wordings) to make up about half
    # of the examples, as DreamBooth balances its instance and prior-preservation images.
    repeats = max(1, len(prior) // len(stars))
    scenes = stars * repeats + prior
    pixels = conform_array(render_scenes(scenes), config.image_size, config.channels or 3)
    captions = [[caption_scene(s, np.random.default_rng([config.seed, i, v]), concept=concept)
                 for v in range(config.caption_variants)] for i, s in enumerate(scenes)]
    return CaptionedSource(pixels, captions, f"{config.path} ({len(stars)} stars called {config.concept_word!r}, "
                           f"repeated {repeats}x, and {len(prior)} ordinary scenes)", scenes)


def _digits(config: CaptionedImageDataConfig) -> CaptionedSource:
    from ..images.data import ImageDataConfig, load_image_source

    source = load_image_source(ImageDataConfig(path="builtin:digits", image_size=config.image_size,
                                               channels=config.channels))
    captions = [[digit_caption(int(d), np.random.default_rng([config.seed, i, v]))
                 for v in range(config.caption_variants)] for i, d in enumerate(source.labels)]
    return CaptionedSource(source.pixels, captions, config.path)


def _read_images(paths: list[Path], config: CaptionedImageDataConfig, where: str) -> np.ndarray:
    errors = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
    pictures = []
    for path in paths:
        try:
            with Image.open(path, formats=PICTURE_FORMATS) as image:
                pictures.append(image.copy())
        except errors as error:
            raise DataError(f"data.path: cannot read the image {path} ({error})") from None
    channels = config.channels or (1 if all(p.mode in ("1", "L", "LA", "I", "I;16", "F") for p in pictures) else 3)
    size = config.image_size
    if not size:
        sizes = {p.size for p in pictures}
        if len(sizes) > 1 or next(iter(sizes))[0] != next(iter(sizes))[1]:
            raise DataError(f"data.path: the images in {where} are not all square and of one size "
                            f"({', '.join(f'{w}x{h}' for w, h in sorted(sizes)[:4])}); set data.image_size=N")
        size = next(iter(sizes))[0]
    return np.stack([conform_image(p, size, channels) for p in pictures])


def _folder(config: CaptionedImageDataConfig, root: Path) -> CaptionedSource:
    files = image_files(root)
    if not files:
        raise DataError(f"data.path: no images in {root} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    missing = [f for f in files if not f.with_suffix(".txt").is_file()]
    if missing:
        raise DataError(f"data.path: {len(missing)} image(s) in {root} have no caption file, e.g. {missing[0]} "
                        f"needs {missing[0].with_suffix('.txt')} (the caption as plain text)")
    captions = [[f.with_suffix(".txt").read_text(encoding="utf-8", errors="replace").strip()] for f in files]
    empty = [f for f, c in zip(files, captions) if not c[0]]
    if empty:
        raise DataError(f"data.path: the caption file {empty[0].with_suffix('.txt')} is empty")
    return CaptionedSource(_read_images(files, config, str(root)), captions, f"folder {root}")


def _jsonl(config: CaptionedImageDataConfig, path: Path) -> CaptionedSource:
    files, captions = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise DataError(f"data.path: {path} line {number} is not JSON ({error})") from None
        if not isinstance(record, dict) or not isinstance(record.get("image"), str):
            raise DataError(f"data.path: {path} line {number} needs an \"image\" key with the image's path")
        caption = record.get("caption", record.get("text"))
        if not isinstance(caption, str) or not caption.strip():
            raise DataError(f"data.path: {path} line {number} needs a non-empty \"caption\" (or \"text\") string")
        image = (path.parent / record["image"]).expanduser()
        if not image.is_file():
            raise DataError(f"data.path: {path} line {number}: the image {image} does not exist")
        files.append(image)
        captions.append([caption.strip()])
    if not files:
        raise DataError(f"data.path: {path} holds no records (one JSON object per line)")
    return CaptionedSource(_read_images(files, config, str(path)), captions, f"file {path}")


def load_captioned_source(config: CaptionedImageDataConfig) -> CaptionedSource:
    if config.path == "builtin:scenes":
        return _scenes(config)
    if config.path == "builtin:digits":
        return _digits(config)
    if config.path == "builtin:stars":
        return _stars(config)
    path = Path(config.path).expanduser()
    if not path.exists():
        raise DataError(f"data.path: {path} does not exist (expected {', '.join(BUILTIN)}, a folder of images "
                        "with .txt captions, or a .jsonl file)")
    if path.is_dir():
        return _folder(config, path)
    if path.suffix.lower() != ".jsonl":
        raise DataError(f"data.path: {path} is a file but not .jsonl; give a folder of images with .txt "
                        "captions or a JSONL file of {\"image\": ..., \"caption\": ...} lines")
    return _jsonl(config, path)


# ----------------------------------------------------------------------------------------------
# The data module the training loop uses
# ----------------------------------------------------------------------------------------------

class CaptionedImageData:
    """Images (B, C, H, W) in [-1, 1] and caption token ids (B, L), split once by a seeded shuffle."""

    item_name = "img"
    items_per_example = 1

    def __init__(self, config: CaptionedImageDataConfig, tokenizer_kind: Literal["words", "minilm"] = "words",
                 tokenizer: CaptionTokenizer | None = None, model_config=None):
        self.config = config
        self.model_config = model_config               # a latent run's names its autoencoder
        self.latents: LatentTable | None = None        # latent runs: the images' cached latents
        self.tokenizer_kind = tokenizer.kind if tokenizer is not None else tokenizer_kind
        self.given_tokenizer = tokenizer       # a base model's tokenizer (fine-tuning), else one is built
        self.tokenizer: CaptionTokenizer | None = None
        self.captions: list[list[str]] = []
        self.scenes: list[Scene] | None = None
        self._pixels = torch.empty(0, dtype=torch.uint8)   # (N, C, H, W)
        self._tokens = torch.empty(0, dtype=torch.long)    # (N, variants, L)
        self._splits: dict[str, torch.Tensor] = {}

    def prepare(self) -> None:
        if self._splits:
            return
        cfg = self.config
        source = load_captioned_source(cfg)
        count = len(source.pixels)
        if count < 2:
            raise DataError(f"data.path: {source.description} has {count} image; training needs at least 2")
        self.captions, self.scenes = source.captions, source.scenes
        self._splits = split_examples(count, cfg.val_fraction, cfg.seed)
        num_val = len(self._splits["val"])
        if self.given_tokenizer is not None:
            self.tokenizer = self.given_tokenizer
        elif self.tokenizer_kind == "words":
            train_captions = (c for i in self._splits["train"].tolist() for c in self.captions[i])
            self.tokenizer = CaptionTokenizer.from_captions(train_captions, cfg.max_caption_tokens)
        else:
            self.tokenizer = CaptionTokenizer("minilm", cfg.max_caption_tokens)
        variants = max(len(c) for c in self.captions)
        tokens = torch.full((count, variants, cfg.max_caption_tokens), PAD, dtype=torch.long)
        cut = 0
        for i, captions in enumerate(self.captions):
            for v in range(variants):
                ids = self.tokenizer.ids(captions[v % len(captions)])
                cut += len(ids) > cfg.max_caption_tokens
                tokens[i, v] = self.tokenizer.pad(ids, warn=False)
        if cut:
            log.warning("%d caption(s) are longer than data.max_caption_tokens=%d tokens and were cut",
                        cut, cfg.max_caption_tokens)
        self._tokens = tokens
        self._pixels = torch.from_numpy(source.pixels).permute(0, 3, 1, 2).contiguous()
        log.info("%s: %d captioned images of %dx%dx%d (%d caption variants, %d-token vocabulary); "
                 "%d for training, %d for validation", source.description, count, *self._pixels.shape[1:],
                 variants, self.tokenizer.vocab_size, count - num_val, num_val)
        if getattr(self.model_config, "autoencoder", ""):
            self.latents = LatentTable(self._pixels, cfg, self.model_config.autoencoder, self.model_config, False)

    # -- what the trainer and the model need ----------------------------------------------------
    def num_examples(self, split: str) -> int:
        self.prepare()
        return len(self._splits[split])

    def model_settings(self) -> dict:
        self.prepare()
        _, channels, height, _ = self._pixels.shape if self.latents is None else self.latents.shape
        return {"image_size": height, "channels": channels, "num_classes": 0,
                "text_vocab_size": self.tokenizer.vocab_size, "text_length": self.config.max_caption_tokens}

    def save_assets(self, folder: Path) -> None:
        self.prepare()
        payload = {"classes": [], "captions": True, "image_size": self._pixels.shape[2],
                   "channels": self._pixels.shape[1], "source": self.config.path}
        if self.latents is not None:
            payload["latent"] = self.latents.save(Path(folder))
        (Path(folder) / LABELS_FILE).write_text(json.dumps(payload, indent=2))
        self.tokenizer.save(Path(folder) / CAPTION_TOKENIZER_FILE)

    def sample_indices(self, generator: torch.Generator, n: int) -> torch.Tensor:
        return torch.randint(0, self.num_examples("train") * self._tokens.shape[1], (n,), generator=generator)

    def val_indices(self, n: int) -> torch.Tensor:
        return torch.arange(n) % self.num_examples("val")

    def example_ids(self, indices: torch.Tensor, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """Which source images `indices` of `split` name, and which caption variant of each."""
        self.prepare()
        ids = self._splits[split]
        return ids[indices % len(ids)], (indices // len(ids)) % self._tokens.shape[1]

    def batch(self, indices: torch.Tensor, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, C, H, W) float32 in [-1, 1] and caption token ids (B, L) int64."""
        ids, variants = self.example_ids(indices, split)
        if self.latents is not None:
            return self.latents.rows(ids, torch.zeros_like(ids, dtype=torch.bool)), self._tokens[ids, variants]
        return self._pixels[ids].float() / 127.5 - 1, self._tokens[ids, variants]

    def sample_prompts(self, n: int) -> list[str]:
        """`n` captions of validation images (for the sample grids written during training)."""
        ids = self._splits["val"][torch.arange(n) % self.num_examples("val")]
        return [self.captions[i][0] for i in ids.tolist()]


@register("data", "captioned_images", CaptionedImageDataConfig)
def build_captioned_data(config: CaptionedImageDataConfig, run=None,
                         tokenizer: CaptionTokenizer | None = None) -> CaptionedImageData:
    encoder = getattr(getattr(run, "model", None), "text_encoder", "joint")
    return CaptionedImageData(config, "minilm" if encoder == "minilm" else "words", tokenizer,
                              getattr(run, "model", None))


def finetune_assets(base: Path, data_config, finetune=None) -> dict:
    """New captions are read with the base model's caption tokenizer, grown by the words a run teaches
    (finetune.new_words)."""
    tokenizer = load_caption_tokenizer(base)
    if finetune is not None and finetune.new_words:
        tokenizer = tokenizer.with_words(finetune.new_words)
    return {"tokenizer": tokenizer}
