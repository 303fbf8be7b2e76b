"""The noise schedule against closed forms and against diffusers' DDPMScheduler."""

import math

import pytest
import torch

from genloom.core.errors import ConfigError
from genloom.diffusion.schedules import NoiseSchedule, split_prediction

DIFFUSERS_BETA_SCHEDULE = {"linear": "linear", "cosine": "squaredcos_cap_v2"}


def cosine_alpha_bar(u: float) -> float:
    """Nichol & Dhariwal 2021, eq. 17, with u = t / T: f(u) / f(0)."""
    f = lambda v: math.cos((v + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return f(u) / f(0)


def test_linear_alphas_cumprod_is_the_product_of_one_minus_beta():
    schedule = NoiseSchedule(kind="linear", timesteps=1000)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    assert schedule.betas[0].item() == pytest.approx(1e-4) and schedule.betas[-1].item() == pytest.approx(0.02)
    expected = torch.cumprod(1 - betas, dim=0)
    torch.testing.assert_close(schedule.alphas_cumprod.double(), expected, rtol=1e-5, atol=0)


def test_cosine_alphas_cumprod_follows_the_formula_until_the_clipped_last_step():
    T = 1000
    schedule = NoiseSchedule(kind="cosine", timesteps=T)
    expected = torch.tensor([cosine_alpha_bar((t + 1) / T) for t in range(T - 1)], dtype=torch.float64)
    torch.testing.assert_close(schedule.alphas_cumprod[:-1].double(), expected, rtol=1e-5, atol=0)
    # At t = T-1 the formula's beta would be 1; it is clipped to 0.999.
    assert schedule.betas[-1].item() == pytest.approx(0.999)
    assert schedule.alphas_cumprod[-1].item() == pytest.approx(expected[-1].item() * 0.001, rel=1e-5)
    assert torch.all(schedule.betas[:-1] < 0.999)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_sigmas_and_snr_closed_form(kind):
    schedule = NoiseSchedule(kind=kind, timesteps=1000)
    ab = schedule.alphas_cumprod.double()
    torch.testing.assert_close(schedule.sigmas.double(), ((1 - ab) / ab).sqrt(), rtol=1e-6, atol=0)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    torch.testing.assert_close(schedule.snr(t).double(), ab[t] / (1 - ab[t]), rtol=1e-6, atol=0)
    assert torch.all(schedule.sigmas[1:] > schedule.sigmas[:-1])      # noise grows with t


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("timesteps, beta_start, beta_end", [(1000, 1e-4, 0.02), (50, 1e-3, 0.05)])
def test_tables_equal_diffusers(kind, timesteps, beta_start, beta_end):
    diffusers = pytest.importorskip("diffusers")
    reference = diffusers.DDPMScheduler(num_train_timesteps=timesteps, beta_start=beta_start, beta_end=beta_end,
                                        beta_schedule=DIFFUSERS_BETA_SCHEDULE[kind])
    schedule = NoiseSchedule(kind=kind, timesteps=timesteps, beta_start=beta_start, beta_end=beta_end)
    assert torch.equal(schedule.betas, reference.betas)
    assert torch.equal(schedule.alphas_cumprod, reference.alphas_cumprod)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_add_noise_and_v_target_equal_diffusers(kind):
    diffusers = pytest.importorskip("diffusers")
    reference = diffusers.DDPMScheduler(beta_schedule=DIFFUSERS_BETA_SCHEDULE[kind])
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 6, 1, 3, 3, generator=generator)
    t = torch.tensor([0, 17, 400, 640, 998, 999])
    schedule = NoiseSchedule(kind=kind, prediction="v")
    torch.testing.assert_close(schedule.add_noise(x0, noise, t), reference.add_noise(x0, noise, t),
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(schedule.target(x0, noise, t), reference.get_velocity(x0, noise, t),
                               rtol=0, atol=1e-6)


def test_add_noise_closed_form_and_targets():
    schedule = NoiseSchedule(kind="linear", timesteps=1000, prediction="eps")
    x0 = torch.full((2, 1, 2, 2), 0.5)
    noise = torch.full((2, 1, 2, 2), -1.0)
    t = torch.tensor([0, 999])
    ab = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)[t]
    expected = (ab.sqrt() * 0.5 - (1 - ab).sqrt()).view(2, 1, 1, 1).expand(2, 1, 2, 2)
    torch.testing.assert_close(schedule.add_noise(x0, noise, t).double(), expected, rtol=0, atol=1e-6)
    assert torch.equal(schedule.target(x0, noise, t), noise)
    assert torch.equal(NoiseSchedule(prediction="x0").target(x0, noise, t), x0)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_to_x0_eps_inverts_the_target(kind, prediction):
    # float64 examples: the algebra must hold at every timestep, even where sqrt(ā) is ~5e-5 (cosine, t = T-1)
    # and float32 would lose the digits of x0 under eps prediction.
    schedule = NoiseSchedule(kind=kind, prediction=prediction)
    generator = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 7, 1, 4, 4, generator=generator, dtype=torch.float64)
    t = torch.tensor([0, 1, 10, 500, 900, 998, 999])
    x_t = schedule.add_noise(x0, eps, t)
    x0_hat, eps_hat = schedule.to_x0_eps(schedule.target(x0, eps, t), x_t, t)
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-5)
    torch.testing.assert_close(eps_hat, eps, rtol=0, atol=1e-5)


def test_to_x0_eps_in_float32_where_well_conditioned():
    for prediction in ("eps", "x0", "v"):
        schedule = NoiseSchedule(kind="cosine", prediction=prediction)
        generator = torch.Generator().manual_seed(2)
        x0, eps = torch.randn(2, 5, 3, 8, 8, generator=generator)
        t = torch.tensor([20, 200, 500, 700, 800])
        x0_hat, eps_hat = schedule.to_x0_eps(schedule.target(x0, eps, t), schedule.add_noise(x0, eps, t), t)
        torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-5)
        torch.testing.assert_close(eps_hat, eps, rtol=0, atol=1e-5)


def test_v_is_a_rotation_of_x0_and_eps():
    # (x_t, v) = R(phi) (x0, eps) with cos(phi) = sqrt(ā): the squared norms agree (Salimans & Ho 2022, sec. 4),
    # up to the float32 rounding of sqrt(ā) and sqrt(1 - ā).
    schedule = NoiseSchedule(kind="cosine", prediction="v")
    generator = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(2, 4, 1, 3, 3, generator=generator, dtype=torch.float64)
    t = torch.tensor([3, 300, 700, 999])
    x_t, v = schedule.add_noise(x0, eps, t), schedule.target(x0, eps, t)
    torch.testing.assert_close(x_t ** 2 + v ** 2, x0 ** 2 + eps ** 2, rtol=0, atol=1e-6)


def test_split_prediction_rejects_unknown_types():
    x = torch.zeros(1)
    with pytest.raises(ValueError, match="unknown prediction type 'noise'"):
        split_prediction("noise", x, x, x + 1, x)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_min_snr_weight_gives_every_prediction_the_same_x0_weighting(prediction):
    # Hang et al. 2023: the loss is min(snr, gamma) * |x0 error|². An output error of the other parametrisations
    # that causes a given x0 error must be weighted to give that same loss.
    gamma = 5.0
    schedule = NoiseSchedule(kind="cosine", prediction=prediction)
    t = torch.tensor([0, 50, 150, 300, 600, 999])
    generator = torch.Generator().manual_seed(4)
    x0, eps, error = torch.randn(3, 6, 1, 4, 4, generator=generator, dtype=torch.float64)
    x_t = schedule.add_noise(x0, eps, t)
    target = schedule.target(x0, eps, t)
    x0_hat, _ = schedule.to_x0_eps(target + error, x_t, t)
    x0_exact, _ = schedule.to_x0_eps(target, x_t, t)
    x0_loss = (x0_hat - x0_exact).pow(2).mean(dim=(1, 2, 3))
    output_loss = error.pow(2).mean(dim=(1, 2, 3))
    snr = schedule.snr(t).double()
    weight = schedule.min_snr_weight(t, gamma).double()
    torch.testing.assert_close(weight * output_loss, snr.clamp(max=gamma) * x0_loss, rtol=1e-6, atol=0)


def test_min_snr_weight_values():
    schedule = NoiseSchedule(kind="linear", prediction="eps")
    t = torch.tensor([0, 999])                          # snr is ~1e4 at t = 0 and ~4e-5 at t = T-1
    snr = schedule.snr(t)
    torch.testing.assert_close(schedule.min_snr_weight(t, 5.0), torch.stack([5.0 / snr[0], torch.tensor(1.0)]))
    torch.testing.assert_close(NoiseSchedule(kind="linear", prediction="x0").min_snr_weight(t, 5.0),
                               torch.stack([torch.tensor(5.0), snr[1]]))
    torch.testing.assert_close(NoiseSchedule(kind="linear", prediction="v").min_snr_weight(t, 5.0),
                               torch.stack([5.0 / (snr[0] + 1), snr[1] / (snr[1] + 1)]))


def test_timestep_at_inverts_the_sigmas_and_interpolates_log_sigma():
    schedule = NoiseSchedule(kind="cosine")
    t = torch.tensor([0, 1, 10, 500, 998, 999])      # (log-sigmas are a float32 table, as in diffusers)
    torch.testing.assert_close(schedule.timestep_at(schedule.sigmas[t]), t.double(), rtol=0, atol=1e-5)
    between = (schedule.sigmas[[100, 700]].double().log() + schedule.sigmas[[101, 701]].double().log()) / 2
    torch.testing.assert_close(schedule.timestep_at(between.exp()), torch.tensor([100.5, 700.5], dtype=torch.float64))
    outside = torch.tensor([schedule.sigmas[0].item() / 2, schedule.sigmas[-1].item() * 2])
    assert schedule.timestep_at(outside).tolist() == [0.0, 999.0]


@pytest.mark.parametrize("values, message", [
    ({"timesteps": 1}, r"diffusion\.timesteps: must be >= 2"),
    ({"kind": "quadratic"}, r"diffusion\.kind: 'quadratic' is not allowed; valid choices: 'linear', 'cosine'"),
    ({"prediction": "noise"}, r"diffusion\.prediction: 'noise' is not allowed"),
    ({"beta_start": 0.0}, r"diffusion\.beta_start: must be in \(0, 1\)"),
    ({"beta_start": 0.02, "beta_end": 0.01}, r"diffusion\.beta_end: must be in \[beta_start, 1\)"),
    ({"timesteps": "many"}, r"diffusion\.timesteps: expected an integer"),
])
def test_bad_values_raise_config_errors_naming_the_field(values, message):
    with pytest.raises(ConfigError, match=message):
        NoiseSchedule(**values)
