"""Scoring generated sound, offline.

- what was said / which sound: a classifier genloom trains once on the real clips (training voices only;
  its accuracy is measured on the held-out voices) reads the generated clip after it has been turned into
  sound and back (Griffin-Lim, then the log-mel of the result: what a listener gets), and its penultimate
  features give FAD-genloom, the Fréchet distance between generated and real clips (the idea of FAD, Kilgour
  et al. 2019, with a network that knows these sounds instead of VGGish);
- who said it: the speaker encoder's cosine between a generated clip and the centroid of other real clips
  of the reference voice, against the centroids of the other held-out voices; a trial succeeds when the
  reference voice is the closest. The same test on real clips gives the ceiling, and generation without a
  voice the floor.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.cache import cache_folder, cached_network
from ..core.fit import fit

__all__ = ["AudioClassifier", "audio_classifier", "vocoded", "voice_trials", "AudioEvalResult"]

CLASSIFIER_VERSION = 1          # bump when the network or its training changes, so caches retrain


class AudioClassifier(nn.Module):
    """A log-mel picture (1, n_mels, frames) -> features (128) -> classes."""

    def __init__(self, num_classes: int):
        super().__init__()
        def block(a: int, b: int) -> list[nn.Module]:
            return [nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(), nn.MaxPool2d(2)]

        self.body = nn.Sequential(*block(1, 16), *block(16, 32), *block(32, 64), nn.Conv2d(64, 128, 3, padding=1),
                                  nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(128, num_classes)

    def features(self, pictures: Tensor) -> Tensor:
        return self.body(pictures)

    def forward(self, pictures: Tensor) -> Tensor:
        return self.head(self.features(pictures))


def vocoded(pictures: Tensor, mel, iterations: int = 64, batch: int = 64, vocoder=None) -> tuple[Tensor, Tensor]:
    """Pictures turned into sound — by the neural `vocoder` when given, else by Griffin-Lim — and back into
    pictures: (sound (N, samples), pictures)."""
    with torch.no_grad():
        waves = torch.cat([vocoder(pictures[i:i + batch]) if vocoder is not None else
                           mel.invert(pictures[i:i + batch], iterations) for i in range(0, len(pictures), batch)])
    return waves, torch.cat([mel(waves[i:i + 256]) for i in range(0, len(waves), 256)])


def _shift(pictures: Tensor, generator: torch.Generator) -> Tensor:
    """Random time shifts of up to 8 frames (silence enters at the edge) and +-0.1 loudness, for robustness."""
    out = pictures.clone()
    for i in range(len(out)):
        k = int(torch.randint(-8, 9, (1,), generator=generator))
        out[i] = torch.roll(out[i], k, dims=-1)
        if k > 0:
            out[i, ..., :k] = -1
        elif k < 0:
            out[i, ..., k:] = -1
    gain = (torch.rand(len(out), 1, 1, 1, generator=generator) - 0.5) * 0.2
    return torch.where(out > -1, (out + gain).clamp(-1, 1), out)


def audio_classifier(data, steps: int = 800, progress: bool = True) -> AudioClassifier:
    """The classifier of `data`'s classes, trained once on its training clips (half of them also seen through
    the Griffin-Lim vocoder) and cached; `holdout_accuracy` is on the validation clips (held-out voices)."""
    data.prepare()
    key = hashlib.sha1(f"{data._cache_folder().name}|{data.config.path}|{data.classes}".encode()).hexdigest()[:10]

    def train() -> AudioClassifier:
        torch.manual_seed(0)
        generator = torch.Generator().manual_seed(0)
        train_ids, val_ids = data.split_ids("train"), data.split_ids("val")
        pictures, labels = data.pictures[train_ids], data.labels[train_ids]
        mel = data.config.mel()
        half = torch.randperm(len(pictures), generator=generator)[:len(pictures) // 2]
        _, through = vocoded(pictures[half], mel, iterations=32)
        pictures, labels = torch.cat([pictures, through]), torch.cat([labels, labels[half]])

        def loss(model: AudioClassifier) -> Tensor:
            batch = torch.randint(0, len(pictures), (64,), generator=generator)
            return F.cross_entropy(model(_shift(pictures[batch], generator)), labels[batch])

        model = fit(AudioClassifier(len(data.classes)), loss, steps, lr=2e-3, weight_decay=1e-4,
                    desc="training the audio classifier (once)", progress=progress)
        with torch.no_grad():
            model.holdout_accuracy = float((model(data.pictures[val_ids]).argmax(-1) == data.labels[val_ids])
                                           .float().mean())
        return model

    return cached_network(cache_folder(f"audio-classifier-{key}", cache_dir=data.config.cache_dir or None), "model",
                          {"version": CLASSIFIER_VERSION}, lambda saved: AudioClassifier(len(data.classes)), train,
                          what="audio classifier")


@torch.no_grad()
def voice_trials(encoder, generated: Tensor, voices: Tensor, centroids: Tensor) -> tuple[Tensor, Tensor]:
    """For generated (or real) pictures (N, 1, M, F) meant to be in `voices` (N,) (indices into `centroids`
    (V, D), unit vectors): whether the intended voice is the closest centroid (N,) and the cosines (N, V)."""
    embeddings = torch.cat([encoder(generated[i:i + 256]) for i in range(0, len(generated), 256)])
    cosines = embeddings @ centroids.T
    return cosines.argmax(1) == voices, cosines


@dataclass
class AudioEvalResult:
    samples: int
    accuracy: float                       # generated clips (through the vocoder) recognised as the requested class
    fad_genloom: float                    # generated against real held-out clips
    real_fad_genloom: float               # real training clips against real held-out clips: the floor
    classifier_accuracy: float            # the classifier on real held-out clips
    vocoded_accuracy: float               # ... on the same clips through the vocoder: the vocoder's ceiling
    vocoder: str = "Griffin-Lim"          # what turned the pictures into sound
    voice_trials: int = 0
    voice_success: float | None = None    # generated in a held-out voice: that voice is the closest of them
    voice_success_real: float | None = None    # real clips of the held-out voices: the ceiling
    voice_success_no_voice: float | None = None  # generated without a voice: chance level
    same_voice_cosine: float | None = None      # generated vs its reference voice
    other_voice_cosine: float | None = None     # generated vs the other held-out voices
    real_same_voice_cosine: float | None = None
    real_other_voice_cosine: float | None = None
    per_class: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        lines = [f"recognised as requested: {100 * self.accuracy:.1f}% of {self.samples} clips (classifier on real "
                 f"held-out clips: {100 * self.classifier_accuracy:.1f}%, through {self.vocoder}: "
                 f"{100 * self.vocoded_accuracy:.1f}%)",
                 f"FAD-genloom: {self.fad_genloom:.2f} (real training vs held-out clips: {self.real_fad_genloom:.2f})"]
        if self.voice_success is not None:
            lines.append(f"voice cloning: the reference voice is the closest of the held-out voices in "
                         f"{100 * self.voice_success:.1f}% of {self.voice_trials} trials (real clips: "
                         f"{100 * self.voice_success_real:.1f}%; without a voice: {100 * self.voice_success_no_voice:.1f}%)")
            lines.append(f"speaker cosine: generated vs reference voice {self.same_voice_cosine:.3f}, vs other voices "
                         f"{self.other_voice_cosine:.3f} (real clips: {self.real_same_voice_cosine:.3f} vs "
                         f"{self.real_other_voice_cosine:.3f})")
        return "\n".join(lines)
