"""A generative adversarial network: a generator and a discriminator in one module (Goodfellow et al. 2014).

The generator is DCGAN-shaped (Radford et al. 2016): a latent vector becomes a 4x4 feature map that is
upsampled and convolved to the image size. Each block's features are pixel-normalised (Karras et al.
2018) and then scaled and shifted by a style vector made from the latent and the class, which a small
mapping network can first transform (`mapping_layers`, inspired by StyleGAN; Karras et al. 2019).
The discriminator mirrors it with strided blocks and judges class-conditional images with a projection
head (Miyato & Koyama 2018): score = psi(features) + <embed(label), features>. Spectral normalisation of
every discriminator layer (Miyato et al. 2018) is a switch.

`forward(mode, ...)` dispatches to either network so one wrapped module (DDP, compile) serves both
optimizer phases; `generate(z, labels)` and `discriminate(images, labels)` name the two directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ..core.config import require, validate
from ..core.errors import ConfigError
from ..core.registry import register

__all__ = ["GANConfig", "GAN", "Generator", "Discriminator", "PatchDiscriminator"]


@dataclass(frozen=True)
class GANConfig:
    kind: Literal["gan"] = "gan"
    image_size: int = 0                  # 0: from the data (8 to 64, a power of two)
    channels: int = 0                    # image channels; 0: from the data
    num_classes: int = 0                 # 0: from the data (0 there too = unconditional)
    latent_dim: int = 64                 # size of the random vector z each image is made from
    style_dim: int = 128                 # size of the style vector that modulates the generator blocks
    mapping_layers: int = 0              # >0: a StyleGAN-like MLP maps (z, class) to the style first
    generator_channels: int = 128        # channels of the generator's 4x4 map; halved per doubling (min 32)
    discriminator_channels: int = 32     # channels of the discriminator's first block; doubled per halving (max 256)
    spectral_norm: bool = True           # spectral normalisation on every discriminator layer
    patch_size: int = 1                  # >1: both networks work on p x p pixel patches folded into channels
    minibatch_std: bool = True           # the discriminator sees how varied each group of 4 images is (fights collapse)

    def __post_init__(self) -> None:
        validate(self, "model")
        if self.image_size:
            require(self.image_size in (8, 16, 32, 64), "model.image_size",
                    f"{self.image_size}: the GAN makes 8, 16, 32 or 64-pixel images; set data.image_size")
        require(self.patch_size in (1, 2, 4), "model.patch_size", "must be 1, 2 or 4")
        if self.image_size:
            require(self.image_size // self.patch_size >= 4, "model.patch_size",
                    f"{self.patch_size} leaves less than 4x4 patches of {self.image_size}-pixel images")
        require(self.latent_dim >= 1, "model.latent_dim", "must be at least 1")
        require(self.style_dim >= 1, "model.style_dim", "must be at least 1")
        require(0 <= self.mapping_layers <= 64, "model.mapping_layers", "must be 0 (off) to 64")
        require(self.generator_channels >= 8, "model.generator_channels", "must be at least 8")
        require(self.discriminator_channels >= 8, "model.discriminator_channels", "must be at least 8")

    @property
    def doublings(self) -> int:
        return int(math.log2(self.image_size // self.patch_size)) - 2          # 4x4 -> image_size / patch_size


def _pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Each pixel's feature vector scaled to unit root-mean-square (no batch statistics: samples are independent)."""
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)


def _append_group_std(h: torch.Tensor) -> torch.Tensor:
    """Append one channel: the standard deviation of the features within groups of consecutive images,
    averaged over features and pixels (Karras et al. 2018, "minibatch standard deviation"). A generator
    that makes the same image again and again is then easy to spot."""
    B, C, H, W = h.shape
    group = next(g for g in (4, 2, 1) if B % g == 0)
    grouped = h.float().view(B // group, group, C, H, W)
    std = (grouped.var(dim=1, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))          # (B / group,)
    std = std.to(h.dtype).repeat_interleave(group)[:, None, None, None].expand(B, 1, H, W)
    return torch.cat([h, std], dim=1)


class StyledConv(nn.Module):
    """conv 3x3 -> pixel norm -> scale/shift from the style -> LeakyReLU."""

    def __init__(self, in_channels: int, out_channels: int, style_dim: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.style = nn.Linear(style_dim, 2 * out_channels)
        nn.init.zeros_(self.style.weight)
        nn.init.zeros_(self.style.bias)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        scale, shift = self.style(style)[:, :, None, None].chunk(2, dim=1)
        return F.leaky_relu(_pixel_norm(self.conv(x)) * (1 + scale) + shift, 0.2)


class Generator(nn.Module):
    def __init__(self, cfg: GANConfig):
        super().__init__()
        self.config = cfg
        self.label = nn.Embedding(cfg.num_classes, cfg.latent_dim) if cfg.num_classes else None
        inputs = cfg.latent_dim * (2 if cfg.num_classes else 1)
        layers: list[nn.Module] = []
        for i in range(cfg.mapping_layers):
            layers += [nn.Linear(inputs if i == 0 else cfg.style_dim, cfg.style_dim), nn.LeakyReLU(0.2)]
        if not layers:
            layers = [nn.Linear(inputs, cfg.style_dim)]
        self.mapping = nn.Sequential(*layers)
        width = cfg.generator_channels
        self.input = nn.Linear(cfg.style_dim, width * 16)
        self.first = StyledConv(width, width, cfg.style_dim)
        self.blocks = nn.ModuleList()
        for _ in range(cfg.doublings):
            out = max(32, width // 2)
            self.blocks.append(nn.ModuleList([StyledConv(width, out, cfg.style_dim), StyledConv(out, out, cfg.style_dim)]))
            width = out
        self.output = nn.Conv2d(width, cfg.channels * cfg.patch_size ** 2, 1)

    def style(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The style vector of latents z (B, latent_dim) and labels (B,) -> (B, style_dim)."""
        z = _pixel_norm(z[:, :, None, None])[:, :, 0, 0]
        if self.label is not None:
            if labels is None:
                raise ConfigError("this GAN is class-conditional: give a label for every sample")
            z = torch.cat([z, _pixel_norm(self.label(labels)[:, :, None, None])[:, :, 0, 0]], dim=1)
        return self.mapping(z)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """z (B, latent_dim), labels (B,) -> images (B, C, H, W) in [-1, 1]."""
        style = self.style(z, labels)
        x = F.leaky_relu(self.input(style), 0.2).view(z.shape[0], -1, 4, 4)
        x = self.first(x, style)
        for first, second in self.blocks:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = second(first(x, style), style)
        x = self.output(x)
        if self.config.patch_size > 1:
            x = F.pixel_shuffle(x, self.config.patch_size)                     # patches -> pixels
        return torch.tanh(x)


class Discriminator(nn.Module):
    def __init__(self, cfg: GANConfig):
        super().__init__()
        self.config = cfg
        norm = spectral_norm if cfg.spectral_norm else (lambda module: module)
        width = cfg.discriminator_channels
        self.input = norm(nn.Conv2d(cfg.channels * cfg.patch_size ** 2, width, 3, padding=1))
        self.blocks = nn.ModuleList()
        for _ in range(cfg.doublings):
            out = min(256, width * 2)
            self.blocks.append(nn.Sequential(norm(nn.Conv2d(width, width, 3, padding=1)), nn.LeakyReLU(0.2),
                                             norm(nn.Conv2d(width, out, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)))
            width = out
        extra = 1 if cfg.minibatch_std else 0
        self.features = nn.Sequential(norm(nn.Conv2d(width + extra, width, 3, padding=1)), nn.LeakyReLU(0.2), nn.Flatten(),
                                      norm(nn.Linear(width * 16, 2 * width)), nn.LeakyReLU(0.2))
        self.score = norm(nn.Linear(2 * width, 1))
        self.projection = norm(nn.Embedding(cfg.num_classes, 2 * width)) if cfg.num_classes else None

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """images (B, C, H, W), labels (B,) -> realness scores (B,) (logits)."""
        if self.config.patch_size > 1:
            images = F.pixel_unshuffle(images, self.config.patch_size)          # pixels -> patches
        h = F.leaky_relu(self.input(images), 0.2)
        for block in self.blocks:
            h = block(h)
        if self.config.minibatch_std:
            h = _append_group_std(h)
        features = self.features(h)                                              # (B, 2 * width)
        score = self.score(features).squeeze(1)
        if self.projection is not None:
            if labels is None:
                raise ConfigError("this GAN is class-conditional: give a label for every image")
            score = score + (self.projection(labels) * features).sum(dim=1)
        return score


class GAN(nn.Module):
    """The generator and the discriminator; `config` is the GANConfig."""

    def __init__(self, cfg: GANConfig):
        super().__init__()
        if not (cfg.image_size and cfg.channels):
            raise ConfigError("model.image_size and model.channels must be set (they come from the data)")
        self.config = cfg
        self.generator = Generator(cfg)
        self.discriminator = Discriminator(cfg)

    def forward(self, mode: str, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """mode "generate": x = latents -> images; mode "discriminate": x = images -> scores."""
        if mode == "generate":
            return self.generator(x, labels)
        if mode == "discriminate":
            return self.discriminator(x, labels)
        raise ValueError(f"GAN.forward: mode must be 'generate' or 'discriminate', got {mode!r}")

    def latents(self, n: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The latents of seeds seed .. seed + n - 1 (one generator per sample: a sample's seed fixes it)."""
        z = [torch.randn(self.config.latent_dim, generator=torch.Generator().manual_seed(seed + i)) for i in range(n)]
        return torch.stack(z).to(device)


class PatchDiscriminator(nn.Module):
    """A fully convolutional discriminator that scores every overlapping patch of an image (pix2pix's
    PatchGAN, Isola et al. 2017; the one taming/LDM autoencoders train against): `layers` stride-2 conv4x4
    blocks (widths doubling up to 8x), one stride-1 block, then a conv4x4 to one logit per patch. GroupNorm
    instead of BatchNorm, so real and reconstructed batches never mix statistics."""

    def __init__(self, channels: int, width: int = 64, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        current = width
        for i in range(1, layers + 1):
            out = width * min(2 ** i, 8)
            blocks += [nn.Conv2d(current, out, 4, stride=2 if i < layers else 1, padding=1, bias=False),
                       nn.GroupNorm(next(g for g in (32, 16, 8, 4, 2, 1) if out % g == 0), out), nn.LeakyReLU(0.2)]
            current = out
        blocks.append(nn.Conv2d(current, 1, 4, stride=1, padding=1))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) -> patch logits (B, 1, h, w)."""
        return self.blocks(images)


@register("model", "gan", GANConfig)
def build_gan(config: GANConfig, run=None) -> GAN:
    return GAN(config)
