"""Adversarial training: a discriminator learns to tell real images from generated ones, and the
generator learns to fool it (Goodfellow et al. 2014). Two phases per step of the one training loop,
each with its own optimizer: "discriminator" then "generator".

Stabilisers, each a switch in the recipe: hinge or non-saturating loss; a lazy R1 penalty on the
discriminator's gradient at real images (Mescheder et al. 2018; lazy as in Karras et al. 2020);
differentiable augmentation of everything the discriminator sees, so it cannot memorise a small data
set (DiffAugment, Zhao et al. 2020); a separate learning rate for the discriminator (two time-scale
update rule, Heusel et al. 2017); spectral normalisation (a model switch) and a generator EMA
(`train.ema_decay`). At every evaluation a mode-collapse watch asks genloom's feature classifier which
classes the generator's samples belong to and warns when classes go missing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..core.config import require, validate
from ..core.registry import register
from ..train.objective import unwrap_model
from ..train.parallel import keep_gathered

__all__ = ["GANObjectiveConfig", "GANObjective", "diff_augment", "AUGMENTATIONS", "class_coverage", "class_diversity",
           "discriminator_loss", "generator_loss"]

log = logging.getLogger(__name__)

AUGMENTATIONS = ("color", "translation", "cutout")


@dataclass(frozen=True)
class GANObjectiveConfig:
    kind: Literal["gan"] = "gan"
    loss: Literal["hinge", "nonsaturating"] = "hinge"   # hinge (Lim & Ye 2017) or non-saturating logistic
    r1_gamma: float = 0.0                  # R1 penalty weight (gamma / 2 * |grad D(real)|^2); 0 = off
    r1_interval: int = 16                  # lazy R1: apply it every this many steps, scaled up to match
    augment: tuple[str, ...] = ()          # DiffAugment policies: color, translation, cutout
    discriminator_lr_scale: float = 1.0    # discriminator LR = train.lr x this (two time-scale update rule)
    samples_per_class: int = 4             # images per class in the grid written at each evaluation
    coverage_samples: int = 20             # per class (or x10 unconditional): samples the collapse watch classifies
    coverage_threshold: float = 0.25       # a class is covered when at least this share of its expected samples is
    diversity_threshold: float = 0.5       # warn when a class's samples vary less than this fraction of its real images

    def __post_init__(self) -> None:
        validate(self, "objective")
        require(self.r1_gamma >= 0, "objective.r1_gamma", "must be 0 (off) or positive, e.g. 0.1")
        require(self.r1_interval >= 1, "objective.r1_interval", "must be at least 1")
        unknown = [a for a in self.augment if a not in AUGMENTATIONS]
        require(not unknown, "objective.augment", f"{unknown} not among {', '.join(AUGMENTATIONS)}")
        require(self.discriminator_lr_scale > 0, "objective.discriminator_lr_scale", "must be positive")
        require(self.samples_per_class >= 1, "objective.samples_per_class", "must be at least 1")
        require(self.coverage_samples >= 0, "objective.coverage_samples", "must be 0 (off) or more")
        require(0 < self.coverage_threshold <= 1, "objective.coverage_threshold", "must be in (0, 1]")
        require(self.diversity_threshold >= 0, "objective.diversity_threshold", "must be 0 (off) or positive")


# -- the two losses -------------------------------------------------------------------------------

def discriminator_loss(kind: str, real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """The discriminator's loss on logits of real and fake images (or patches): hinge (Lim & Ye 2017) or the
    non-saturating logistic loss (Goodfellow et al. 2014)."""
    if kind == "hinge":
        return F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()
    return F.softplus(-real_scores).mean() + F.softplus(fake_scores).mean()


def generator_loss(kind: str, fake_scores: torch.Tensor) -> torch.Tensor:
    """The generator's loss on the discriminator's logits of its images, for the same two kinds."""
    return -fake_scores.mean() if kind == "hinge" else F.softplus(-fake_scores).mean()


# -- differentiable augmentation -----------------------------------------------------------------

def diff_augment(images: torch.Tensor, policies: Iterable[str]) -> torch.Tensor:
    """Random colour, translation and cutout that gradients flow through (images in [-1, 1]).

    Every image gets its own random draw from the global generator, so real and fake batches are
    augmented alike but independently.
    """
    x = images
    B = x.shape[0]
    for policy in policies:
        if policy == "color":
            shape = (B, 1, 1, 1)
            x = x + (torch.rand(shape, device=x.device, dtype=x.dtype) - 0.5)                    # brightness
            mean = x.mean(dim=1, keepdim=True)
            x = (x - mean) * (torch.rand(shape, device=x.device, dtype=x.dtype) * 2) + mean       # saturation
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * (torch.rand(shape, device=x.device, dtype=x.dtype) + 0.5) + mean     # contrast
        elif policy == "translation":
            H, W = x.shape[-2:]
            shift_h, shift_w = max(1, H // 8), max(1, W // 8)
            dy = torch.randint(-shift_h, shift_h + 1, (B, 1, 1), device=x.device)
            dx = torch.randint(-shift_w, shift_w + 1, (B, 1, 1), device=x.device)
            rows = (torch.arange(H, device=x.device)[None, :, None] - dy).expand(B, H, W)
            cols = (torch.arange(W, device=x.device)[None, None, :] - dx).expand(B, H, W)
            inside = ((rows >= 0) & (rows < H) & (cols >= 0) & (cols < W)).unsqueeze(1).to(x.dtype)
            index = (rows.clamp(0, H - 1) * W + cols.clamp(0, W - 1)).view(B, 1, H * W).expand(-1, x.shape[1], -1)
            background = -torch.ones_like(x)          # what enters from outside: the black background
            moved = x.flatten(2).gather(2, index).view_as(x)
            x = moved * inside + background * (1 - inside)
        elif policy == "cutout":
            H, W = x.shape[-2:]
            ch, cw = max(1, H // 2), max(1, W // 2)
            top = torch.randint(0, H - ch + 1, (B, 1, 1), device=x.device)
            left = torch.randint(0, W - cw + 1, (B, 1, 1), device=x.device)
            rows = torch.arange(H, device=x.device)[None, :, None]
            cols = torch.arange(W, device=x.device)[None, None, :]
            hole = (rows >= top) & (rows < top + ch) & (cols >= left) & (cols < left + cw)
            x = x * (~hole).unsqueeze(1).to(x.dtype)
        else:
            raise ValueError(f"unknown augmentation {policy!r}; expected one of {', '.join(AUGMENTATIONS)}")
    return x


# -- the collapse watch --------------------------------------------------------------------------

def class_coverage(predicted: torch.Tensor, num_classes: int, requested: torch.Tensor | None,
                   threshold: float) -> tuple[list[float], list[int]]:
    """Per class, the share of its expected samples the classifier assigns to it, and the classes
    below `threshold` (missing). Conditional (requested labels): expected = the samples asked for it;
    unconditional: expected = an equal share of all samples."""
    shares = []
    for c in range(num_classes):
        if requested is not None:
            asked = requested == c
            shares.append(float((predicted[asked] == c).float().mean()) if asked.any() else 0.0)
        else:
            shares.append(float((predicted == c).float().mean() * num_classes))
    missing = [c for c, share in enumerate(shares) if share < threshold]
    return shares, missing


def class_diversity(features: torch.Tensor, classes: torch.Tensor, num_classes: int) -> list[float | None]:
    """Per class, the mean distance between two different samples' features (None below 2 samples).
    A generator that collapses within a class keeps its classes but loses this spread."""
    spread: list[float | None] = []
    for c in range(num_classes):
        group = features[classes == c].double()
        n = group.shape[0]
        spread.append(float(torch.cdist(group, group).sum() / (n * (n - 1))) if n >= 2 else None)
    return spread


class GANObjective:
    phases = ("discriminator", "generator")

    def __init__(self, config: GANObjectiveConfig):
        self.config = config
        self.step = 0
        self.lr_scales = {"discriminator": config.discriminator_lr_scale, "generator": 1.0}
        self._classifier = None
        self._real_spread: list[float | None] | None = None

    def begin_step(self, step: int) -> None:
        """Called by the training loop before each step (decides when the lazy R1 penalty applies)."""
        self.step = step

    def phase_parameters(self, phase: str, model: nn.Module) -> Iterable[nn.Parameter]:
        gan = unwrap_model(model)
        return (gan.discriminator if phase == "discriminator" else gan.generator).parameters()

    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        return diff_augment(images, self.config.augment) if self.config.augment else images

    def _d_loss(self, real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
        return discriminator_loss(self.config.loss, real_scores, fake_scores)

    def _g_loss(self, fake_scores: torch.Tensor) -> torch.Tensor:
        return generator_loss(self.config.loss, fake_scores)

    def loss(self, phase: str, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        images, labels = batch
        gan = unwrap_model(model)
        labels = labels if gan.config.num_classes else None         # fakes are asked for the batch's classes
        z = torch.randn(images.shape[0], gan.config.latent_dim, device=images.device)
        gan.discriminator.requires_grad_(phase == "discriminator")
        if phase == "generator":
            fake = model("generate", z, labels)
            return self._g_loss(model("discriminate", self._augment(fake), labels))
        with torch.no_grad():
            fake = model("generate", z, labels)
        r1 = self.config.r1_gamma > 0 and self.step % self.config.r1_interval == 0
        real = images.detach().requires_grad_(True) if r1 else images
        # Real and fake batches are judged in separate passes so that no statistic mixes them.
        real_scores = model("discriminate", self._augment(real), labels).float()
        fake_scores = model("discriminate", self._augment(fake), labels).float()
        loss = self._d_loss(real_scores, fake_scores)
        if r1:
            with keep_gathered(model):     # (a sharded discriminator's weights serve the loss's backward pass too)
                gradient, = torch.autograd.grad(real_scores.sum(), real, create_graph=True)
            penalty = gradient.float().pow(2).sum(dim=(1, 2, 3)).mean()
            loss = loss + self.config.r1_gamma / 2 * penalty * self.config.r1_interval
        return loss

    @torch.no_grad()
    def eval_loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The discriminator's loss on held-out real images against fakes from fixed seeds. It rising while
        the training loss falls means the discriminator is memorising the training images."""
        images, labels = batch
        gan = unwrap_model(model)
        labels = labels if gan.config.num_classes else None
        z = gan.latents(images.shape[0], seed=0, device=images.device)
        fake = gan.generator(z, labels)
        return self._d_loss(gan.discriminator(images, labels).float(), gan.discriminator(fake, labels).float())

    def write_samples(self, model: nn.Module, data, folder: Path, step: int, length: int, prompt: str) -> str:
        """A grid (samples_per_class rows x one column per class), and the collapse watch."""
        from ..media.image import save_image_grid

        if not length:
            return ""
        gan = unwrap_model(model)
        cfg = gan.config
        per_class = self.config.samples_per_class
        labels = [c for _ in range(per_class) for c in range(cfg.num_classes)] if cfg.num_classes else None
        count = len(labels) if labels else 64
        images = generate_gan_images(gan, labels, count, seed=0)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step_{step:07d}.png"
        save_image_grid(images, path, nrow=cfg.num_classes or 8, scale=max(1, 64 // cfg.image_size))
        text = f"sample grid: {path}"
        if self.config.coverage_samples:
            text += "; " + self._watch_collapse(gan, data, folder, step)
        return text

    def _watch_collapse(self, gan: nn.Module, data, folder: Path, step: int) -> str:
        """The data module supplies the reference: `training_images()` and the `feature_classifier(reference)`
        its content type scores images with (the images package's cached digits/glyphs classifier)."""
        classes = len(data.classes)
        if classes < 2:
            return "class coverage: not measured (the data has no classes)"
        if self._classifier is None:
            real, real_labels = data.training_images()
            self._classifier = data.feature_classifier((real, real_labels), progress=False)
            with torch.no_grad():
                real_features = torch.cat([self._classifier.features(chunk).cpu() for chunk in real.split(512)])
            self._real_spread = class_diversity(real_features, real_labels, classes)
        n = self.config.coverage_samples
        if gan.config.num_classes:
            requested = torch.arange(classes).repeat(n)
            images = generate_gan_images(gan, requested.tolist(), len(requested), seed=10_000)
        else:
            requested = None
            images = generate_gan_images(gan, None, n * classes, seed=10_000)
        classifier = self._classifier
        with torch.no_grad():
            predicted = torch.cat([classifier(chunk).argmax(-1).cpu() for chunk in images.split(512)])
            features = torch.cat([classifier.features(chunk).cpu() for chunk in images.split(512)])
        shares, missing = class_coverage(predicted, classes, requested, self.config.coverage_threshold)
        spread = class_diversity(features, requested if requested is not None else predicted, classes)
        diversity = {data.classes[c]: round(mine / theirs, 3) for c, (mine, theirs) in
                     enumerate(zip(spread, self._real_spread)) if mine is not None and theirs}
        alike = [name for name, ratio in diversity.items() if ratio < self.config.diversity_threshold]
        covered = classes - len(missing)
        record = {"step": step, "covered": covered, "classes": classes, "missing": [data.classes[c] for c in missing],
                  "shares": {data.classes[c]: round(s, 3) for c, s in enumerate(shares)},
                  "diversity": diversity, "alike": alike}
        with open(folder / "coverage.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if missing:
            log.warning("mode-collapse watch at step %d: %d of %d classes are (nearly) missing from the samples: %s",
                        step, len(missing), classes, ", ".join(record["missing"][:12]))
        if alike:
            log.warning("mode-collapse watch at step %d: the samples of %d class(es) vary less than %g of the real "
                        "images' spread (near copies): %s", step, len(alike), self.config.diversity_threshold,
                        ", ".join(alike[:12]))
        return f"class coverage {covered}/{classes}, {len(alike)} class(es) with near-copies"


@torch.no_grad()
def generate_gan_images(gan: nn.Module, labels: list[int] | None, num_samples: int, seed: int,
                        batch_size: int = 512, truncation: float = 1.0) -> torch.Tensor:
    """`num_samples` images (N, C, H, W) in [-1, 1]; sample i is made from the latent of seed + i
    (times `truncation`: below 1 trades variety for typical images)."""
    was_training = gan.training
    gan.eval()
    device = next(gan.parameters()).device
    out = []
    for start in range(0, num_samples, batch_size):
        stop = min(num_samples, start + batch_size)
        z = gan.latents(stop - start, seed + start, device) * truncation
        batch_labels = (torch.tensor(labels[start:stop], dtype=torch.long, device=device)
                        if labels is not None and gan.config.num_classes else None)
        out.append(gan.generator(z, batch_labels).float().clamp(-1, 1).cpu())
    gan.train(was_training)
    return torch.cat(out)


@register("objective", "gan", GANObjectiveConfig)
def build_gan_objective(config: GANObjectiveConfig, run=None) -> GANObjective:
    return GANObjective(config)

