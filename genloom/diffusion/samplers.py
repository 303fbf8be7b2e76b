"""Samplers: from noise to data with a denoise function, a NoiseSchedule and a torch.Generator.

`denoise(x, t)` is the network: `x` is a (B, ...) batch in the variance-preserving scaling it was trained on,
`t` a (B,) float32 tensor of (possibly fractional) training timesteps in [0, T-1], and the output is in the
schedule's prediction type (eps, x0 or v). Each sampler below is one short loop that reads like its paper's
algorithm, and each matches the diffusers scheduler named in its docstring: the same timesteps, the same
arithmetic in float32, and the same random draws from the same generator, so a seed gives the same sample.

With a `FlowSchedule` (flow matching) the network predicts a velocity and `t` is 1000 times the path time;
only the ODE samplers euler and heun apply, as diffusers' FlowMatchEulerDiscreteScheduler and
FlowMatchHeunDiscreteScheduler (with SD3's shift).
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor

from ..core.config import require
from .schedules import FlowSchedule, NoiseSchedule, split_prediction

__all__ = ["SAMPLERS", "FLOW_SAMPLERS", "SPACINGS", "sample", "function_evaluations", "timesteps_for", "karras_sigmas"]

SAMPLERS = ("ddpm", "ddim", "dpmpp_2m", "euler", "heun")
FLOW_SAMPLERS = ("euler", "heun")        # the ODE samplers, the only ones that apply to a flow-matching model
SPACINGS = ("leading", "trailing", "linspace")

Denoise = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[int, int], None]


# ----------------------------------------------------------------------------------------------
# Which timesteps and noise levels a sampler visits
# ----------------------------------------------------------------------------------------------

def _check_sampler(sampler: str) -> None:
    require(sampler in SAMPLERS, "sampler", f"{sampler!r} is unknown; valid samplers: {', '.join(SAMPLERS)}")


def function_evaluations(sampler: str, steps: int) -> int:
    """How many times `sampler` calls the network in `steps` steps (heun corrects all but the last step)."""
    _check_sampler(sampler)
    require(steps >= 1, "steps", f"must be at least 1, got {steps}")
    return 2 * steps - 1 if sampler == "heun" else steps


def _grid(timesteps: int, count: int, spacing: str) -> Tensor:
    """`count` descending integer timesteps out of `timesteps`, spaced as diffusers' `timestep_spacing`
    (with its default steps_offset of 0). See Lin et al. 2024 ("Common diffusion noise schedules and sample
    steps are flawed"), table 2: only trailing and linspace start at the last timestep T-1."""
    T = timesteps
    i = torch.arange(count, dtype=torch.float64)
    if spacing == "leading":                                   # 0, k, 2k, ... with k = T // count
        grid = (i * (T // count)).flip(0)
    elif spacing == "trailing":                                # T-1, T-1-T/count, ... (rounded)
        stride = (T - T / count) - T                           # numpy's arange stride, kept for identical rounding
        grid = (T + i * stride).round() - 1
    else:                                                      # 0 .. T-1 evenly (rounded)
        grid = (i * ((T - 1) / max(count - 1, 1))).round().flip(0)
    return grid.long()


def _check_steps(schedule: NoiseSchedule, steps: int, spacing: str) -> None:
    require(steps >= 1, "steps", f"must be at least 1, got {steps}")
    require(steps <= schedule.timesteps, "steps",
            f"{steps} is more than the schedule's {schedule.timesteps} training timesteps")
    require(spacing in SPACINGS, "spacing", f"{spacing!r} is unknown; valid spacings: {', '.join(SPACINGS)}")


def timesteps_for(schedule: NoiseSchedule, steps: int, spacing: str = "leading") -> Tensor:
    """The `steps` training timesteps (descending, int64) at which ddpm and ddim call the network.

    dpmpp_2m uses steps + 1 of them without the final t = 0 for leading and linspace spacing (its last step
    goes to clean data); euler and heun take their sigma range from the first and last of them.
    """
    _check_steps(schedule, steps, spacing)
    return _grid(schedule.timesteps, steps, spacing)


def _dpm_timesteps(schedule: NoiseSchedule, steps: int, spacing: str) -> Tensor:
    """DPM-Solver's timesteps (diffusers' DPMSolverMultistepScheduler): its last step goes to clean data
    (sigma 0) instead of to t = 0, so leading and linspace grids take steps + 1 points and drop the final 0."""
    _check_steps(schedule, steps, spacing)
    if spacing == "trailing":
        return _grid(schedule.timesteps, steps, spacing)
    require(steps < schedule.timesteps, "steps",
            f"dpmpp_2m with {spacing} spacing needs fewer steps than the {schedule.timesteps} training timesteps")
    return _grid(schedule.timesteps, steps + 1, spacing)[:-1]


def karras_sigmas(schedule: NoiseSchedule, steps: int, spacing: str = "leading") -> Tensor:
    """`steps` noise levels from Karras et al. 2022, eq. 5 (rho = 7), then a final 0: (steps + 1,) float64.

    sigma_max and sigma_min are the sigmas at the first and last timesteps of the `spacing` grid, as in
    diffusers' EulerDiscreteScheduler(use_karras_sigmas=True).
    """
    grid = timesteps_for(schedule, steps, spacing)
    sigma_max, sigma_min = schedule.sigmas[grid[0]].item(), schedule.sigmas[grid[-1]].item()
    rho = 7.0
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


# ----------------------------------------------------------------------------------------------
# Helpers shared by the samplers
# ----------------------------------------------------------------------------------------------

def _evaluate(denoise: Denoise, x: torch.Tensor, t: float) -> Tensor:
    """The network output at timestep `t` for every example of `x`, in the state's dtype."""
    times = torch.full((x.shape[0],), t, dtype=torch.float32, device=x.device)     # (B,)
    return denoise(x, times).to(x.dtype)


def _noise_like(x: torch.Tensor, generator: torch.Generator) -> Tensor:
    """Standard normal noise drawn on the generator's device (so a CPU generator gives the same numbers
    whatever device `x` is on), as diffusers' randn_tensor does."""
    return torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)


def _strided_steps(schedule: NoiseSchedule, timesteps: torch.Tensor) -> Iterator[tuple[int, Tensor, Tensor]]:
    """(t, ā_t, ā_prev) per step, where ā_prev belongs to the next timestep visited (1 after the last)."""
    alphas_cumprod, ts = schedule.alphas_cumprod, timesteps.tolist()
    for i, t in enumerate(ts):
        yield t, alphas_cumprod[t], alphas_cumprod[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)


def _vp_scales(sigma: Tensor) -> tuple[Tensor, Tensor]:
    """(alpha, sigma_vp) of x_t = alpha x0 + sigma_vp eps at the variance-exploding noise level sigma."""
    alpha = 1 / (sigma ** 2 + 1) ** 0.5
    return alpha, sigma * alpha


def _denoised_ve(prediction: str, output: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
    """D(x; sigma) = c_skip x + c_out F for a variance-preserving network in the variance-exploding view
    x = x0 + sigma eps (Karras et al. 2022, table 1). Unlike `split_prediction` it never divides by alpha,
    which is ~5e-5 at the end of the cosine schedule."""
    if prediction == "eps":
        return x - sigma * output
    if prediction == "x0":
        return output
    return output * (-sigma / (sigma ** 2 + 1) ** 0.5) + x / (sigma ** 2 + 1)


# ----------------------------------------------------------------------------------------------
# The samplers, each from its paper. x is the float32 state; report(i, n) runs after step i of n.
# ----------------------------------------------------------------------------------------------

def _sample_ddpm(denoise: Denoise, schedule: NoiseSchedule, x: Tensor, timesteps: Tensor,
                 generator: torch.Generator, report: Callback) -> Tensor:
    """Ancestral sampling (Ho et al. 2020, algorithm 2) over strided timesteps, with the posterior variance
    ("fixed small"). diffusers' DDPMScheduler(variance_type="fixed_small", clip_sample=False)."""
    for i, (t, ab_t, ab_prev) in enumerate(_strided_steps(schedule, timesteps)):
        x0, _ = split_prediction(schedule.prediction, _evaluate(denoise, x, t), x, ab_t ** 0.5, (1 - ab_t) ** 0.5)
        alpha_t = ab_t / ab_prev                                  # alpha and beta of this (strided) step
        beta_t = 1 - alpha_t
        # The mean of q(x_prev | x_t, x0), eq. 7.
        x_prev = (ab_prev ** 0.5 * beta_t / (1 - ab_t)) * x0 + (alpha_t ** 0.5 * (1 - ab_prev) / (1 - ab_t)) * x
        if t > 0:
            variance = ((1 - ab_prev) / (1 - ab_t) * beta_t).clamp(min=1e-20)   # beta tilde, eq. 7
            x_prev = x_prev + variance ** 0.5 * _noise_like(x, generator)
        x = x_prev
        report(i + 1, len(timesteps))
    return x


def _sample_ddim(denoise: Denoise, schedule: NoiseSchedule, x: Tensor, timesteps: Tensor, eta: float,
                 generator: torch.Generator, report: Callback) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12): eta = 0 is deterministic, eta = 1 adds DDPM's variance (eq. 16).
    diffusers' DDIMScheduler(clip_sample=False, set_alpha_to_one=True)."""
    for i, (t, ab_t, ab_prev) in enumerate(_strided_steps(schedule, timesteps)):
        output = _evaluate(denoise, x, t)
        x0, eps = split_prediction(schedule.prediction, output, x, ab_t ** 0.5, (1 - ab_t) ** 0.5)
        std = eta * ((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)) ** 0.5            # sigma_t, eq. 16
        x = ab_prev ** 0.5 * x0 + (1 - ab_prev - std ** 2).clamp(min=0) ** 0.5 * eps     # eq. 12
        if eta > 0:
            x = x + std * _noise_like(x, generator)    # drawn at every step (std is 0 at the last), as diffusers
        report(i + 1, len(timesteps))
    return x


def _sample_dpmpp_2m(denoise: Denoise, schedule: NoiseSchedule, x: Tensor, timesteps: Tensor,
                     report: Callback) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, algorithm 2): a multistep second-order solver of the diffusion ODE in
    data-prediction form, first order at the first step. The last step lands on sigma = 0, where the update is
    the data prediction itself. diffusers' DPMSolverMultistepScheduler(algorithm_type="dpmsolver++",
    solver_order=2, solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero")."""
    sigmas = torch.cat([schedule.sigmas[timesteps], torch.zeros(1)])   # (steps + 1,) variance-exploding levels
    previous_x0 = previous_h = None
    for i, t in enumerate(timesteps.tolist()):
        alpha_s, sigma_s = _vp_scales(sigmas[i])
        x0, _ = split_prediction(schedule.prediction, _evaluate(denoise, x, t), x, alpha_s, sigma_s)
        if sigmas[i + 1] == 0:
            x = x0
        else:
            alpha_t, sigma_t = _vp_scales(sigmas[i + 1])
            h = (alpha_t.log() - sigma_t.log()) - (alpha_s.log() - sigma_s.log())   # step in lambda = log(alpha/sigma)
            decay = alpha_t * (torch.exp(-h) - 1)
            x = (sigma_t / sigma_s) * x - decay * x0                                # first order (DDIM)
            if previous_x0 is not None:                                             # D = x0 + (x0 - x0_prev) / (2r)
                r = previous_h / h
                x = x - 0.5 * decay * ((1 / r) * (x0 - previous_x0))
            previous_x0, previous_h = x0, h
        report(i + 1, len(timesteps))
    return x


def _sample_euler(denoise: Denoise, schedule: NoiseSchedule, x: Tensor, sigmas: Tensor, report: Callback) -> Tensor:
    """Euler steps on the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma (Karras et al. 2022,
    eq. 3 and algorithm 1 without the correction), in the variance-exploding view x = x_vp / sqrt(ā).
    diffusers' EulerDiscreteScheduler(use_karras_sigmas=True)."""
    timesteps = schedule.timestep_at(sigmas[:-1]).tolist()   # from the exact levels, as diffusers
    sigmas = sigmas.float()                                  # the steps use their float32 rounding
    for i, t in enumerate(timesteps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        output = _evaluate(denoise, x / (sigma ** 2 + 1) ** 0.5, t)
        d = (x - _denoised_ve(schedule.prediction, output, x, sigma)) / sigma
        x = x + d * (sigma_next - sigma)
        report(i + 1, len(timesteps))
    return x


def _sample_heun(denoise: Denoise, schedule: NoiseSchedule, x: Tensor, sigmas: Tensor, report: Callback) -> Tensor:
    """Heun's second-order method (Karras et al. 2022, algorithm 1): an Euler step, then a step with the mean
    of the slopes at both ends, except on the last step to sigma = 0.
    diffusers' HeunDiscreteScheduler(use_karras_sigmas=True)."""
    timesteps = schedule.timestep_at(sigmas[:-1]).tolist()   # from the exact levels, as diffusers
    sigmas = sigmas.float()                                  # the steps use their float32 rounding
    for i, t in enumerate(timesteps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        output = _evaluate(denoise, x / (sigma ** 2 + 1) ** 0.5, t)
        d = (x - _denoised_ve(schedule.prediction, output, x, sigma)) / sigma
        dt = sigma_next - sigma
        x_next = x + d * dt
        if sigma_next > 0:
            output = _evaluate(denoise, x_next / (sigma_next ** 2 + 1) ** 0.5, timesteps[i + 1])
            d_next = (x_next - _denoised_ve(schedule.prediction, output, x_next, sigma_next)) / sigma_next
            x_next = x + (d + d_next) / 2 * dt
        x = x_next
        report(i + 1, len(timesteps))
    return x


def _sample_flow(denoise: Denoise, schedule: FlowSchedule, x: Tensor, sampler: str, steps: int, spacing: str,
                 init: Tensor | None, skip: int, report: Callback) -> Tensor:
    """Euler or Heun steps on the flow ODE dx/dt = v(x, t) from t = 1 (noise) to 0, over `schedule.sigmas`.
    Euler: diffusers' FlowMatchEulerDiscreteScheduler; heun: FlowMatchHeunDiscreteScheduler (an Euler step, then
    one with the mean of the velocities at both ends, except on the last step to t = 0). Image-to-image starts
    at the (skip + 1)-th level from init noised to it, as diffusers' SD3 img2img pipeline."""
    sigmas = schedule.sigmas(steps, spacing)[skip:]
    times = schedule.model_time(sigmas[:-1]).tolist()           # what the network sees: 1000 t, float32
    if init is not None:
        x = (1 - sigmas[0]) * init.to(torch.float32) + sigmas[0] * x
    for i, t in enumerate(times):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        dt = sigma_next - sigma
        velocity = _evaluate(denoise, x, t)
        x_next = x + dt * velocity
        if sampler == "heun" and sigma_next > 0:
            velocity_next = _evaluate(denoise, x_next, times[i + 1])
            x_next = x + dt * (velocity + velocity_next) / 2
        x = x_next
        report(i + 1, len(times))
    return x


def _check_flow(sampler: str, spacing: str) -> str:
    """The flow grid for `spacing`: trailing (also for leading, the default everywhere: a flow model has no
    grid that starts short of pure noise) or linspace."""
    require(sampler in FLOW_SAMPLERS, "sampler",
            f"{sampler!r} does not work with a flow-matching model (it predicts a velocity, which the ODE samplers "
            f"integrate); use one of {', '.join(FLOW_SAMPLERS)}" if sampler in SAMPLERS else
            f"{sampler!r} is unknown; valid samplers for a flow-matching model: {', '.join(FLOW_SAMPLERS)}")
    require(spacing in SPACINGS, "spacing", f"{spacing!r} is unknown; valid spacings: {', '.join(SPACINGS)}")
    return "linspace" if spacing == "linspace" else "trailing"


# ----------------------------------------------------------------------------------------------
# The entry point
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def sample(denoise: Denoise, schedule: NoiseSchedule, shape: Sequence[int], generator: torch.Generator,
           sampler: str = "dpmpp_2m", steps: int = 20, spacing: str = "leading", eta: float = 0.0,
           callback: Callback | None = None, x_T: Tensor | None = None, init: Tensor | None = None,
           strength: float = 1.0) -> Tensor:
    """A float32 batch of `shape` drawn from the network `denoise` (see the module docstring) in `steps` steps.

    x_T is the starting standard normal noise, drawn from `generator` when None, and scaled like diffusers'
    `init_noise_sigma`. `eta` is DDIM's noise scale (ddim only). `callback(i, n)` runs after step i of n
    (heun's steps call the network twice, see `function_evaluations`). The state is kept in float32.

    Image-to-image (SDEdit, Meng et al. 2022): with `init` (clean data of `shape`), only the last
    round(steps * strength) steps run, starting from `init` noised to the level of the first of them, as
    diffusers' img2img pipelines do; strength 0 returns `init` unchanged.

    With a `FlowSchedule` the samplers are euler and heun on the flow ODE (see `_sample_flow`), and `spacing`
    picks the grid of `FlowSchedule.sigmas`: trailing (the default; leading gives it too) or linspace.
    """
    flow = isinstance(schedule, FlowSchedule)
    if flow:
        spacing = _check_flow(sampler, spacing)
        require(steps >= 1, "steps", f"must be at least 1, got {steps}")
    else:
        _check_sampler(sampler)
        _check_steps(schedule, steps, spacing)
    require(0 <= eta <= 1, "eta", f"must be between 0 (deterministic) and 1 (DDPM's variance), got {eta}")
    require(eta == 0 or sampler == "ddim", "eta", f"only the ddim sampler takes eta; {sampler} got eta={eta}")
    if x_T is None:
        x_T = torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=torch.float32)
    elif tuple(x_T.shape) != tuple(shape):
        raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {tuple(shape)}")
    require(0 <= strength <= 1, "strength", f"must be between 0 (keep the image) and 1 (redraw it), got {strength}")
    if init is not None and tuple(init.shape) != tuple(shape):
        raise ValueError(f"init has shape {tuple(init.shape)}, expected {tuple(shape)}")
    x = x_T.to(torch.float32)
    report = callback if callback is not None else (lambda i, n: None)
    skip = 0 if init is None else steps - round(steps * strength)    # image-to-image: the steps left out
    if init is not None and skip == steps:
        return init.to(torch.float32).clone()
    if flow:
        return _sample_flow(denoise, schedule, x, sampler, steps, spacing, init, skip, report)

    if sampler in ("ddpm", "ddim", "dpmpp_2m"):
        grid = timesteps_for(schedule, steps, spacing) if sampler != "dpmpp_2m" else _dpm_timesteps(schedule, steps, spacing)
        grid = grid[skip:]
        if init is not None:                                           # x_t = sqrt(ā) x0 + sqrt(1 - ā) eps
            ab = schedule.alphas_cumprod[grid[0]].float()
            x = ab ** 0.5 * init.to(torch.float32) + (1 - ab) ** 0.5 * x
        if sampler == "ddpm":
            return _sample_ddpm(denoise, schedule, x, grid, generator, report)
        if sampler == "ddim":
            return _sample_ddim(denoise, schedule, x, grid, eta, generator, report)
        return _sample_dpmpp_2m(denoise, schedule, x, grid, report)
    sigmas = karras_sigmas(schedule, steps, spacing)
    if init is not None:                                               # variance-exploding: x = x0 + sigma eps
        sigmas = sigmas[skip:]
        x = init.to(torch.float32) + sigmas[0].float() * x
        return (_sample_euler if sampler == "euler" else _sample_heun)(denoise, schedule, x, sigmas, report)
    # The variance-exploding state starts at sigma_max times the noise, except that diffusers scales leading
    # spacing by sqrt(sigma_max² + 1), which makes the network's first input exactly the noise.
    sigma_max = sigmas[0].float()
    x = x * (sigma_max if spacing in ("linspace", "trailing") else (sigma_max ** 2 + 1) ** 0.5)
    if sampler == "euler":
        return _sample_euler(denoise, schedule, x, sigmas, report)
    return _sample_heun(denoise, schedule, x, sigmas, report)
