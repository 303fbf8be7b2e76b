"""Few-step samplers distilled from a trained diffusion or flow-matching model.

Two methods, both data-free (the teacher makes its own training examples) and both ending in a flow model
that samples with a few Euler steps on the trailing grid (t = 1, 1 - 1/n, ..., 1/n):

- **reflow** (Liu et al. 2022, "Flow straight and fast", sec. 2.3): the teacher's ODE sampler turns noise z
  into an image x; the student (started from the teacher's weights) learns the straight path between them,
  velocity z - x at x_t = (1 - t) x + t z. The coupling (z, x) is deterministic, so the paths of different
  pairs cross far less than those between independent noise and data, and a coarse Euler grid follows
  them. Any deterministic teacher works: flow models, and diffusion models through dpmpp_2m / ddim / euler /
  heun (whose x_T is the same standard normal noise).
- **progressive** (Salimans & Ho 2022, in flow form): the student learns to take in one Euler step what its
  teacher takes in two, halving the steps each round (e.g. 16 -> 8 -> 4 -> 2), from the teacher's images
  noised to the grid's levels (data-free: the teacher's own samples stand in for the training set). Flow
  teachers only.

Classifier-free guidance is baked in: the teacher samples with its guidance scale and the student learns
the guided result, so it runs at guidance 1 (one network call per step). `genloom distill` and
`genloom.api.distill` write the student as a checkpoint whose recipe samples in its steps by default;
BENCHMARKS.md ("Flow matching and few-step sampling") has the measurements behind progressive as the default.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..core.config import require, validate
from ..core.errors import GenloomError
from ..core.fit import fit
from .flow import FlowConfig
from .samplers import FLOW_SAMPLERS, SAMPLERS
from .sampling import generate_images, guided_denoiser
from .schedules import FlowSchedule

__all__ = ["DistillConfig", "METHODS", "distill_model", "teacher_pairs"]

METHODS = ("progressive", "reflow")
DETERMINISTIC = ("ddim", "dpmpp_2m", "euler", "heun")        # samplers whose noise fixes the image


@dataclass(frozen=True)
class DistillConfig:
    method: Literal["progressive", "reflow"] = "progressive"   # measured: better at 2 steps (BENCHMARKS.md)
    steps: int = 2                 # the student's Euler steps
    teacher_steps: int = 0         # the teacher's sampler steps for its images: 0 = its recipe's
    rounds: int = 3                # progressive: halving rounds, from steps x 2^rounds down to steps
    teacher_sampler: str = ""      # "" = the teacher's recipe's sampler (must be deterministic)
    pairs: int = 8192              # teacher samples (noise, image) to learn from
    train_steps: int = 2000        # student optimizer steps (progressive: per halving round)
    batch_size: int = 128
    lr: float = 2e-4
    seed: int = 0

    def __post_init__(self) -> None:
        validate(self, "distill")
        require(1 <= self.steps <= 64, "distill.steps", f"must be between 1 and 64, got {self.steps}")
        require(self.teacher_steps >= 0, "distill.teacher_steps", "must be 0 (the teacher's default) or more")
        require(self.pairs >= self.batch_size >= 1, "distill.pairs",
                f"must be at least distill.batch_size={self.batch_size} (and that at least 1)")
        require(self.train_steps >= 1, "distill.train_steps", "must be at least 1")
        require(self.lr > 0, "distill.lr", "must be positive")
        if self.teacher_sampler:
            require(self.teacher_sampler in DETERMINISTIC, "distill.teacher_sampler",
                    f"{self.teacher_sampler!r}: the teacher must sample deterministically (the noise must fix the "
                    f"image); use one of {', '.join(DETERMINISTIC)}" if self.teacher_sampler in SAMPLERS else
                    f"{self.teacher_sampler!r} is unknown; valid samplers: {', '.join(DETERMINISTIC)}")
        require(1 <= self.rounds <= 8, "distill.rounds", f"must be between 1 and 8, got {self.rounds}")


def _conditions(model: nn.Module, count: int) -> list[int] | None:
    """Class i % num_classes for pair i (class-balanced), or None for an unconditional model."""
    if getattr(model, "text", None) is not None:
        raise GenloomError("distillation of text-to-image models is not supported yet (it needs the training "
                           "captions); distill class-conditional or unconditional image models")
    num_classes = model.config.num_classes
    return [i % num_classes for i in range(count)] if num_classes else None


@torch.no_grad()
def teacher_pairs(teacher: nn.Module, schedule, labels: list[int] | None, count: int, seed: int, sampler: str,
                  steps: int, guidance: float, progress: bool = True):
    """(noise (N, C, H, W), images (N, C, H, W), labels (N,) or None): the teacher's image from each noise.
    Noise i is `generate_images`' for seed + i, so pair i is what `generate` draws with that seed."""
    from tqdm.auto import tqdm

    cfg = teacher.config
    shape = (cfg.channels, cfg.image_size, cfg.image_size)
    noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed + i)) for i in range(count)])
    bar = tqdm(total=steps * -(-count // 256), desc=f"teacher: {count} samples", unit="step", leave=False,
               disable=not progress)
    try:
        images = generate_images(teacher, schedule, labels, count, seed, sampler, steps, guidance,
                                 callback=lambda i, n: bar.update(1))
    finally:
        bar.close()
    return noise, images, (torch.tensor(labels) if labels is not None else None)


def _reflow(student: nn.Module, pairs, config: DistillConfig, progress: bool) -> nn.Module:
    """Fit the straight paths between the teacher's noise and images: half the times on the student's own
    grid (where it will be asked), half uniform in [0, 1]."""
    noise, images, labels = pairs
    schedule = FlowSchedule()
    grid = schedule.sigmas(config.steps)[:-1]                                     # (steps,)
    generator = torch.Generator().manual_seed(config.seed + 1)
    device = next(student.parameters()).device

    def loss(model: nn.Module) -> torch.Tensor:
        index = torch.randint(len(noise), (config.batch_size,), generator=generator)
        z, x = noise[index].to(device), images[index].to(device)
        y = labels[index].to(device) if labels is not None else None
        on_grid = grid[torch.randint(len(grid), (config.batch_size,), generator=generator)]
        uniform = torch.rand(config.batch_size, generator=generator)
        t = torch.where(torch.rand(config.batch_size, generator=generator) < 0.5, on_grid, uniform).to(device)
        x_t = schedule.add_noise(x, z, t)
        return (model(x_t, schedule.model_time(t), y).float() - (z - x)).pow(2).mean()

    return fit(student, loss, config.train_steps, lr=config.lr, warmup_fraction=0.05, desc="reflow", progress=progress)


def _progressive(student: nn.Module, pairs, config: DistillConfig, guidance: float, progress: bool) -> nn.Module:
    """Halving rounds: in each, the student's Euler step from grid level s to the next matches the previous
    round's two steps (the teacher itself, with its guidance, in the first round; the guidance is then in the
    weights), from the teacher's images noised to s."""
    _, images, labels = pairs
    schedule = FlowSchedule()
    generator = torch.Generator().manual_seed(config.seed + 2)
    device = next(student.parameters()).device
    num_classes = student.config.num_classes
    steps, scale = config.steps * 2 ** (config.rounds - 1), guidance
    while steps >= config.steps:
        previous = copy.deepcopy(student).eval().requires_grad_(False)
        fine = schedule.sigmas(2 * steps)                                          # (2 steps + 1,)

        def loss(model: nn.Module, previous=previous, fine=fine, steps=steps, scale=scale) -> torch.Tensor:
            B = config.batch_size
            index = torch.randint(len(images), (B,), generator=generator)
            x0 = images[index].to(device)
            y = labels[index].to(device) if labels is not None else None
            k = torch.randint(steps, (B,), generator=generator)                  # coarse step k: fine 2k -> 2k+2
            s, mid, end = fine[2 * k].to(device), fine[2 * k + 1].to(device), fine[2 * k + 2].to(device)
            x_s = schedule.add_noise(x0, torch.randn(x0.shape, generator=generator).to(device), s)
            view = (-1,) + (1,) * (x0.dim() - 1)
            teacher = guided_denoiser(previous, y, scale, num_classes)
            with torch.no_grad():
                x_mid = x_s + (mid - s).view(view) * teacher(x_s, schedule.model_time(s)).float()
                x_end = x_mid + (end - mid).view(view) * teacher(x_mid, schedule.model_time(mid)).float()
            target = (x_s - x_end) / (s - end).view(view)                         # one step s -> end lands there
            return (model(x_s, schedule.model_time(s), y).float() - target).pow(2).mean()

        student = fit(student.requires_grad_(True), loss, config.train_steps, lr=config.lr, warmup_fraction=0.05,
                      desc=f"progressive {2 * steps} -> {steps} steps", progress=progress)
        steps, scale = steps // 2, 1.0
    return student


def distill_model(teacher: nn.Module, objective, config: DistillConfig, source: str = "",
                  progress: bool = True) -> tuple[nn.Module, FlowConfig]:
    """A student of `teacher` (a trained denoiser; `objective` its run's objective config) that samples in
    `config.steps` Euler steps, and the objective config that makes those its defaults."""
    kind = getattr(objective, "kind", None)
    if kind not in ("diffusion", "flow"):
        raise GenloomError(f"{source or 'this model'} was trained with objective.kind = {kind!r}; distillation makes "
                           "few-step samplers of diffusion and flow-matching image models")
    labels = _conditions(teacher, config.pairs)
    flow = kind == "flow"
    sampler = config.teacher_sampler or objective.sampler
    if sampler not in DETERMINISTIC:
        raise GenloomError(f"the teacher's sampler {sampler!r} is not deterministic; pass a deterministic one "
                           f"({', '.join(DETERMINISTIC)}) as the teacher sampler")
    if flow and sampler not in FLOW_SAMPLERS:
        raise GenloomError(f"teacher sampler {sampler!r} does not work with a flow-matching model; use "
                           f"{' or '.join(FLOW_SAMPLERS)}")
    if config.method == "progressive" and not flow:
        raise GenloomError(f"{source or 'this model'} is a diffusion model: progressive distillation here takes flow-"
                           "matching teachers (objective.kind = \"flow\"); use the reflow method")
    teacher_steps = config.teacher_steps or objective.sample_steps
    teacher.eval()
    pairs = teacher_pairs(teacher, objective.noise_schedule(), labels, config.pairs, config.seed, sampler,
                          teacher_steps, objective.guidance, progress)
    student = copy.deepcopy(teacher).requires_grad_(True)
    if config.method == "reflow":
        student = _reflow(student, pairs, config, progress)
    else:
        student = _progressive(student, pairs, config, objective.guidance, progress)
    fields = {f.name for f in dataclasses.fields(FlowConfig)}
    kept = {k: v for k, v in dataclasses.asdict(objective).items() if k in fields and k not in ("kind", "sampler")}
    rounds = (f", {config.rounds} rounds from {config.steps * 2 ** config.rounds} steps"
              if config.method == "progressive" else "")
    how = (f"{config.method} to {config.steps} Euler steps from {source or 'a teacher'} ({kind}, {sampler} "
           f"{teacher_steps} steps, guidance {objective.guidance:g}; {config.pairs} pairs, "
           f"{config.train_steps} steps{' per round' if rounds else ''}{rounds})")
    student_objective = FlowConfig(**{**kept, "shift": 1.0, "sampler": "euler", "sample_steps": config.steps,
                                      "guidance": 1.0, "distilled": how})
    return student.eval(), student_objective

