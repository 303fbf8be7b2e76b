"""The variance-preserving noise schedule of discrete-time diffusion (Ho et al. 2020).

A training example at timestep t is `x_t = sqrt(ā_t) x0 + sqrt(1 - ā_t) eps`, where ā_t is the cumulative
product of (1 - β) up to t. The network sees x_t and t and predicts eps, x0 or v (Salimans & Ho 2022);
everything here converts between those views. The tables are float32 and built the way diffusers builds
them (float32 linspace, float32 cumulative product), so that a model trained with diffusers' schedulers sees
exactly the same noise levels here; the float32 rounding (about 1e-6 relative) is far below what a network
notices.

`FlowSchedule` is the other kind: the straight path of flow matching (rectified flow, Liu et al. 2022;
Lipman et al. 2022), in the convention of SD3 (Esser et al. 2024) and diffusers'
FlowMatchEulerDiscreteScheduler: x_t = (1 - t) x0 + t noise for t in [0, 1] (t = 1 is pure noise), and the
network predicts the velocity v = dx_t/dt = noise - x0, seeing the timestep 1000 t.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import torch

from ..core.config import require, validate

__all__ = ["NoiseSchedule", "FlowSchedule", "split_prediction"]

Prediction = Literal["eps", "x0", "v"]


def split_prediction(prediction: str, output: torch.Tensor, x_t: torch.Tensor, alpha: torch.Tensor,
                     sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) from a network output, where `x_t = alpha x0 + sigma eps` and `alpha² + sigma² = 1`.

    `alpha` and `sigma` broadcast against `x_t`. The samplers call this with their own noise levels
    (which may sit between training timesteps), the schedule with the levels of integer timesteps.
    """
    if prediction == "eps":
        return (x_t - sigma * output) / alpha, output
    if prediction == "x0":
        return output, (x_t - alpha * output) / sigma
    if prediction == "v":
        # v = alpha eps - sigma x0 (Salimans & Ho 2022, sec. 4); with alpha² + sigma² = 1 it inverts as below.
        return alpha * x_t - sigma * output, alpha * output + sigma * x_t
    raise ValueError(f"unknown prediction type {prediction!r}; expected eps, x0 or v")


@dataclass(frozen=True)
class NoiseSchedule:
    kind: Literal["linear", "cosine"] = "cosine"  # linear: DDPM's betas; cosine: Nichol & Dhariwal 2021
    timesteps: int = 1000                         # T, the number of training timesteps (t = 0 .. T-1)
    prediction: Prediction = "v"                  # what the network predicts: eps, x0 or v
    beta_start: float = 1e-4                      # β_0 of the linear schedule
    beta_end: float = 0.02                        # β_{T-1} of the linear schedule

    def __post_init__(self) -> None:
        validate(self, "diffusion")
        require(self.timesteps >= 2, "diffusion.timesteps", f"must be >= 2, got {self.timesteps}")
        require(0 < self.beta_start < 1, "diffusion.beta_start", f"must be in (0, 1), got {self.beta_start}")
        require(self.beta_start <= self.beta_end < 1, "diffusion.beta_end",
                f"must be in [beta_start, 1), got {self.beta_end} with beta_start={self.beta_start}")

    # ------------------------------------------------------------------------------------------
    # Tables over the training timesteps, each (T,) float32 on the CPU
    # ------------------------------------------------------------------------------------------

    @cached_property
    def betas(self) -> torch.Tensor:
        """β_t, the variance added at step t."""
        T = self.timesteps
        if self.kind == "linear":
            # Ho et al. 2020, sec. 4: linear from beta_start to beta_end (a float32 linspace, as diffusers).
            return torch.linspace(self.beta_start, self.beta_end, T, dtype=torch.float32)
        # Nichol & Dhariwal 2021, eq. 17: ā(t) = f(t) / f(0), f(t) = cos²((t/T + s) / (1 + s) · π/2), s = 0.008;
        # β_t = 1 - ā(t+1) / ā(t), clipped at 0.999 to avoid the singularity at t = T.
        f = [math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2 for t in range(T + 1)]
        return torch.tensor([min(1 - f[t + 1] / f[t], 0.999) for t in range(T)], dtype=torch.float64).float()

    @cached_property
    def alphas_cumprod(self) -> torch.Tensor:
        """ā_t = prod_{s <= t} (1 - β_s): x_t keeps sqrt(ā_t) of the signal."""
        return torch.cumprod(1.0 - self.betas, dim=0)

    @cached_property
    def sigmas(self) -> torch.Tensor:
        """sqrt((1 - ā_t) / ā_t): the noise level of x_t / sqrt(ā_t), the variance-exploding view
        (Karras et al. 2022)."""
        ac = self.alphas_cumprod
        return ((1 - ac) / ac) ** 0.5

    @cached_property
    def log_sigmas(self) -> torch.Tensor:
        """log(sigmas), in float32 like diffusers' table for mapping a sigma back to a timestep."""
        return self.sigmas.log()

    # ------------------------------------------------------------------------------------------
    # Per-example quantities; t is a (B,) integer tensor of training timesteps
    # ------------------------------------------------------------------------------------------

    def _alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        return self.alphas_cumprod.to(t.device)[t]                              # (B,)

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio ā_t / (1 - ā_t), (B,)."""
        ab = self._alpha_bar(t)
        return ab / (1 - ab)

    def _scales(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sqrt(ā_t) and sqrt(1 - ā_t), shaped (B, 1, ...) to broadcast against `like`."""
        ab = self._alpha_bar(t).view(-1, *([1] * (like.dim() - 1)))
        return ab ** 0.5, (1 - ab) ** 0.5

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ā_t) x0 + sqrt(1 - ā_t) noise (Ho et al. 2020, eq. 4)."""
        alpha, sigma = self._scales(t, x0)
        return alpha * x0 + sigma * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network should output for x_t = add_noise(x0, noise, t)."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        alpha, sigma = self._scales(t, x0)
        return alpha * noise - sigma * x0                                       # v (Salimans & Ho 2022)

    def to_x0_eps(self, model_output: torch.Tensor, x_t: torch.Tensor,
                  t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0_hat, eps_hat) from the network output at integer timesteps t.

        Fractional timesteps are not interpolated here: the samplers that visit them (euler, heun) carry their
        own noise levels and call `split_prediction` directly.
        """
        alpha, sigma = self._scales(t, x_t)
        return split_prediction(self.prediction, model_output, x_t, alpha, sigma)

    def min_snr_weight(self, t: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
        """Min-SNR-γ loss weights (Hang et al. 2023), (B,), for this schedule's prediction type.

        The paper weights the x0 error by min(snr, γ); an eps (or v) error equals the x0 error times
        snr (or snr + 1), so it is divided by that factor to give the same weighting.
        """
        snr = self.snr(t)
        clipped = snr.clamp(max=gamma)
        if self.prediction == "eps":
            return clipped / snr
        if self.prediction == "x0":
            return clipped
        return clipped / (snr + 1)

    def alpha_bar_at(self, t: torch.Tensor) -> torch.Tensor:
        """ā at (possibly fractional) timesteps `t`, interpolating log-sigma as `timestep_at` does (its inverse)."""
        t = t.double().clamp(0, self.timesteps - 1)
        low = t.floor().long().clamp(max=self.timesteps - 2)
        weight = t - low
        log_sigmas = self.log_sigmas.double().to(t.device)
        log_sigma = log_sigmas[low] * (1 - weight) + log_sigmas[low + 1] * weight
        return 1 / (1 + (2 * log_sigma).exp())

    def noised(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0 noised to the level of the (possibly fractional) network timesteps `t` (B,): what a sampler's state
        holds there (inpainting replaces the kept pixels by this)."""
        ab = self.alpha_bar_at(t).to(x0).view(-1, *([1] * (x0.dim() - 1)))
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def timestep_at(self, sigma: torch.Tensor) -> torch.Tensor:
        """The fractional training timestep whose sigma is `sigma` (any shape), found by interpolating
        log-sigma linearly between neighbouring timesteps and clamped to [0, T-1], as diffusers does."""
        log_sigmas = self.log_sigmas.double()                                   # (T,), increasing
        log_sigma = sigma.double().clamp(min=1e-10).log()
        low = (torch.searchsorted(log_sigmas, log_sigma, right=True) - 1).clamp(0, self.timesteps - 2)
        weight = ((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1])).clamp(0, 1)
        return low + weight


@dataclass(frozen=True)
class FlowSchedule:
    """The straight path of flow matching: x_t = (1 - t) x0 + t noise, velocity target noise - x0.

    `timesteps` only scales what the network sees (1000 t, as diffusers' `num_train_timesteps`), so a
    denoiser's timestep embedding works unchanged. `shift` moves the sampling steps towards the noisy end
    (SD3, eq. 23: t' = shift t / (1 + (shift - 1) t); 1 = evenly spaced in t, SD3 uses 3 at 1024 px).
    """

    shift: float = 1.0
    timesteps: int = 1000

    prediction = "velocity"          # what the network predicts (not a field: flow models predict nothing else)

    def __post_init__(self) -> None:
        validate(self, "objective")
        require(self.shift > 0, "objective.shift", f"must be positive (1 = no shift, SD3 uses 3), got {self.shift}")
        require(self.timesteps >= 2, "objective.timesteps", f"must be >= 2, got {self.timesteps}")

    @staticmethod
    def _view(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return t.to(like).view(-1, *([1] * (like.dim() - 1)))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = (1 - t) x0 + t noise for t (B,) in [0, 1]."""
        t = self._view(t, x0)
        return (1 - t) * x0 + t * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The velocity of the straight path, d x_t / dt = noise - x0 (the same at every t)."""
        return noise - x0

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """The timestep the network sees for path time t: timesteps * t, float32."""
        return t.float() * self.timesteps

    def shifted(self, t: torch.Tensor) -> torch.Tensor:
        """SD3's timestep shift t' = shift t / (1 + (shift - 1) t), in t's dtype."""
        return self.shift * t / (1 + (self.shift - 1) * t)

    def to_x0_noise(self, velocity: torch.Tensor, x_t: torch.Tensor,
                    t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, noise) from a predicted velocity at path time t: x0 = x_t - t v, noise = x_t + (1 - t) v."""
        t = self._view(t, x_t)
        return x_t - t * velocity, x_t + (1 - t) * velocity

    def noised(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0 noised to the level of the network timesteps `t` (B,) (= timesteps * path time)."""
        return self.add_noise(x0, noise, t.double() / self.timesteps)

    def sigmas(self, steps: int, spacing: str = "trailing") -> torch.Tensor:
        """The `steps` path times a sampler visits, then a final 0: (steps + 1,) float32, as diffusers'
        FlowMatchEulerDiscreteScheduler(shift=shift) builds them.

        trailing: 1, 1 - 1/steps, ..., 1/steps, shifted (`set_timesteps(sigmas=linspace(1, 1/steps, steps))`,
        the grid of diffusers' Flux pipeline): evenly spaced steps that end at 0. linspace: evenly spaced between
        the largest and smallest shifted training levels (1 and shift(1 / timesteps)), then shifted again
        (`set_timesteps(steps)`, the SD3 pipeline's grid); its last step, from about 0.001 to 0, does little,
        which matters at a few steps.
        """
        import numpy as np

        require(steps >= 1, "steps", f"must be at least 1, got {steps}")
        N = self.timesteps
        if spacing == "trailing":
            times = np.linspace(1.0, 1 / steps, steps).astype(np.float32)
            levels = torch.from_numpy(self.shift * times / (1 + (self.shift - 1) * times)).float()
        else:
            lowest = self.shifted(torch.tensor(1.0, dtype=torch.float32) / N).item()   # float32, as diffusers
            highest = self.shifted(torch.tensor(float(N), dtype=torch.float32) / N).item()
            times = np.linspace(highest * N, lowest * N, steps) / N                   # float64
            levels = torch.from_numpy(self.shift * times / (1 + (self.shift - 1) * times)).float()
        return torch.cat([levels, levels.new_zeros(1)])
