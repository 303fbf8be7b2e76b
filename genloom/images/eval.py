"""Image-quality metrics without downloads: Fréchet distance, KID, precision/recall and class accuracy.

The standard FID needs Inception weights from the internet. genloom instead trains a small CNN
classifier on the reference (real training) images and computes the same formulas on its penultimate
features. The numbers are named after the data ("FID-digits") because they are comparable only with
each other, never with a paper's FID; `genloom.images.inception` gives the standard one where a user
supplies the weights. Images are float tensors (N, C, H, W) in [-1, 1]; labels are int64 (N,).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.cache import cache_folder, cached_network
from ..core.errors import CheckpointError, GenloomError
from ..core.fit import fit
from ..metrics import frechet_distance, kernel_inception_distance, precision_recall
from .inception import InceptionFeatures

__all__ = [
    "FeatureClassifierConfig", "FeatureClassifier", "train_feature_classifier", "feature_classifier",
    "frechet_distance", "kernel_inception_distance", "precision_recall", "class_accuracy",
    "ImageEvalResult", "evaluate_images", "AutoencoderEvalResult", "evaluate_reconstructions", "psnr",
]

log = logging.getLogger(__name__)

CLASSIFIER_VERSION = 2          # bump when the architecture or training changes, so caches retrain
                                # (2: the one schedule of genloom.core.fit, cosine after the warm-up)


# -- the feature network -----------------------------------------------------------------------

@dataclass(frozen=True)
class FeatureClassifierConfig:
    channels: int                               # 1 (grayscale) or 3 (RGB)
    image_size: int                             # square images of this side, at least 4
    num_classes: int
    widths: tuple[int, ...] = (32, 64, 128)     # channels of each conv stage; the last is the feature size

    @classmethod
    def for_images(cls, channels: int, image_size: int, num_classes: int) -> FeatureClassifierConfig:
        """One stage per 2x pooling down to 4x4, at least three, widths doubling up to 128:
        8x8 and 16x16 -> (32, 64, 128); 32x32 -> (16, 32, 64, 128), so every size costs about the same."""
        num_stages = max(3, math.ceil(math.log2(max(image_size, 4) / 4)) + 1)
        return cls(channels, image_size, num_classes, tuple(128 >> (num_stages - 1 - i) for i in range(num_stages)))

    def describe(self) -> str:
        return (f"CNN: conv3x3-BN-ReLU stages of widths {list(self.widths)}, 2x max pool after a stage while the "
                f"map is larger than 4x4, global average pool -> {self.widths[-1]}-d features -> linear "
                f"{self.num_classes} classes; input ({self.channels}, {self.image_size}, {self.image_size})")

    def __post_init__(self) -> None:
        if self.channels not in (1, 3) or self.image_size < 4 or self.num_classes < 2 or not self.widths:
            raise GenloomError(f"feature classifier needs 1 or 3 channels, images of at least 4x4 and at least "
                               f"2 classes, got channels={self.channels}, image_size={self.image_size}, "
                               f"num_classes={self.num_classes}")


class FeatureClassifier(nn.Module):
    """Per stage conv3x3-BN-ReLU, then a 2x max pool while the map is larger than 4x4; global average
    pool -> `widths[-1]`-d features -> linear classes. 8x8 input pools once, 32x32 three times."""

    def __init__(self, config: FeatureClassifierConfig) -> None:
        super().__init__()
        self.config = config
        self.holdout_accuracy: float | None = None   # set by training or read from the cache
        stages, size, in_channels = [], config.image_size, config.channels
        for width in config.widths:
            layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                                       nn.BatchNorm2d(width), nn.ReLU()]
            if size > 4:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            stages.append(nn.Sequential(*layers))
            in_channels = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(in_channels, config.num_classes)

    @property
    def feature_dim(self) -> int:
        return self.config.widths[-1]

    def _check(self, images: Tensor) -> None:
        c, s = self.config.channels, self.config.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (c, s, s):
            raise GenloomError(f"the feature classifier was trained on images of shape (N, {c}, {s}, {s}); "
                               f"got {tuple(images.shape)}")

    def embed(self, images: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, D) penultimate features, with gradients (used in training)."""
        self._check(images)
        return self.stages(images).mean(dim=(2, 3))

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.embed(images))                # (N, num_classes) logits

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, D) features for the metrics (no gradients)."""
        return self.embed(images)


def _random_shift(images: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Move each image by up to `max_shift` pixels in x and y, repeating the edge pixels."""
    n, c, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4, mode="replicate")
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n, 1), generator=generator).to(images.device)
    arange = partial(torch.arange, device=images.device)
    rows = (dy + arange(h))[:, None, :, None]                     # (N, 1, H, 1)
    cols = (dx + arange(w))[:, None, None, :]                     # (N, 1, 1, W)
    return padded[arange(n)[:, None, None, None], arange(c)[None, :, None, None], rows, cols]


def _check_images(images: Tensor, labels: Tensor | None = None, name: str = "images") -> None:
    if images.ndim != 4 or images.shape[1] not in (1, 3) or not images.is_floating_point():
        raise GenloomError(f"{name} must be a float tensor (N, 1 or 3, H, W), got {images.dtype} {tuple(images.shape)}")
    if labels is not None and (labels.shape != (images.shape[0],) or labels.dtype != torch.int64):
        raise GenloomError(f"labels for {name} must be int64 of shape ({images.shape[0]},), "
                           f"got {labels.dtype} {tuple(labels.shape)}")


def _check_label_range(labels: Tensor, num_classes: int) -> None:
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise GenloomError(f"labels must lie in [0, {num_classes}), got values from {low} to {high}")


@torch.no_grad()
def _batched(function: Callable[[Tensor], Tensor], images: Tensor, device: torch.device,
             batch_size: int = 256) -> Tensor:
    return torch.cat([function(images[i:i + batch_size].to(device)).cpu()
                      for i in range(0, images.shape[0], batch_size)])


def train_feature_classifier(images: Tensor, labels: Tensor, num_classes: int, steps: int = 400,
                             batch_size: int = 64, lr: float = 3e-3, holdout_fraction: float = 0.1,
                             seed: int = 0, progress: bool = True) -> FeatureClassifier:
    """Train the feature network on the reference images; `holdout_accuracy` is measured on a
    held-out `holdout_fraction` that training never sees. Runs on the images' device."""
    _check_images(images, labels)
    if images.shape[2] != images.shape[3]:
        raise GenloomError(f"the feature classifier needs square images, got {images.shape[2]}x{images.shape[3]}")
    _check_label_range(labels, num_classes)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)   # the initial weights
    order = torch.randperm(images.shape[0], generator=generator)
    num_holdout = max(1, round(holdout_fraction * images.shape[0]))
    held, kept = order[:num_holdout], order[num_holdout:]
    device = images.device
    model = FeatureClassifier(FeatureClassifierConfig.for_images(images.shape[1], images.shape[2], num_classes))
    model = model.to(device)
    max_shift = max(1, images.shape[2] // 12)                     # 1 pixel at 8x8, 2 at 32x32

    def loss(model: FeatureClassifier) -> Tensor:
        pick = kept[torch.randint(0, kept.numel(), (batch_size,), generator=generator)]
        batch = _random_shift(images[pick], max_shift, generator)
        return F.cross_entropy(model(batch), labels[pick].to(device))

    start = time.perf_counter()
    fit(model, loss, steps, lr=lr, weight_decay=1e-4, warmup_fraction=0.05, desc="training feature classifier",
        progress=progress)
    model.holdout_accuracy = class_accuracy(model, images[held], labels[held])
    log.info("feature classifier: %d steps in %.1f s, held-out accuracy %.4f on %d images",
             steps, time.perf_counter() - start, model.holdout_accuracy, num_holdout)
    return model


def feature_classifier(cache_key: str, images: Tensor, labels: Tensor, num_classes: int,
                       cache_dir: str | Path | None = None, steps: int = 400, seed: int = 0,
                       progress: bool = True) -> FeatureClassifier:
    """The feature network for a data set, trained once and cached as safetensors + JSON under
    `<cache>/image-features/<cache_key>/`; `cache_key` names the data settings (the caller hashes them)."""
    folder = cache_folder("image-features", cache_key, cache_dir=cache_dir)
    wanted = FeatureClassifierConfig.for_images(images.shape[1], images.shape[-1], num_classes)

    def build(saved: dict) -> FeatureClassifier:
        config = FeatureClassifierConfig(**{**saved["config"], "widths": tuple(saved["config"]["widths"])})
        if config != wanted:
            raise CheckpointError(f"{folder} holds a feature classifier for {config}, but these images need "
                                  f"{wanted}: the cache key must change when the data settings do")
        return FeatureClassifier(config)

    def describe(model: FeatureClassifier) -> dict:
        return {"config": dataclasses.asdict(model.config), "architecture": model.config.describe(),
                "train_images": images.shape[0], "steps": steps, "seed": seed}

    model = cached_network(folder, "model", {"version": CLASSIFIER_VERSION}, build,
                           lambda: train_feature_classifier(images, labels, num_classes, steps=steps, seed=seed,
                                                            progress=progress),
                           what="feature classifier", describe=describe)
    return model.to(images.device)


def data_name(data_config) -> str:
    """A short name of an image data set for metric names: "digits", "glyphs" or the folder's name."""
    path = data_config.path
    return path.removeprefix("builtin:") if path.startswith("builtin:") else Path(path).name or "images"


def training_images(data) -> tuple[Tensor, Tensor]:
    """Every training image of a prepared ImageData and its labels: the reference the metrics compare with."""
    return data.pixel_batch(torch.arange(data.num_examples("train")), "train")


def data_feature_classifier(data, reference: tuple[Tensor, Tensor] | None = None,
                            progress: bool = True, seed: int = 0) -> FeatureClassifier:
    """The cached feature classifier of a prepared ImageData, keyed by its settings: the same network
    `genloom eval`, the benchmarks and the GAN's collapse watch use (`seed` 0; an autoencoder's perceptual
    loss uses the one of seed 1). `reference` is `training_images(data)` where the caller already has it
    (it is only read to train a new classifier). Data without classes gets the untrained network of `seed`."""
    import hashlib

    fields = {k: v for k, v in dataclasses.asdict(data.config).items() if k != "kind"}
    key = f"{data_name(data.config)}-{hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]}"
    images, labels = reference if reference is not None else training_images(data)
    if len(data.classes) < 2 and seed:
        torch.manual_seed(seed)
        return FeatureClassifier(FeatureClassifierConfig.for_images(images.shape[1], images.shape[-1], 2)).eval()
    return feature_classifier(key if not seed else f"{key}-seed{seed}", images, labels, max(len(data.classes), 1),
                              seed=seed, progress=progress)


# -- metrics on features -----------------------------------------------------------------------

def class_accuracy(classifier: Callable[[Tensor], Tensor], images: Tensor, requested_labels: Tensor,
                   batch_size: int = 256) -> float:
    """Fraction of `images` that `classifier` (images -> logits) assigns to the requested class."""
    _check_images(images, requested_labels)
    module = classifier if isinstance(classifier, nn.Module) else None
    was_training = module is not None and module.training
    parameter = next(module.parameters(), None) if module is not None else None
    device = parameter.device if parameter is not None else images.device
    if module is not None:
        module.eval()
    try:
        predicted = _batched(classifier, images, device, batch_size).argmax(dim=1)   # (N,)
    finally:
        if was_training:
            module.train()
    return float((predicted == requested_labels.cpu()).double().mean())


# -- all together ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageEvalResult:
    fid_name: str                    # e.g. "FID-digits": named after the data its classifier learned
    data_name: str                   # e.g. "digits"
    num_generated: int
    num_real: int
    fid: float                       # Fréchet distance on the feature classifier's features
    kid: float                       # KID (unbiased MMD², cubic kernel) on the same features
    kid_std: float                   # its standard deviation over subsets
    precision: float                 # k-NN manifold precision (k = neighbours)
    recall: float
    neighbours: int
    accuracy: float | None           # generated images classified as their requested class (None: unconditional)
    real_accuracy: float | None      # the same classifier on the real images, for scale
    fid_inception: float | None = None  # the standard FID (pool3 of the FID Inception), where weights were given

    def summary(self) -> str:
        lines = [
            f"{self.fid_name}: {self.fid:.4f}  (Fréchet distance on features of genloom's {self.data_name} "
            f"classifier; not the standard FID, comparable only with other {self.fid_name} values)",
            f"KID-{self.data_name}: {self.kid:.5f} ± {self.kid_std:.5f}  (kernel distance, cubic kernel, "
            f"on the same features)",
            f"precision: {self.precision:.4f}  recall: {self.recall:.4f}  (k={self.neighbours} nearest-neighbour "
            f"manifolds on the same features)",
        ]
        if self.accuracy is not None:
            reference = "" if self.real_accuracy is None else f"; {self.real_accuracy:.4f} of the real images"
            lines.append(f"class accuracy: {self.accuracy:.4f} of generated images classified as the requested "
                         f"class{reference}")
        if self.fid_inception is not None:
            lines.append(f"FID: {self.fid_inception:.4f}  (standard: InceptionV3 pool3 features, "
                         f"Heusel et al. 2017)")
        lines.append(f"from {self.num_generated:,} generated and {self.num_real:,} real images")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def evaluate_images(fake_images: Tensor, fake_labels: Tensor | None, real_images: Tensor, real_labels: Tensor | None,
                    classifier: FeatureClassifier, num_classes: int, inception: InceptionFeatures | None = None,
                    data_name: str = "reference", neighbours: int = 3, kid_subsets: int = 100,
                    kid_subset_size: int = 1000, seed: int = 0, batch_size: int = 256) -> ImageEvalResult:
    """Every metric of generated images against real ones; `fake_labels` are the requested classes of
    conditional samples (None for unconditional ones), `real_labels` give the classifier's accuracy on real
    images for scale; `inception` (from `load_inception`) adds the standard FID."""
    _check_images(fake_images, fake_labels, "generated images")
    _check_images(real_images, real_labels, "real images")
    if min(fake_images.shape[0], real_images.shape[0]) <= neighbours:
        raise GenloomError(f"need more than {neighbours} generated and real images, "
                           f"got {fake_images.shape[0]} and {real_images.shape[0]}")
    for labels in (fake_labels, real_labels):
        if labels is not None:
            _check_label_range(labels, num_classes)
    device = next(classifier.parameters()).device
    real = _batched(classifier.features, real_images, device, batch_size)          # (N_real, D)
    fake = _batched(classifier.features, fake_images, device, batch_size)          # (N_fake, D)
    kid, kid_std = kernel_inception_distance(real, fake, kid_subsets, kid_subset_size,
                                             torch.Generator().manual_seed(seed))
    precision, recall = precision_recall(real, fake, neighbours)
    fid_inception = None
    if inception is not None:
        inception_device = next(inception.parameters()).device
        fid_inception = frechet_distance(_batched(inception.features, real_images, inception_device, 32),
                                         _batched(inception.features, fake_images, inception_device, 32))
    conditional = fake_labels is not None
    scale = conditional and real_labels is not None
    return ImageEvalResult(
        fid_name=f"FID-{data_name}", data_name=data_name, num_generated=fake_images.shape[0],
        num_real=real_images.shape[0], fid=frechet_distance(real, fake), kid=kid, kid_std=kid_std,
        precision=precision, recall=recall, neighbours=neighbours,
        accuracy=class_accuracy(classifier, fake_images, fake_labels, batch_size) if conditional else None,
        real_accuracy=class_accuracy(classifier, real_images, real_labels, batch_size) if scale else None,
        fid_inception=fid_inception)


# -- autoencoders --------------------------------------------------------------------------------

def psnr(reconstructions: Tensor, images: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB per image (N,) of images in [-1, 1] (peak-to-peak 2)."""
    mse = (reconstructions.float() - images.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))


@dataclass(frozen=True)
class AutoencoderEvalResult:
    data_name: str
    num_images: int                  # validation images reconstructed
    psnr: float                      # mean over images, dB
    psnr_std: float
    reconstructions: ImageEvalResult  # FID-<data> etc. of the reconstructions against the training images
    originals_fid: float             # the same FID of the validation images themselves: the floor

    def summary(self) -> str:
        r = self.reconstructions
        return "\n".join([
            f"reconstruction PSNR: {self.psnr:.2f} dB ± {self.psnr_std:.2f} over {self.num_images:,} validation "
            f"images",
            f"{r.fid_name} of the reconstructions: {r.fid:.4f}  (the validation images themselves: "
            f"{self.originals_fid:.4f}; genloom's {self.data_name} classifier features, not the standard FID)",
            f"KID-{self.data_name}: {r.kid:.5f} ± {r.kid_std:.5f}  precision: {r.precision:.4f}  recall: {r.recall:.4f}"
            + (f"\nclass accuracy of the reconstructions: {r.accuracy:.4f} (real images: {r.real_accuracy:.4f})"
               if r.accuracy is not None and r.real_accuracy is not None else ""),
        ])

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def evaluate_reconstructions(data, images: Tensor, labels: Tensor, reconstructions: Tensor,
                             progress: bool = True) -> AutoencoderEvalResult:
    """PSNR of `reconstructions` of `images` (validation images of the prepared ImageData `data`) and their
    FID-<data> against the training images, beside the FID of `images` themselves."""
    real_images, real_labels = training_images(data)
    classifier = data_feature_classifier(data, (real_images, real_labels), progress=progress)
    classes = max(len(data.classes), 1)
    conditional = len(data.classes) >= 2
    name = data_name(data.config)
    result = evaluate_images(reconstructions, labels if conditional else None, real_images,
                             real_labels if conditional else None, classifier, classes, data_name=name)
    originals = evaluate_images(images, None, real_images, None, classifier, classes, data_name=name)
    values = psnr(reconstructions, images)
    return AutoencoderEvalResult(name, images.shape[0], float(values.mean()), float(values.std()), result,
                                 originals.fid)
