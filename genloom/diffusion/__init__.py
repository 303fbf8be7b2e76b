"""Diffusion math as pure functions: noise schedules and samplers. Nothing here knows about networks."""

from .samplers import (
    SAMPLERS,
    SPACINGS,
    function_evaluations,
    karras_sigmas,
    sample,
    timesteps_for,
)
from .schedules import NoiseSchedule, split_prediction

__all__ = [
    "NoiseSchedule",
    "split_prediction",
    "SAMPLERS",
    "SPACINGS",
    "sample",
    "function_evaluations",
    "timesteps_for",
    "karras_sigmas",
]
