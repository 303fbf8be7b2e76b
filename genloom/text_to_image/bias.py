"""A planted attribute bias in builtin:scenes, and what a text-to-image model makes of it (`genloom eval --task
bias`).

The data side: `data.bias_object = "circle"`, `data.bias_colour = "red"`, `data.bias_rate = 0.8` draws every
circle red 80% of the time (the other colours share the rest evenly; every other object keeps its even
colours), and `data.colour_unsaid = 0.5` leaves the colour out of half of the objects' captions ("a large
circle at the top on a white background"). A model then learns what an unsaid colour means from those
captions. `data.identities` keeps the scenes to a few objects (e.g. the three shapes) so a small model
learns them in minutes. The mitigation, `data.bias_mitigation = "balanced_captions"`, keeps the images (80%
red circles) but leaves a circle's colour unsaid in inverse proportion to how common its colour is, so that
among the captions that say no colour every colour is equally common: the words "a circle" no longer carry
the skew.

The model side: for prompts that name an object but no colour, `num_samples` images per object are
generated and each image's object colour is read by a closed-form pixel measure (`object_colours`: a
chroma-weighted vote of the pixels' hues, exact on rendered single-object scenes of every object, size, place
and background, which the tests check); genloom's scene classifier (`eval.py`) is not needed for one attribute
that the pixels give away. The report sets the model's colour distribution beside the
training data's -- over the training images, and over the training captions that leave the colour unsaid --
with amplification = model rate / data rate for the planted colour.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..core.errors import GenloomError
from ..core.figures import pyplot, save_figure
from .scenes import (
    BACKGROUNDS,
    IDENTITIES,
    OBJECT_COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    SceneObject,
    caption_scene,
    random_scenes,
)

__all__ = ["planted_scenes", "planted_rates", "unsaid_probability", "object_colours", "colour_distribution",
           "unsaid_prompts", "ColourBiasResult", "evaluate_colour_bias", "MITIGATIONS"]

MITIGATIONS = ("none", "balanced_captions")
COLOURS = tuple(OBJECT_COLOURS)
NO_OBJECT = "none"          # the pixel measure found no object-coloured pixels


def plants(config) -> bool:
    """Whether a builtin:scenes config asks for the planted-bias generator (otherwise the plain scenes, unchanged)."""
    return bool(config.identities or config.bias_object or config.colour_unsaid)


def planted_rates(config, identity: str) -> dict[str, float]:
    """The colour distribution the generator draws `identity` from."""
    if identity != config.bias_object:
        return {c: 1 / len(COLOURS) for c in COLOURS}
    rest = (1 - config.bias_rate) / (len(COLOURS) - 1)
    return {c: config.bias_rate if c == config.bias_colour else rest for c in COLOURS}


def unsaid_probability(config, identity: str, colour: str) -> float:
    """How likely a caption is to leave this object's colour unsaid. Plain: `colour_unsaid` for every object.
    balanced_captions, for the biased object: in inverse proportion to the colour's rate (the rarest colour at
    `colour_unsaid`), so the captions that say no colour show each of its colours equally often."""
    if config.bias_mitigation != "balanced_captions" or identity != config.bias_object:
        return config.colour_unsaid
    rates = planted_rates(config, identity)
    return config.colour_unsaid * min(rates.values()) / rates[colour]


def planted_scenes(config) -> tuple[list[Scene], list[list[str]], list[list[tuple[bool, ...]]]]:
    """The scenes, their caption variants, and per variant which objects' colour the caption leaves unsaid.
    Deterministic in `config.seed`; nothing is rendered."""
    base = random_scenes(config.scenes_count, config.seed, config.two_object_fraction,
                         holdout=False if config.holdout else None)       # as builtin:scenes draws them
    identities = tuple(config.identities) or IDENTITIES
    rng = np.random.default_rng([config.seed, 27])
    scenes = []
    for scene in base:
        objects = []
        for o in scene.objects:
            identity = identities[rng.integers(len(identities))] if config.identities else o.identity
            colour = o.colour
            if identity == config.bias_object:
                rates = planted_rates(config, identity)
                colour = COLOURS[rng.choice(len(COLOURS), p=[rates[c] for c in COLOURS])]
            objects.append(replace(o, identity=identity, colour=colour))
        scenes.append(replace(scene, objects=tuple(objects)))
    captions, unsaid = [], []
    for i, scene in enumerate(scenes):
        texts, flags = [], []
        for v in range(config.caption_variants):
            drop = np.random.default_rng([config.seed, i, v, 27])
            gone = tuple(bool(drop.random() < unsaid_probability(config, o.identity, o.colour)) for o in scene.objects)
            said = replace(scene, objects=tuple(replace(o, colour=None) if g else o
                                                for o, g in zip(scene.objects, gone)))
            texts.append(caption_scene(said, np.random.default_rng([config.seed, i, v])))
            flags.append(gone)
        captions.append(texts)
        unsaid.append(flags)
    return scenes, captions, unsaid


def colour_distribution(colours: Sequence[str | None]) -> dict[str, float]:
    """Shares of each object colour (and of "none") among readings."""
    n = max(len(colours), 1)
    out = {c: sum(x == c for x in colours) / n for c in COLOURS}
    out[NO_OBJECT] = sum(x is None or x == NO_OBJECT for x in colours) / n
    return out


def training_distributions(config, identity: str) -> dict[str, dict[str, float]]:
    """`identity`'s colours in the training split: over its images ("images") and over the caption variants that
    leave its colour unsaid ("unsaid captions"), as training sees them (every variant equally often)."""
    from ..train.data import split_examples

    scenes, _, unsaid = planted_scenes(config)
    train = split_examples(len(scenes), config.val_fraction, config.seed)["train"].tolist()
    images, quiet = [], []
    for i in train:
        for k, o in enumerate(scenes[i].objects):
            if o.identity != identity:
                continue
            images.append(o.colour)
            quiet += [o.colour for flags in unsaid[i] if flags[k]]
    if not images:
        raise GenloomError(f"--task bias: the training split shows no {identity}")
    return {"images": colour_distribution(images), "unsaid captions": colour_distribution(quiet),
            "counts": {"images": len(images), "unsaid captions": len(quiet)}}


# ----------------------------------------------------------------------------------------------
# Reading the colour back
# ----------------------------------------------------------------------------------------------

def _hue_chroma(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hue (degrees) and chroma (max - min channel) of (..., 3) RGB values."""
    r, g, b = np.moveaxis(rgb.astype(np.float64), -1, 0)
    high, low = rgb.max(-1).astype(np.float64), rgb.min(-1).astype(np.float64)
    chroma = high - low
    safe = np.where(chroma > 0, chroma, 1)
    hue = np.where(high == r, ((g - b) / safe) % 6, np.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4))
    return hue * 60, chroma


_HUES = _hue_chroma(np.array([OBJECT_COLOURS[c] for c in COLOURS]))[0]          # (6,)


def object_colours(images: torch.Tensor | np.ndarray, min_chroma: float = 48, min_pixels: int = 4
                   ) -> list[str | None]:
    """The object colour of each single-object image ((N, 3, H, W) in [-1, 1], or (N, H, W, 3) uint8).

    The backgrounds are grey (white, black, grey): an edge pixel is a blend a*colour + (1-a)*grey, and such a
    blend keeps the colour's hue exactly (hue does not change when a constant is added to all three channels
    or they are scaled together). So every pixel with chroma (max - min channel) of at least `min_chroma` votes,
    weighted by its chroma, for the object colour of nearest hue; None when fewer than `min_pixels` pixels vote
    (no object drawn)."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise GenloomError(f"the colour measure needs RGB images (N, 3, H, W), got {tuple(images.shape)}")
        pixels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).cpu().numpy()
    else:
        pixels = np.asarray(images, dtype=np.float64)
    hue, chroma = _hue_chroma(pixels.reshape(len(pixels), -1, 3))                   # (N, H*W)
    distance = np.abs((hue[..., None] - _HUES + 180) % 360 - 180)                   # (N, H*W, 6)
    nearest = distance.argmin(-1)
    voting = chroma >= min_chroma
    out = []
    for k in range(len(pixels)):
        if voting[k].sum() < min_pixels:
            out.append(None)
            continue
        weights = np.bincount(nearest[k][voting[k]], chroma[k][voting[k]], len(COLOURS))
        out.append(COLOURS[int(weights.argmax())])
    return out


# ----------------------------------------------------------------------------------------------
# The evaluation
# ----------------------------------------------------------------------------------------------

def unsaid_prompts(identity: str, count: int, seed: int) -> list[str]:
    """`count` single-object captions of `identity` in training's templates that say no colour (size, place and
    background drawn at random)."""
    rng = np.random.default_rng([seed, 2727, IDENTITIES.index(identity)])
    prompts = []
    for _ in range(count):
        obj = SceneObject(identity, None, list(SIZES)[rng.integers(len(SIZES))],
                          list(POSITIONS)[rng.integers(len(POSITIONS))])
        prompts.append(caption_scene(Scene((obj,), list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]), rng))
    return prompts


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"     # None: the training data never shows that colour


@dataclass
class ColourBiasResult:
    """Per object and guidance scale: the colours of images from prompts that leave the colour unsaid, beside the
    training data's colours of that object."""

    task: str
    figures: dict                       # headline: planted colour rates and amplification
    rows: list[dict]                    # per (object, guidance): model / data distributions
    samples: dict = field(default_factory=dict, repr=False)     # object -> (k, 3, H, W) images for the plot
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        s = self.settings
        lines = [f"task: {self.task} (text-to-image: colour of images for prompts that leave it unsaid; read by the "
                 f"closed-form pixel measure, exact on rendered scenes; {s['num_samples']} images per object)"]
        if s.get("bias_object"):
            lines.append(f"planted: {s['bias_object']} drawn {s['bias_colour']} at {s['bias_rate']:.0%}; "
                         f"captions leave a colour unsaid at {s['colour_unsaid']:.0%} (mitigation: {s['mitigation']})")
        lines += [f"| object | guidance | {s['colour']} in images made | in training images | in training captions "
                  "without colour | amplification (made / images) | vs parity (1/6) | no object read |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            c = s["colour"]
            lines.append(f"| {r['object']} | {r['guidance']:g} | {r['model'][c]:.1%} | {r['data_images'][c]:.1%} | "
                         f"{r['data_unsaid'][c]:.1%} | {_ratio(r['amplification'])} | {r['vs_parity']:.2f} | "
                         f"{r['model'][NO_OBJECT]:.1%} |")
        lines.append(f"({self.seconds:.0f} s)")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"task": self.task, **self.figures, "rows": self.rows, "settings": self.settings,
                "seconds": self.seconds}

    def plot(self, path) -> Path | None:
        """A grid of samples per object (rows) beside a bar chart of colour shares: made vs training data."""
        plt = pyplot()
        if plt is None:
            return None
        objects = list(self.samples)
        guidance = self.rows[0]["guidance"]
        fig, axes = plt.subplots(len(objects), 2, figsize=(12, 2.6 * len(objects)), squeeze=False,
                                 gridspec_kw={"width_ratios": [1.2, 1]})
        names = list(COLOURS) + [NO_OBJECT]
        for row, identity in zip(axes, objects):
            images = self.samples[identity]
            grid = ((images.clamp(-1, 1) + 1) * 127.5).byte().permute(0, 2, 3, 1).numpy()
            k, h, w, _ = grid.shape
            cols = min(k, 8)
            lines = -(-k // cols)
            canvas = np.full((lines * (h + 2), cols * (w + 2), 3), 255, np.uint8)
            for j, image in enumerate(grid):
                y, x = divmod(j, cols)
                canvas[y * (h + 2):y * (h + 2) + h, x * (w + 2):x * (w + 2) + w] = image
            row[0].imshow(canvas, interpolation="nearest")
            row[0].set_axis_off()
            row[0].set_title(f"\"a {identity} ...\" (no colour said), guidance {guidance:g}", fontsize=9)
            r = next(r for r in self.rows if r["object"] == identity and r["guidance"] == guidance)
            x = np.arange(len(names))
            bars = (("made", r["model"]), ("training images", r["data_images"]),
                    ("training captions without colour", r["data_unsaid"]))
            for offset, (label, dist) in zip((-0.27, 0, 0.27), bars):
                row[1].bar(x + offset, [dist[n] for n in names], 0.27, label=label)
            row[1].set_xticks(x, names, fontsize=8)
            row[1].set_ylim(0, 1)
            row[1].set_ylabel("share")
            row[1].set_title(f"{identity}: amplification {_ratio(r['amplification'])}", fontsize=9)
        axes[0][1].legend(fontsize=7)
        return save_figure(fig, path, f"genloom eval --task {self.task}")


def evaluate_colour_bias(generate: Callable[[list[str], float], torch.Tensor], config, *, num_samples: int = 200,
                         guidances: Sequence[float] = (3.0,), seed: int = 0, progress: bool = True
                         ) -> ColourBiasResult:
    """`generate(prompts, guidance) -> images (N, 3, H, W)` for `num_samples` colour-less prompts per object: the
    planted object and the data's other objects (up to two, as controls; without a planted bias, the shapes)."""
    start = time.perf_counter()
    identities = tuple(config.identities) or IDENTITIES
    if config.bias_object:
        measured = [config.bias_object] + [i for i in identities if i != config.bias_object][:2]
        colour = config.bias_colour
    else:
        measured = [s for s in SHAPES if s in identities] or list(identities[:3])
        colour = COLOURS[0]
    rows, samples, planted = [], {}, {}
    for identity in measured:
        data = training_distributions(config, identity)
        prompts = unsaid_prompts(identity, num_samples, seed)
        for guidance in guidances:
            images = generate(prompts, guidance)
            model = colour_distribution(object_colours(images))
            if guidance == guidances[0]:
                samples[identity] = images[:16].cpu()
            read = 1 - model[NO_OBJECT]
            rate = model[colour] / read if read else 0.0      # among the images with an object
            row = {"object": identity, "guidance": guidance, "n": num_samples, "model": model,
                   "model_rate_among_read": rate, "data_images": data["images"], "data_unsaid": data["unsaid captions"],
                   "data_counts": data["counts"],
                   "amplification": model[colour] / data["images"][colour] if data["images"][colour] else None,
                   "vs_parity": model[colour] * len(COLOURS)}
            rows.append(row)
            if identity == config.bias_object:
                planted.setdefault("by_guidance", []).append({"guidance": guidance, "model_rate": model[colour],
                                                              "amplification": row["amplification"],
                                                              "vs_parity": row["vs_parity"]})
    figures = {}
    if config.bias_object:
        first = next(r for r in rows if r["object"] == config.bias_object)
        figures = {"planted": {"object": config.bias_object, "colour": colour, "rate": config.bias_rate,
                               "data_rate_images": first["data_images"][colour],
                               "data_rate_unsaid_captions": first["data_unsaid"][colour],
                               "model_rate": first["model"][colour], "amplification": first["amplification"],
                               "vs_parity": first["vs_parity"], **planted}}
    settings = {"num_samples": num_samples, "guidances": list(guidances), "seed": seed, "colour": colour,
                "bias_object": config.bias_object, "bias_colour": config.bias_colour, "bias_rate": config.bias_rate,
                "colour_unsaid": config.colour_unsaid, "mitigation": config.bias_mitigation,
                "measure": "nearest-palette pixel vote (closed form; exact on rendered single-object scenes)"}
    return ColourBiasResult("bias", figures, rows, samples, settings, time.perf_counter() - start)
