"""Is the new concept there? Scoring image personalisation on builtin:stars.

A small CNN, trained once on rendered pictures (and cached), tells whether a 32x32 image shows a star
(the concept builtin:stars teaches under a new word) or not (any builtin:scenes picture). Images made
from prompts that use the new word ("a red zorp on the left on a white background", colours, sizes,
places and backgrounds drawn afresh) are recognised or not; the share recognised is the score. The
prompts without the word are scored by the GenEval-style scene evaluation, with and without the
adapter, to show what the adapter changed elsewhere.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.cache import cache_folder, cached_network
from ..core.fit import fit
from .scenes import caption_scene, concept_scenes, random_scenes, render_scenes

__all__ = ["ConceptClassifier", "concept_classifier", "ConceptEvalResult", "evaluate_concept", "concept_prompts"]

log = logging.getLogger(__name__)

CLASSIFIER_VERSION = 2        # bump when the pictures, the network or its training change
                              # (2: genloom.core.fit's schedule instead of OneCycleLR)


class ConceptClassifier(nn.Module):
    """32x32 image in [-1, 1] -> logit that it shows a star."""

    def __init__(self):
        super().__init__()
        def conv(cin, cout, stride):
            return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(8, cout), nn.SiLU()]
        self.net = nn.Sequential(*conv(3, 32, 1), *conv(32, 64, 2), *conv(64, 64, 2), nn.AdaptiveMaxPool2d(1),
                                 nn.Flatten(), nn.Linear(64, 1))
        self.holdout_accuracy: float | None = None

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)[:, 0]

    @torch.no_grad()
    def recognise(self, images: Tensor) -> Tensor:
        return torch.cat([self(images[i:i + 512]) > 0 for i in range(0, len(images), 512)])


def _examples(count: int, seed: int) -> tuple[Tensor, Tensor]:
    stars = concept_scenes(count // 2, seed)
    others = random_scenes(count - count // 2, seed + 1, 0.3, holdout=None)
    images = torch.from_numpy(render_scenes(stars + others)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return images, torch.cat([torch.ones(len(stars)), torch.zeros(len(others))])


def train_concept_classifier(count: int = 8000, steps: int = 800, batch_size: int = 128, seed: int = 4242,
                             progress: bool = True) -> ConceptClassifier:
    """Train on `count` rendered pictures, half stars; `holdout_accuracy` is on 2,000 further ones."""
    torch.manual_seed(seed)
    images, labels = _examples(count, seed)
    generator = torch.Generator().manual_seed(seed)

    def loss(model: ConceptClassifier) -> Tensor:
        pick = torch.randint(0, count, (batch_size,), generator=generator)
        batch = images[pick] + torch.randn(batch_size, *images.shape[1:], generator=generator) * \
            torch.rand(batch_size, 1, 1, 1, generator=generator) * 0.1
        return F.binary_cross_entropy_with_logits(model(batch), labels[pick])

    model = fit(ConceptClassifier(), loss, steps, lr=2e-3, weight_decay=1e-4, warmup_fraction=0.05,
                desc="training the concept classifier", progress=progress)
    test_images, test_labels = _examples(2000, seed + 10)
    model.holdout_accuracy = float((model.recognise(test_images) == test_labels.bool()).float().mean())
    return model


def concept_classifier(cache_dir: str | Path | None = None, progress: bool = True) -> ConceptClassifier:
    """The star detector, trained once (under a minute on 2 CPU cores) and cached under `<cache>/concept-classifier/`."""
    return cached_network(cache_folder("concept-classifier", cache_dir=cache_dir), "model",
                          {"version": CLASSIFIER_VERSION}, lambda saved: ConceptClassifier(),
                          lambda: train_concept_classifier(progress=progress), what="concept classifier")


def concept_prompts(word: str, count: int, seed: int = 20_000) -> list[str]:
    """Prompts that ask for the concept by its word, with attributes drawn afresh (not the training pictures')."""
    return [caption_scene(s, np.random.default_rng([seed, i]), concept={"star": word})
            for i, s in enumerate(concept_scenes(count, seed))]


@dataclass(frozen=True)
class ConceptEvalResult:
    word: str
    guidance: float
    count: int
    recognised: float                   # share of images from prompts with the word that show the concept
    without_word: float | None          # share recognised when the word is left out of the same prompts
    classifier_accuracy: float | None

    def summary(self) -> str:
        lines = [f"concept {self.word!r} recognised in {100 * self.recognised:.1f}% of {self.count} images "
                 f"(guidance {self.guidance:g}; detector {100 * (self.classifier_accuracy or 0):.1f}% on rendered pictures)"]
        if self.without_word is not None:
            lines.append(f"the same prompts with 'shape' instead of {self.word!r}: {100 * self.without_word:.1f}% "
                         "show the concept")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return dict(self.__dict__)


def evaluate_concept(generate: Callable[[list[str], float], Tensor], word: str, count: int, guidance: float,
                     progress: bool = True) -> ConceptEvalResult:
    classifier = concept_classifier(progress=progress)
    prompts = concept_prompts(word, count)
    recognised = float(classifier.recognise(generate(prompts, guidance)).float().mean())
    plain = [p.replace(word, "shape") for p in prompts]
    without = float(classifier.recognise(generate(plain, guidance)).float().mean())
    return ConceptEvalResult(word, guidance, count, recognised, without, classifier.holdout_accuracy)
