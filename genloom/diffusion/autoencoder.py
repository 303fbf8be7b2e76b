"""A convolutional KL autoencoder for latent diffusion (Kingma & Welling 2014; Rombach et al. 2022, "LDM").

The encoder turns an image (B, C, H, W) into a diagonal Gaussian over latents (B, L, H/f, W/f), f = 2 per
extra level (4x with three levels, 8x with four, as in Stable Diffusion); the decoder maps a latent back to
pixels. Training (`AutoencoderObjective`) mixes a pixel reconstruction loss, a perceptual loss on the
features of a small image network the data module hands over, a KL pull towards N(0, I) and, optionally,
a patch-GAN loss against `genloom.gan`'s patch discriminator (Esser et al. 2021, "taming transformers").

The module layout is the one of diffusers' `AutoencoderKL` (Encoder / Decoder with down / up blocks of
ResNet blocks, a mid block with one attention layer, 1x1 quant convs), parameter names included, so a
diffusers folder loads weight for weight (`autoencoder_hf.py`). The scale that makes latents roughly unit
variance is the config's `scaling_factor`, or, when that is 0, one over a running estimate of the latents'
standard deviation kept as the buffer `latent_std` during training (LDM appendix G measures it the same way).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..core.config import require, validate
from ..core.errors import ConfigError
from ..core.registry import register
from ..gan.model import PatchDiscriminator
from ..gan.objective import discriminator_loss, generator_loss
from ..train.objective import unwrap_model

__all__ = ["AutoencoderConfig", "Autoencoder", "AutoencoderObjectiveConfig", "AutoencoderObjective",
           "kl_divergence", "perceptual_distance"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AutoencoderConfig:
    kind: Literal["autoencoder"] = "autoencoder"
    image_size: int = 0                   # 0: from the data (any size divisible by the downsampling factor works)
    channels: int = 0                     # image channels; 0: from the data
    num_classes: int = 0                  # filled by the data; the autoencoder ignores labels
    base_channels: int = 64               # channels at full resolution
    channel_mults: tuple[int, ...] = (1, 2, 2)   # per level; each level after the first halves the size: 3 = 4x, 4 = 8x
    layers_per_block: int = 1             # ResNet blocks per encoder level (the decoder has one more)
    latent_channels: int = 4
    norm_groups: int = 32                 # GroupNorm groups (must divide every width)
    mid_attention: bool = True            # one self-attention layer at the lowest resolution
    quant_conv: bool = True               # 1x1 convs around the latent (diffusers' use_quant_conv / use_post_quant_conv)
    scaling_factor: float = 0.0           # latents are multiplied by this for diffusion; 0 = 1 / measured std
    shift_factor: float = 0.0             # and shifted by this first (SD3 / Flux VAEs); 0 for SD 1-2
    discriminator_channels: int = 0       # >0: a patch discriminator of this width for the adversarial loss
    discriminator_layers: int = 3         # its strided conv layers (each halves the size)

    def __post_init__(self) -> None:
        validate(self, "model")
        require(self.base_channels >= 1, "model.base_channels", "must be at least 1")
        require(1 <= len(self.channel_mults) <= 6 and all(m >= 1 for m in self.channel_mults), "model.channel_mults",
                "must be 1 to 6 positive integers, e.g. [1, 2, 2] (4x downsampling) or [1, 2, 4, 4] (8x)")
        require(self.layers_per_block >= 1, "model.layers_per_block", "must be at least 1")
        require(self.latent_channels >= 1, "model.latent_channels", "must be at least 1")
        bad = [w for w in self.widths if w % self.norm_groups]
        require(self.norm_groups >= 1 and not bad, "model.norm_groups",
                f"{self.norm_groups} must divide every level's channels {list(self.widths)}")
        require(self.scaling_factor >= 0, "model.scaling_factor", "must be 0 (measured) or positive, e.g. 0.18215")
        require(self.discriminator_channels >= 0, "model.discriminator_channels", "must be 0 (no GAN loss) or more")
        require(1 <= self.discriminator_layers <= 6, "model.discriminator_layers", "must be from 1 to 6")
        if self.image_size:
            require(self.image_size % self.downsampling == 0, "model.image_size",
                    f"{self.image_size} is not divisible by the downsampling factor {self.downsampling} "
                    f"({len(self.channel_mults)} levels of model.channel_mults)")

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.base_channels * m for m in self.channel_mults)

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.channel_mults) - 1)


class ResnetBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3, twice, plus the input (through a 1x1 conv where the width changes)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=1e-6)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=1e-6)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Attention(nn.Module):
    """One-head self-attention over the pixels of a feature map, as a residual."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        tokens = self.group_norm(x).flatten(2).transpose(1, 2)                      # (B, H*W, C)
        q, k, v = self.to_q(tokens), self.to_k(tokens), self.to_v(tokens)
        h = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]  # (B, H*W, C)
        return x + self.to_out[0](h).transpose(1, 2).reshape(B, C, H, W)


class Downsample(nn.Module):
    """Pad one pixel right and bottom, then a stride-2 conv3x3 (diffusers' Downsample2D with padding 0)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """ResNet blocks, then an optional 2x down- or upsampling."""

    def __init__(self, in_channels: int, out_channels: int, blocks: int, groups: int, resample: str):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups)
                                      for i in range(blocks)])
        if resample == "down":
            self.downsamplers = nn.ModuleList([Downsample(out_channels)])
        elif resample == "up":
            self.upsamplers = nn.ModuleList([Upsample(out_channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resnets:
            x = block(x)
        for resample in getattr(self, "downsamplers", ()) or getattr(self, "upsamplers", ()):
            x = resample(x)
        return x


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int, attention: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups), ResnetBlock(channels, channels, groups)])
        self.attentions = nn.ModuleList([Attention(channels, groups)]) if attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class Encoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        widths, groups = cfg.widths, cfg.norm_groups
        self.conv_in = nn.Conv2d(cfg.channels, widths[0], 3, padding=1)
        self.down_blocks = nn.ModuleList([
            Level(widths[max(i - 1, 0)], w, cfg.layers_per_block, groups, "down" if i < len(widths) - 1 else "")
            for i, w in enumerate(widths)])
        self.mid_block = MidBlock(widths[-1], groups, cfg.mid_attention)
        self.conv_norm_out = nn.GroupNorm(groups, widths[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(widths[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down_blocks:
            h = level(h)
        return self.conv_out(F.silu(self.conv_norm_out(self.mid_block(h))))      # (B, 2L, H/f, W/f)


class Decoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        widths, groups = tuple(reversed(cfg.widths)), cfg.norm_groups
        self.conv_in = nn.Conv2d(cfg.latent_channels, widths[0], 3, padding=1)
        self.mid_block = MidBlock(widths[0], groups, cfg.mid_attention)
        self.up_blocks = nn.ModuleList([
            Level(widths[max(i - 1, 0)], w, cfg.layers_per_block + 1, groups, "up" if i < len(widths) - 1 else "")
            for i, w in enumerate(widths)])
        self.conv_norm_out = nn.GroupNorm(groups, widths[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(widths[-1], cfg.channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid_block(self.conv_in(z))
        for level in self.up_blocks:
            h = level(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))                       # (B, C, H, W)


class Autoencoder(nn.Module):
    """`encode(images)` -> (mean, logvar) of the latent Gaussian; `decode(latents)` -> images; `to_latents` /
    `from_latents` apply the diffusion scaling. `forward("autoencode", images)` -> (reconstruction, mean,
    logvar) with a sampled latent; `forward("discriminate", images)` -> patch scores (with a discriminator)."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        if not cfg.channels:
            raise ConfigError("model.channels must be set (it comes from the data)")
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        L = cfg.latent_channels
        self.quant_conv = nn.Conv2d(2 * L, 2 * L, 1) if cfg.quant_conv else None
        self.post_quant_conv = nn.Conv2d(L, L, 1) if cfg.quant_conv else None
        self.register_buffer("latent_std", torch.ones(()))     # running std of the latent means (training)
        self.discriminator = (PatchDiscriminator(cfg.channels, cfg.discriminator_channels, cfg.discriminator_layers)
                              if cfg.discriminator_channels else None)

    def autoencoder_parameters(self) -> Iterable[nn.Parameter]:
        """Everything but the discriminator."""
        return (p for name, p in self.named_parameters() if not name.startswith("discriminator."))

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, C, H, W) in [-1, 1] -> mean, logvar (B, L, H/f, W/f); logvar clamped to [-30, 20]."""
        moments = self.encoder(images)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Unscaled latents (B, L, h, w) -> images (B, C, h*f, w*f), roughly in [-1, 1]."""
        if self.post_quant_conv is not None:
            latents = self.post_quant_conv(latents)
        return self.decoder(latents)

    @property
    def scale(self) -> float:
        """What latents are multiplied by for diffusion: the config's, else one over the measured std."""
        return self.config.scaling_factor or 1.0 / max(float(self.latent_std), 1e-6)

    def to_latents(self, mean: torch.Tensor) -> torch.Tensor:
        return (mean - self.config.shift_factor) * self.scale

    def from_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return latents / self.scale + self.config.shift_factor

    def forward(self, mode: str, images: torch.Tensor):
        if mode == "autoencode":
            mean, logvar = self.encode(images)
            z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
            return self.decode(z), mean, logvar
        if mode == "discriminate":
            if self.discriminator is None:
                raise ConfigError("this autoencoder has no discriminator (set model.discriminator_channels)")
            return self.discriminator(images)
        raise ValueError(f"Autoencoder.forward: mode must be 'autoencode' or 'discriminate', got {mode!r}")


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) per example (B,), summed over the latent elements:
    0.5 * sum(mean^2 + var - 1 - logvar) (Kingma & Welling 2014, appendix B)."""
    return 0.5 * (mean.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float()).flatten(1).sum(1)


def perceptual_distance(network: nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LPIPS-style distance (Zhang et al. 2018) per example (B,): at the output of every stage of
    `network.stages`, unit-normalise each pixel's feature vector, take the squared distance (0 to 4) and
    average it over pixels and then over stages (LPIPS's learned channel weights are uniform here).
    `network` is frozen; gradients flow to `a`."""
    distance = torch.zeros(a.shape[0], device=a.device, dtype=torch.float32)
    x, y = a, b
    for stage in network.stages:
        x, y = stage(x), stage(y)
        nx = x.float() / (x.float().pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        ny = y.float() / (y.float().pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        distance = distance + (nx - ny).pow(2).sum(1).mean(dim=(1, 2))
    return distance / len(network.stages)


@dataclass(frozen=True)
class AutoencoderObjectiveConfig:
    kind: Literal["autoencoder"] = "autoencoder"
    reconstruction: Literal["l1", "l2"] = "l1"   # pixel loss: mean absolute (sharper) or squared error
    perceptual_weight: float = 0.5        # weight of the perceptual distance; 0 = off
    kl_weight: float = 1e-6               # KL (summed per image) relative to the pixel loss summed per image, as LDM
    adversarial_weight: float = 0.1       # weight of the patch-GAN generator loss (with model.discriminator_channels)
    adversarial_start: int = 0            # optimizer step from which the adversarial loss applies
    adversarial_loss: Literal["hinge", "nonsaturating"] = "hinge"
    latent_std_momentum: float = 0.99     # running estimate of the latents' std (the scale when scaling_factor = 0)
    samples: int = 8                      # images (with their reconstructions) in the grid written at each evaluation

    def __post_init__(self) -> None:
        validate(self, "objective")
        for key in ("perceptual_weight", "kl_weight", "adversarial_weight"):
            require(getattr(self, key) >= 0, f"objective.{key}", "must be 0 (off) or positive")
        require(self.adversarial_start >= 0, "objective.adversarial_start", "must be 0 or more")
        require(0 <= self.latent_std_momentum < 1, "objective.latent_std_momentum", "must be in [0, 1)")
        require(1 <= self.samples <= 64, "objective.samples", "must be from 1 to 64")


class AutoencoderObjective:
    """Phases: "autoencoder" (and "discriminator" when the model has one). The perceptual network comes
    from the data module (`perceptual_network()`), handed over before training (`setup_data`)."""

    def __init__(self, config: AutoencoderObjectiveConfig, adversarial: bool):
        self.config = config
        self.phases = ("autoencoder", "discriminator") if adversarial else ("autoencoder",)
        self.step = 0
        self.perceptual: nn.Module | None = None

    def setup_data(self, data) -> None:
        if self.config.perceptual_weight > 0:
            if not hasattr(data, "perceptual_network"):
                raise ConfigError("objective.perceptual_weight: this data has no perceptual network; set it to 0")
            self.perceptual = data.perceptual_network().eval().requires_grad_(False)

    def begin_step(self, step: int) -> None:
        self.step = step

    def phase_parameters(self, phase: str, model: nn.Module) -> Iterable[nn.Parameter]:
        net = unwrap_model(model)
        return net.discriminator.parameters() if phase == "discriminator" else net.autoencoder_parameters()

    def _terms(self, model: nn.Module, images: torch.Tensor, reconstruction: torch.Tensor, mean: torch.Tensor,
               logvar: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        difference = reconstruction.float() - images.float()
        pixel = difference.abs() if cfg.reconstruction == "l1" else difference.pow(2)
        loss = pixel.mean() + cfg.kl_weight * kl_divergence(mean, logvar).mean() / images[0].numel()
        if self.perceptual is not None:
            self.perceptual.to(images.device)
            loss = loss + cfg.perceptual_weight * perceptual_distance(self.perceptual, reconstruction, images).mean()
        return loss

    def loss(self, phase: str, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        images = batch[0]
        net = unwrap_model(model)
        if phase == "discriminator":
            with torch.no_grad():
                reconstruction = model("autoencode", images)[0]
            net.discriminator.requires_grad_(True)
            return discriminator_loss(self.config.adversarial_loss, model("discriminate", images).float(),
                                      model("discriminate", reconstruction.detach()).float())
        reconstruction, mean, logvar = model("autoencode", images)
        with torch.no_grad():                                 # the running std behind `scale`
            m = self.config.latent_std_momentum
            net.latent_std.mul_(m).add_((1 - m) * mean.float().std())
        loss = self._terms(model, images, reconstruction, mean, logvar)
        if net.discriminator is not None and self.config.adversarial_weight > 0 \
                and self.step >= self.config.adversarial_start:
            net.discriminator.requires_grad_(False)
            scores = model("discriminate", reconstruction).float()
            loss = loss + self.config.adversarial_weight * generator_loss(self.config.adversarial_loss, scores)
        return loss

    @torch.no_grad()
    def eval_loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The pixel, KL and perceptual terms with the latent mean (no sampling), so evaluations are comparable."""
        images = batch[0]
        net = unwrap_model(model)
        mean, logvar = net.encode(images)
        return self._terms(net, images, net.decode(mean), mean, logvar)

    @torch.no_grad()
    def write_samples(self, model: nn.Module, data, folder: Path, step: int, length: int, prompt: str) -> str:
        """Validation images (odd rows) above their reconstructions (even rows)."""
        from ..media.image import save_image_grid

        if not length:
            return ""
        net = unwrap_model(model)
        device = next(net.parameters()).device
        images = data.batch(data.val_indices(self.config.samples), "val")[0].to(device)
        reconstruction = net.decode(net.encode(images)[0]).clamp(-1, 1)
        columns = min(8, len(images))
        rows = []
        for start in range(0, len(images), columns):
            rows += [images[start:start + columns], reconstruction[start:start + columns]]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step_{step:07d}.png"
        save_image_grid(torch.cat(rows).float().cpu(), path, nrow=columns,
                        scale=max(1, 64 // max(images.shape[-1], 1)))
        psnr = 10 * math.log10(4.0 / max(float((reconstruction - images).pow(2).mean()), 1e-12))
        return f"reconstructions: {path} (validation PSNR {psnr:.2f} dB)"


@register("model", "autoencoder", AutoencoderConfig)
def build_autoencoder(config: AutoencoderConfig, run=None) -> Autoencoder:
    return Autoencoder(config)


@register("objective", "autoencoder", AutoencoderObjectiveConfig)
def build_autoencoder_objective(config: AutoencoderObjectiveConfig, run=None) -> AutoencoderObjective:
    adversarial = bool(run is not None and getattr(run.model, "discriminator_channels", 0))
    return AutoencoderObjective(config, adversarial)
