"""GenEval-style scoring of text-to-image models on builtin:scenes, offline.

GenEval (Ghosh et al. 2023) asks an object detector whether each generated image shows what its prompt
asked for. Here the "detector" is a small CNN genloom trains once (and caches) on freshly rendered scenes
of every attribute combination: for the background, and for each of the five places (left, right, top,
bottom, centre), it says which object is there (or none), its colour and its size. An image is correct
only if every attribute its prompt names is right: the background, each object's identity at its place,
its colour and size where the prompt gives them, and no extra objects.

Four prompt sets: single objects, two objects, held-out (object, colour) pairs that training never showed,
and paraphrases (single objects described in wordings training never used). Rendered scenes scored the
same way give the ceiling (the classifier's own accuracy).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.cache import cache_folder, cached_network
from ..core.errors import GenloomError
from ..core.fit import fit
from .scenes import (
    BACKGROUNDS,
    IDENTITIES,
    OBJECT_COLOURS,
    POSITIONS,
    SIZES,
    Scene,
    caption_scene,
    parse_caption,
    random_scenes,
    render_scenes,
)

__all__ = ["SceneClassifier", "scene_classifier", "score_scenes", "prompt_sets", "SceneEvalResult",
           "ATTRIBUTES", "PROMPT_SETS"]

log = logging.getLogger(__name__)

CLASSIFIER_VERSION = 2        # bump when the scenes, the network or its training change
                              # (2: genloom.core.fit's schedule instead of OneCycleLR)
SLOTS = tuple(POSITIONS)
SLOT_OUTPUTS = len(IDENTITIES) + 1 + len(OBJECT_COLOURS) + len(SIZES)   # identity (or empty), colour, size
ATTRIBUTES = ("identity", "colour", "size", "position", "count", "background")
PROMPT_SETS = ("single", "two", "held-out", "paraphrase")


class SceneClassifier(nn.Module):
    """A CNN from a 32x32 scene to the background and, per place, the object there, its colour and size."""

    def __init__(self):
        super().__init__()
        def conv(cin, cout, stride):
            return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(8, cout), nn.SiLU()]
        self.features = nn.Sequential(*conv(3, 32, 1), *conv(32, 64, 2), *conv(64, 64, 1), *conv(64, 128, 2),
                                      *conv(128, 128, 1), nn.Flatten(), nn.Linear(128 * 8 * 8, 512), nn.SiLU())
        self.head = nn.Linear(512, len(BACKGROUNDS) + len(SLOTS) * SLOT_OUTPUTS)
        self.holdout_accuracy: float | None = None

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """images (B, 3, 32, 32) in [-1, 1] -> logits: background (B, 3), identity (B, 5, 40; 0 = empty),
        colour (B, 5, 6), size (B, 5, 2)."""
        out = self.head(self.features(images))
        nb, ni, nc = len(BACKGROUNDS), len(IDENTITIES) + 1, len(OBJECT_COLOURS)
        slots = out[:, nb:].view(-1, len(SLOTS), SLOT_OUTPUTS)
        return out[:, :nb], slots[..., :ni], slots[..., ni:ni + nc], slots[..., ni + nc:]

    @torch.no_grad()
    def predict(self, images: Tensor, batch_size: int = 512) -> dict[str, Tensor]:
        """Per image: background (B,), identity (B, 5) with 0 = empty, colour (B, 5), size (B, 5) indices."""
        parts = [[logits.argmax(-1) for logits in self(images[i:i + batch_size])]
                 for i in range(0, len(images), batch_size)]
        return {name: torch.cat([p[k] for p in parts]) for k, name in
                enumerate(("background", "identity", "colour", "size"))}


def _targets(scenes: list[Scene]) -> dict[str, Tensor]:
    n = len(scenes)
    identity = torch.zeros(n, len(SLOTS), dtype=torch.long)
    colour = torch.zeros(n, len(SLOTS), dtype=torch.long)
    size = torch.zeros(n, len(SLOTS), dtype=torch.long)
    for i, scene in enumerate(scenes):
        for o in scene.objects:
            slot = SLOTS.index(o.position)
            identity[i, slot] = IDENTITIES.index(o.identity) + 1
            colour[i, slot] = list(OBJECT_COLOURS).index(o.colour)
            size[i, slot] = list(SIZES).index(o.size)
    background = torch.tensor([list(BACKGROUNDS).index(s.background) for s in scenes])
    return {"background": background, "identity": identity, "colour": colour, "size": size}


def _pixels(scenes: list[Scene]) -> Tensor:
    return torch.from_numpy(render_scenes(scenes)).permute(0, 3, 1, 2).float() / 127.5 - 1


def train_scene_classifier(count: int = 30000, steps: int = 2000, batch_size: int = 128, lr: float = 2e-3,
                           seed: int = 777, progress: bool = True) -> SceneClassifier:
    """Train on `count` rendered scenes of every combination (none held out); `holdout_accuracy` is the share
    of 2,000 further scenes whose every attribute it gets right."""
    torch.manual_seed(seed)
    scenes = random_scenes(count, seed, 0.5, holdout=None)
    images, targets = _pixels(scenes), _targets(scenes)
    generator = torch.Generator().manual_seed(seed)

    def loss(model: SceneClassifier) -> Tensor:
        pick = torch.randint(0, count, (batch_size,), generator=generator)
        batch = images[pick]
        # A little noise of random strength: generated images are rarely as clean as rendered ones.
        batch = batch + torch.randn(batch.shape, generator=generator) * torch.rand(batch_size, 1, 1, 1,
                                                                                    generator=generator) * 0.1
        background, identity, colour, size = model(batch.contiguous(memory_format=torch.channels_last))
        occupied = targets["identity"][pick] > 0
        return (F.cross_entropy(background, targets["background"][pick])
                + F.cross_entropy(identity.flatten(0, 1), targets["identity"][pick].flatten())
                + F.cross_entropy(colour[occupied], targets["colour"][pick][occupied])
                + F.cross_entropy(size[occupied], targets["size"][pick][occupied]))

    model = fit(SceneClassifier().to(memory_format=torch.channels_last), loss, steps, lr=lr, weight_decay=1e-4,
                warmup_fraction=0.05, desc="training the scene classifier", progress=progress)
    test = random_scenes(2000, seed + 1, 0.5, holdout=None)
    model.holdout_accuracy = float(score_scenes(model, _pixels(test), test)["all"].float().mean())
    return model


def scene_classifier(cache_dir: str | Path | None = None, progress: bool = True) -> SceneClassifier:
    """The scene classifier, trained once (about two minutes on 2 CPU cores) and cached under
    `<cache>/scene-classifier/` (its held-out accuracy: every attribute right on rendered scenes)."""
    return cached_network(cache_folder("scene-classifier", cache_dir=cache_dir), "model",
                          {"version": CLASSIFIER_VERSION}, lambda saved: SceneClassifier(),
                          lambda: train_scene_classifier(progress=progress), what="scene classifier")


def score_scenes(classifier: SceneClassifier, images: Tensor, prompts: list[Scene]) -> dict[str, Tensor]:
    """Per image, whether each attribute its prompt asks for is right (bool (N,) per name of ATTRIBUTES,
    and "all"). An object whose prompt gives no place may be at any place that holds its identity."""
    if len(images) != len(prompts):
        raise GenloomError(f"{len(images)} images but {len(prompts)} prompts to score them against")
    if images.shape[1:] != (3, 32, 32):
        raise GenloomError(f"the scene classifier needs 3x32x32 images, got {tuple(images.shape[1:])}")
    predicted = classifier.predict(images.float().contiguous(memory_format=torch.channels_last))
    colours, sizes, backgrounds = list(OBJECT_COLOURS), list(SIZES), list(BACKGROUNDS)
    result = {name: torch.ones(len(prompts), dtype=torch.bool) for name in ATTRIBUTES}
    for i, prompt in enumerate(prompts):
        identity = predicted["identity"][i]
        if prompt.background is not None and backgrounds[predicted["background"][i]] != prompt.background:
            result["background"][i] = False
        if int((identity > 0).sum()) != len(prompt.objects):
            result["count"][i] = False
        for o in prompt.objects:
            wanted = IDENTITIES.index(o.identity) + 1
            if o.position is not None:
                slot = SLOTS.index(o.position)
            else:
                matches = (identity == wanted).nonzero().flatten().tolist()
                slot = matches[0] if matches else None
            occupied = slot is not None and int(identity[slot]) > 0
            checks = {"position": occupied, "identity": occupied and int(identity[slot]) == wanted,
                      "colour": o.colour is None or (occupied and colours[predicted["colour"][i, slot]] == o.colour),
                      "size": o.size is None or (occupied and sizes[predicted["size"][i, slot]] == o.size)}
            for name, ok in checks.items():
                if not ok:
                    result[name][i] = False
    result["all"] = torch.stack([result[name] for name in ATTRIBUTES]).all(0)
    return result


def prompt_sets(count: int, seed: int = 10_000) -> dict[str, tuple[list[Scene], list[str]]]:
    """`count` scenes and captions per set of PROMPT_SETS, drawn with seeds training never uses."""
    rng = np.random.default_rng(seed)
    single = random_scenes(count, seed + 1, 0.0, holdout=False)
    two = random_scenes(count, seed + 2, 1.0, holdout=False)
    held = random_scenes(count, seed + 3, 0.0, holdout=True)
    para = random_scenes(count, seed + 4, 0.0, holdout=False)
    return {"single": (single, [caption_scene(s, rng) for s in single]),
            "two": (two, [caption_scene(s, rng) for s in two]),
            "held-out": (held, [caption_scene(s, rng) for s in held]),
            "paraphrase": (para, [caption_scene(s, rng, paraphrase=True) for s in para])}


@dataclass
class SceneEvalResult:
    """Shares of fully correct images (and per attribute) per prompt set and guidance scale."""

    rows: list[dict] = field(default_factory=list)     # {"set", "guidance", "all", <attribute>: share, "n"}
    ceiling: dict[str, float] = field(default_factory=dict)   # the same scores for rendered scenes, per set
    classifier_accuracy: float | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"GenEval-style scores on builtin:scenes (share of images with every prompted attribute right; "
                 f"scene classifier {100 * (self.classifier_accuracy or 0):.1f}% on rendered scenes)",
                 f"{'set':<11}{'guidance':>9}{'correct':>9}" + "".join(f"{a:>11}" for a in ATTRIBUTES) + f"{'n':>6}"]
        for row in self.rows:
            lines.append(f"{row['set']:<11}{row['guidance']:>9g}{100 * row['all']:>8.1f}%"
                         + "".join(f"{100 * row[a]:>10.1f}%" for a in ATTRIBUTES) + f"{row['n']:>6}")
        if self.ceiling:
            lines.append("rendered scenes (ceiling): " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in self.ceiling.items()))
        lines.append(f"({self.seconds:.0f} s)")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"rows": self.rows, "ceiling": self.ceiling, "classifier_accuracy": self.classifier_accuracy,
                "seconds": self.seconds}


def evaluate_scenes(generate: Callable[[list[str], float], Tensor], count: int, guidances: list[float],
                    sets: tuple[str, ...] = PROMPT_SETS, seed: int = 10_000,
                    classifier: SceneClassifier | None = None, progress: bool = True) -> SceneEvalResult:
    """Score `generate(prompts, guidance) -> images (N, 3, 32, 32)` on `count` prompts per set and scale."""
    unknown = [s for s in sets if s not in PROMPT_SETS]
    if unknown:
        raise GenloomError(f"unknown prompt set(s) {', '.join(unknown)}; valid sets: {', '.join(PROMPT_SETS)}")
    start = time.perf_counter()
    classifier = classifier or scene_classifier(progress=progress)
    result = SceneEvalResult(classifier_accuracy=classifier.holdout_accuracy)
    chosen = {name: value for name, value in prompt_sets(count, seed).items() if name in sets}
    for name, (scenes, captions) in chosen.items():
        asked = [parse_caption(c) for c in captions]       # what the words ask for (a caption may omit the size)
        result.ceiling[name] = float(score_scenes(classifier, _pixels(scenes), asked)["all"].float().mean())
        for guidance in guidances:
            scores = score_scenes(classifier, generate(captions, guidance), asked)
            row = {"set": name, "guidance": guidance, "n": count, "all": float(scores["all"].float().mean())}
            row.update({a: float(scores[a].float().mean()) for a in ATTRIBUTES})
            result.rows.append(row)
            log.info("%s prompts, guidance %g: %.1f%% fully correct", name, guidance, 100 * row["all"])
    result.seconds = time.perf_counter() - start
    return result
