"""Samplers: step-by-step parity with diffusers' schedulers, exact answers on Gaussian data, and errors."""

import itertools

import pytest
import torch

from genloom.core.errors import ConfigError
from genloom.diffusion.samplers import (
    SAMPLERS,
    function_evaluations,
    karras_sigmas,
    sample,
    timesteps_for,
)
from genloom.diffusion.schedules import NoiseSchedule

# diffusers' schedulers call np.array on tensors in a way NumPy 2 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SHAPE = (2, 1, 4, 4)
STEPS = 10
DIFFUSERS_PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
DIFFUSERS_BETA_SCHEDULE = {"linear": "linear", "cosine": "squaredcos_cap_v2"}


def recording_model(calls: list):
    """A deterministic stand-in for a network that records every (input, timestep) it is given."""
    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append((x.clone(), t.clone()))
        return torch.tanh(x * 0.7 + t.view(-1, 1, 1, 1) / 1000)
    return denoise


def diffusers_scheduler(sampler: str, kind: str, prediction: str, spacing: str):
    diffusers = pytest.importorskip("diffusers")
    common = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule=DIFFUSERS_BETA_SCHEDULE[kind],
                  prediction_type=DIFFUSERS_PREDICTION[prediction], timestep_spacing=spacing)
    if sampler == "ddpm":
        return diffusers.DDPMScheduler(variance_type="fixed_small", clip_sample=False, **common)
    if sampler == "ddim":
        return diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=True, **common)
    if sampler == "dpmpp_2m":
        return diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
                                                     solver_type="midpoint", lower_order_final=True, **common)
    if sampler == "euler":
        return diffusers.EulerDiscreteScheduler(use_karras_sigmas=True, **common)
    return diffusers.HeunDiscreteScheduler(use_karras_sigmas=True, **common)


def run_diffusers(scheduler, sampler: str, eta: float, seed: int, calls: list) -> tuple[torch.Tensor, torch.Generator]:
    """The usual diffusers pipeline loop: set timesteps, draw latents, scale them by init_noise_sigma, then
    scale_model_input and step."""
    model = recording_model(calls)
    generator = torch.Generator().manual_seed(seed)
    scheduler.set_timesteps(STEPS)
    x = torch.randn(SHAPE, generator=generator) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        output = model(scheduler.scale_model_input(x, t), t.float().expand(SHAPE[0]))
        extra = {}
        if sampler == "ddpm":
            extra = {"generator": generator}
        elif sampler == "ddim":
            extra = {"eta": eta, "generator": generator}
        x = scheduler.step(output, t, x, **extra).prev_sample
    return x, generator


def run_genloom(sampler: str, kind: str, prediction: str, spacing: str, eta: float, seed: int,
                calls: list) -> tuple[torch.Tensor, torch.Generator]:
    generator = torch.Generator().manual_seed(seed)
    schedule = NoiseSchedule(kind=kind, prediction=prediction)
    x = sample(recording_model(calls), schedule, SHAPE, generator, sampler=sampler, steps=STEPS, spacing=spacing,
               eta=eta)
    return x, generator


# diffusers' DDIMScheduler always steps to t - T // steps, which is not the next timestep of a linspace grid
# (999 -> 899 while the next model call is at 888); genloom steps to the next timestep, so the two differ there.
PARITY_CASES = [
    (sampler, kind, prediction, spacing)
    for sampler, kind, prediction, spacing in itertools.product(
        SAMPLERS, ["linear", "cosine"], ["eps", "x0", "v"], ["leading", "trailing", "linspace"])
    if not (sampler == "ddim" and spacing == "linspace")
]


@pytest.mark.parametrize("sampler, kind, prediction, spacing", PARITY_CASES)
def test_every_step_matches_diffusers(sampler, kind, prediction, spacing):
    reference_calls, calls = [], []
    expected, reference_generator = run_diffusers(diffusers_scheduler(sampler, kind, prediction, spacing), sampler,
                                                  0.0, 0, reference_calls)
    result, generator = run_genloom(sampler, kind, prediction, spacing, 0.0, 0, calls)
    assert len(calls) == len(reference_calls) == function_evaluations(sampler, STEPS)
    for (x, t), (x_ref, t_ref) in zip(calls, reference_calls):
        torch.testing.assert_close(t, t_ref, rtol=0, atol=1e-3)       # fractional for euler and heun
        torch.testing.assert_close(x, x_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-5)
    # Both drew the same random numbers, so the generators end in the same state.
    assert torch.equal(generator.get_state(), reference_generator.get_state())


@pytest.mark.parametrize("eta", [0.5, 1.0])
@pytest.mark.parametrize("kind, prediction, spacing", [("linear", "eps", "leading"), ("cosine", "v", "trailing"),
                                                       ("cosine", "x0", "leading")])
def test_stochastic_ddim_matches_diffusers_noise_for_noise(eta, kind, prediction, spacing):
    reference_calls, calls = [], []
    expected, reference_generator = run_diffusers(diffusers_scheduler("ddim", kind, prediction, spacing), "ddim",
                                                  eta, 3, reference_calls)
    result, generator = run_genloom("ddim", kind, prediction, spacing, eta, 3, calls)
    for (x, _), (x_ref, _) in zip(calls, reference_calls, strict=True):
        torch.testing.assert_close(x, x_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-5)
    assert torch.equal(generator.get_state(), reference_generator.get_state())


def test_timesteps_equal_diffusers_for_every_step_count():
    diffusers = pytest.importorskip("diffusers")
    for T, spacing in itertools.product([1000, 37], ["leading", "trailing", "linspace"]):
        schedule = NoiseSchedule(timesteps=T)
        reference = diffusers.DDPMScheduler(num_train_timesteps=T, timestep_spacing=spacing)
        for steps in range(1, T + 1, 1 if T < 100 else 7):
            reference.set_timesteps(steps)
            if len(reference.timesteps) != steps:
                continue      # diffusers' trailing grid has steps + 1 entries for some counts (e.g. 61 of 1000)
            assert torch.equal(timesteps_for(schedule, steps, spacing), reference.timesteps), (T, spacing, steps)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_dpm_solver_visits_diffusers_timesteps(spacing):
    diffusers = pytest.importorskip("diffusers")
    reference = diffusers.DPMSolverMultistepScheduler(timestep_spacing=spacing)
    schedule = NoiseSchedule(kind="linear", prediction="eps")
    for steps in (1, 2, 7, 25, 64):
        calls = []
        sample(recording_model(calls), schedule, (1, 1, 1, 1), torch.Generator().manual_seed(0), steps=steps,
               spacing=spacing)
        reference.set_timesteps(steps)
        assert [t[0].item() for _, t in calls] == reference.timesteps.tolist()


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_karras_sigmas_equal_diffusers(kind, spacing):
    diffusers = pytest.importorskip("diffusers")
    reference = diffusers.EulerDiscreteScheduler(use_karras_sigmas=True, beta_schedule=DIFFUSERS_BETA_SCHEDULE[kind],
                                                 timestep_spacing=spacing)
    for steps in (1, 4, 30):
        reference.set_timesteps(steps)
        assert torch.equal(karras_sigmas(NoiseSchedule(kind=kind), steps, spacing).float(), reference.sigmas)


# ----------------------------------------------------------------------------------------------
# Without diffusers: data from N(mean, std²), whose ideal denoiser is known in closed form
# ----------------------------------------------------------------------------------------------

MEAN, STD = 0.3, 0.5


def gaussian_denoiser(schedule: NoiseSchedule, mean=MEAN, std=STD):
    """The exact network for data ~ N(mean, std²): E[x0 | x_t] in the schedule's prediction type.
    Fractional timesteps get their noise level by interpolating log-sigma, as the samplers assume."""
    log_sigmas = schedule.sigmas.double().log()

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.double().view(-1, *[1] * (x.dim() - 1))
        low = t.floor().long().clamp(max=schedule.timesteps - 2)
        log_sigma = torch.lerp(log_sigmas[low], log_sigmas[low + 1], t - low)
        alpha = 1 / (log_sigma.exp() ** 2 + 1).sqrt()
        sigma = (1 - alpha ** 2).sqrt()
        x = x.double()
        x0 = mean + alpha * std ** 2 / (alpha ** 2 * std ** 2 + sigma ** 2) * (x - alpha * mean)
        eps = (x - alpha * x0) / sigma
        output = {"eps": eps, "x0": x0, "v": alpha * eps - sigma * x0}[schedule.prediction]
        return output.float()
    return denoise


def error_from_exact_flow(sampler: str, prediction: str, steps: int) -> float:
    """How far `sampler` lands from the exact probability-flow ODE solution for Gaussian data. That flow is
    affine: the first network input x, at noise level ā, goes to
    MEAN + STD (x - sqrt(ā) MEAN) / sqrt(ā STD² + 1 - ā)."""
    schedule = NoiseSchedule(kind="cosine", prediction=prediction)
    calls = []
    exact = gaussian_denoiser(schedule)

    def denoise(x, t):
        calls.append((x.clone(), t.clone()))
        return exact(x, t)

    result = sample(denoise, schedule, (4, 1, 8, 8), torch.Generator().manual_seed(0), sampler=sampler,
                    steps=steps, spacing="trailing")
    x_first, t_first = calls[0]
    alpha_bar = schedule.alphas_cumprod[t_first.round().long()].view(-1, 1, 1, 1)
    expected = MEAN + STD * (x_first - alpha_bar.sqrt() * MEAN) / (alpha_bar * STD ** 2 + 1 - alpha_bar).sqrt()
    return (result - expected).abs().max().item()


# (largest error at 40 steps, largest error(40 steps) / error(20 steps)): first-order methods halve their
# error when the steps double, heun (second order) quarters it; dpmpp_2m is already down to the error of its
# first-order last step.
CONVERGENCE = {"ddim": (0.1, 0.55), "euler": (0.3, 0.6), "heun": (0.1, 0.3), "dpmpp_2m": (0.005, 0.7)}


@pytest.mark.parametrize("sampler", list(CONVERGENCE))
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_deterministic_samplers_converge_to_the_exact_flow_of_gaussian_data(sampler, prediction):
    largest, ratio = CONVERGENCE[sampler]
    coarse, fine = error_from_exact_flow(sampler, prediction, 20), error_from_exact_flow(sampler, prediction, 40)
    assert fine < largest
    assert fine < ratio * coarse


@pytest.mark.parametrize("sampler, eta", [("ddpm", 0.0), ("ddim", 1.0)])
def test_ancestral_sampling_over_all_timesteps_draws_from_gaussian_data(sampler, eta):
    # With every timestep, ancestral sampling with the exact denoiser samples the data distribution
    # (with few strided steps the "fixed small" variance makes samples too narrow, as Ho et al. note).
    schedule = NoiseSchedule(kind="cosine", prediction="eps")
    result = sample(gaussian_denoiser(schedule), schedule, (1, 1, 64, 64), torch.Generator().manual_seed(0),
                    sampler=sampler, steps=schedule.timesteps, spacing="trailing", eta=eta)
    assert result.mean().item() == pytest.approx(MEAN, abs=0.03)     # 4 standard errors of 4096 draws
    assert result.std().item() == pytest.approx(STD, abs=0.02)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_lands_on_the_only_data_point(sampler):
    # With a single training example the ideal denoiser always predicts it, and every sampler must end on it.
    point = torch.linspace(-1, 1, 16, dtype=torch.float64).view(1, 1, 4, 4)
    for prediction, spacing in itertools.product(["eps", "x0", "v"], ["leading", "trailing", "linspace"]):
        schedule = NoiseSchedule(kind="linear", prediction=prediction)
        result = sample(gaussian_denoiser(schedule, mean=point, std=0.0), schedule, (2, 1, 4, 4),
                        torch.Generator().manual_seed(1), sampler=sampler, steps=5, spacing=spacing)
        torch.testing.assert_close(result, point.float().expand(2, 1, 4, 4), rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# The contract: seeds, x_T, callbacks, evaluation counts and errors
# ----------------------------------------------------------------------------------------------

def zero_model(x, t):
    return torch.zeros_like(x)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_function_evaluations_and_callback(sampler):
    schedule = NoiseSchedule(kind="linear")
    calls, progress = [], []
    sample(recording_model(calls), schedule, (1, 1, 2, 2), torch.Generator().manual_seed(0), sampler=sampler,
           steps=6, callback=lambda i, n: progress.append((i, n)))
    assert len(calls) == function_evaluations(sampler, 6) == (11 if sampler == "heun" else 6)
    assert progress == [(i, 6) for i in range(1, 7)]
    assert all(t.shape == (1,) and t.dtype == torch.float32 for _, t in calls)
    assert all(0 <= t.item() <= schedule.timesteps - 1 for _, t in calls)


def test_x_T_is_the_noise_the_generator_would_draw():
    schedule = NoiseSchedule()
    drawn = sample(zero_model, schedule, (2, 3, 2, 2), torch.Generator().manual_seed(5), sampler="ddim", steps=4)
    noise = torch.randn((2, 3, 2, 2), generator=torch.Generator().manual_seed(5))
    given = sample(zero_model, schedule, (2, 3, 2, 2), torch.Generator().manual_seed(99), sampler="ddim", steps=4,
                   x_T=noise)
    assert torch.equal(drawn, given)
    with pytest.raises(ValueError, match=r"x_T has shape \(2, 3, 2, 2\), expected \(1, 3, 2, 2\)"):
        sample(zero_model, schedule, (1, 3, 2, 2), torch.Generator(), x_T=noise)


def test_same_seed_same_sample_for_the_stochastic_sampler():
    schedule = NoiseSchedule()
    first, second, other = (sample(zero_model, schedule, (1, 1, 3, 3), torch.Generator().manual_seed(seed),
                                   sampler="ddpm", steps=5) for seed in (7, 7, 8))
    assert torch.equal(first, second) and not torch.equal(first, other)


@pytest.mark.parametrize("kwargs, message", [
    ({"sampler": "plms"}, r"sampler: 'plms' is unknown; valid samplers: ddpm, ddim, dpmpp_2m, euler, heun"),
    ({"steps": 0}, r"steps: must be at least 1, got 0"),
    ({"steps": 1001}, r"steps: 1001 is more than the schedule's 1000 training timesteps"),
    ({"spacing": "uniform"}, r"spacing: 'uniform' is unknown; valid spacings: leading, trailing, linspace"),
    ({"sampler": "ddim", "eta": -0.1}, r"eta: must be between 0 \(deterministic\) and 1"),
    ({"sampler": "ddim", "eta": 1.5}, r"eta: must be between 0 \(deterministic\) and 1"),
    ({"sampler": "euler", "eta": 0.5}, r"eta: only the ddim sampler takes eta; euler got eta=0.5"),
    ({"sampler": "dpmpp_2m", "steps": 1000}, r"steps: dpmpp_2m with leading spacing needs fewer steps"),
])
def test_bad_arguments_raise_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        sample(zero_model, NoiseSchedule(), (1, 1, 2, 2), torch.Generator(), **kwargs)


def test_function_evaluations_values_and_errors():
    assert [function_evaluations(s, 10) for s in SAMPLERS] == [10, 10, 10, 10, 19]
    assert function_evaluations("heun", 1) == 1
    with pytest.raises(ConfigError, match="valid samplers: ddpm, ddim, dpmpp_2m, euler, heun"):
        function_evaluations("lms", 10)
    with pytest.raises(ConfigError, match="steps: must be at least 1"):
        function_evaluations("ddim", 0)
    with pytest.raises(ConfigError, match="steps: 5 is more than the schedule's 4 training timesteps"):
        timesteps_for(NoiseSchedule(timesteps=4), 5, "leading")
