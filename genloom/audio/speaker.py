"""A speaker encoder: a log-mel clip of any length -> a unit vector that is the same for one voice.

Convolutions over time (the mel bands as channels) and mean + standard-deviation pooling over the frames
give one vector per clip; training makes clips of one voice point the same way and different voices apart
with the generalised end-to-end loss (GE2E, Wan et al. 2018): each batch holds M clips of each of N voices;
every clip's cosine similarity to every voice's centroid (its own voice's centroid leaving the clip out),
scaled by a learned w > 0 and shifted by b, is a softmax over the N voices, and the loss is its cross-entropy.
It serves two ends: the voice vector that conditions the audio denoiser (from a reference clip at
generation) and the speaker similarity of the evaluation.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.cache import cached_network, load_network
from ..core.fit import fit

__all__ = ["SpeakerEncoder", "ge2e_loss", "train_speaker_encoder", "cached_speaker_encoder", "load_speaker_encoder"]

log = logging.getLogger(__name__)
ENCODER_VERSION = 1


class SpeakerEncoder(nn.Module):
    def __init__(self, n_mels: int = 64, dim: int = 64, width: int = 128):
        super().__init__()
        self.n_mels, self.dim, self.width = n_mels, dim, width
        layers, channels = [], n_mels
        for dilation in (1, 2, 3):
            layers += [nn.Conv1d(channels, width, 3, padding=dilation, dilation=dilation), nn.BatchNorm1d(width),
                       nn.ReLU()]
            channels = width
        self.frames = nn.Sequential(*layers)
        self.project = nn.Linear(2 * width, dim)
        self.scale = nn.Parameter(torch.tensor(10.0))     # GE2E's w (kept positive) and b
        self.shift = nn.Parameter(torch.tensor(-5.0))

    def settings(self) -> dict:
        return {"n_mels": self.n_mels, "dim": self.dim, "width": self.width, "version": ENCODER_VERSION}

    def forward(self, pictures: Tensor) -> Tensor:
        """(B, 1, n_mels, frames) log-mel pictures in [-1, 1] -> (B, dim) unit vectors. Frames at the floor
        (silence) are left out of the pooling, so padding does not change a voice's vector."""
        x = pictures[:, 0]
        features = self.frames(x)                                               # (B, width, frames)
        voiced = (x > -0.9).any(dim=1, keepdim=True).float()                    # (B, 1, frames)
        weight = voiced / voiced.sum(-1, keepdim=True).clamp(min=1)
        mean = (features * weight).sum(-1)
        std = ((features - mean[..., None]).pow(2) * weight).sum(-1).clamp(min=1e-6).sqrt()
        return F.normalize(self.project(torch.cat([mean, std], dim=1)), dim=1)


def ge2e_loss(embeddings: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """(N voices, M clips, D) unit vectors -> the GE2E softmax loss."""
    N, M, _ = embeddings.shape
    total = embeddings.sum(1)                                                   # (N, D)
    centroids = F.normalize(total / M, dim=-1)
    without_self = F.normalize((total[:, None] - embeddings) / (M - 1), dim=-1)  # (N, M, D)
    similarity = torch.einsum("nmd,kd->nmk", embeddings, centroids)            # (N, M, N)
    own = (embeddings * without_self).sum(-1)                                   # (N, M)
    eye = torch.eye(N, dtype=torch.bool)[:, None, :].expand(N, M, N)
    similarity = torch.where(eye, own[..., None].expand(N, M, N), similarity)
    logits = scale.clamp(min=1e-6) * similarity + shift
    target = torch.arange(N)[:, None].expand(N, M)
    return F.cross_entropy(logits.reshape(N * M, N), target.reshape(-1))


def train_speaker_encoder(pictures: Tensor, speakers: Tensor, dim: int = 64, steps: int = 1500, seed: int = 0,
                          voices_per_batch: int = 16, clips_per_voice: int = 6, progress: bool = True) -> SpeakerEncoder:
    """GE2E training on clips (N, 1, n_mels, frames) of labelled voices (N,). Each clip is cut to a random
    window of 60-100% of its frames, so the encoder copes with references of other lengths."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = SpeakerEncoder(pictures.shape[2], dim)
    voices = speakers.unique()
    members = {int(v): torch.nonzero(speakers == v).flatten() for v in voices}
    N = min(voices_per_batch, len(voices))
    frames = pictures.shape[-1]

    def loss(model: SpeakerEncoder) -> Tensor:
        chosen = voices[torch.randperm(len(voices), generator=generator)[:N]]
        ids = torch.stack([members[int(v)][torch.randint(len(members[int(v)]), (clips_per_voice,),
                                                         generator=generator)] for v in chosen])
        width = int(frames * (0.6 + 0.4 * torch.rand(1, generator=generator)))
        start = int(torch.randint(0, frames - width + 1, (1,), generator=generator))
        batch = pictures[ids.flatten()][..., start:start + width]
        embeddings = model(batch).view(N, clips_per_voice, -1)
        return ge2e_loss(embeddings, model.scale, model.shift)

    return fit(model, loss, steps, lr=2e-3, grad_clip=3.0, desc="speaker encoder", progress=progress)


def _build(settings: dict) -> SpeakerEncoder:
    return SpeakerEncoder(settings["n_mels"], settings["dim"], settings["width"])


def load_speaker_encoder(folder: Path, name: str = "speaker_encoder") -> SpeakerEncoder:
    """The encoder kept as NAME.safetensors + NAME.json (its `settings()`) in `folder` (a checkpoint or the cache)."""
    return load_network(folder, name, _build)


def cached_speaker_encoder(folder: Path, pictures: Tensor, speakers: Tensor, dim: int, steps: int, seed: int,
                           progress: bool = True) -> SpeakerEncoder:
    """The encoder for one data set, trained once and kept beside its clips in `folder`."""
    return cached_network(folder, f"speaker_encoder_d{dim}_s{steps}", {"version": ENCODER_VERSION}, _build,
                          lambda: train_speaker_encoder(pictures, speakers, dim, steps, seed, progress=progress),
                          what=f"speaker encoder on {len(pictures)} clips of {len(speakers.unique())} voices",
                          describe=SpeakerEncoder.settings)
