"""The one small-network loop (`core.fit.fit`), the one schedule (`lr_schedule`) and the one train-once cache."""

from __future__ import annotations

import json
import math
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from genloom.core.cache import cache_folder, cached_network, load_network
from genloom.core.config import TrainConfig
from genloom.core.errors import GenloomError
from genloom.core.fit import fit, lr_schedule
from genloom.train.trainer import lr_factor


# -- the schedule ------------------------------------------------------------------------------

def old_lr_factor(cfg, step: int, time_fraction: float = 0.0) -> float:
    """`train.trainer.lr_factor` as it was before it used `lr_schedule` (copied from commit 73f2892)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, max(progress, time_fraction))
    if cfg.schedule == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * progress))
    elif cfg.schedule == "linear":
        factor = 1 - progress
    else:
        factor = 1.0
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * factor


def old_warmup_cosine(steps: int):
    """The LambdaLR factor the speaker encoder, the vocoder and the audio classifier trained with before `fit`."""
    warm = max(1, steps // 10)
    return lambda step: (step + 1) / warm if step < warm else \
        0.5 * (1 + np.cos(np.pi * min(1.0, (step - warm) / max(1, steps - warm))))


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_the_trainers_learning_rates_are_bit_identical_to_before(schedule):
    compared = 0
    for max_steps in (1, 7, 100, 2500):
        for warmup in (0, 1, 10, 200):
            for floor in (0.0, 0.1, 0.37, 1.0):
                cfg = SimpleNamespace(max_steps=max_steps, warmup_steps=warmup, min_lr_ratio=floor, schedule=schedule)
                for step in sorted({0, 1, warmup - 1, warmup, warmup + 1, max_steps // 2, max_steps - 1, max_steps,
                                    max_steps + 50} - {-1}):
                    for time_fraction in (0.0, 0.01, 0.5, 0.999, 1.0, 1.5):
                        assert lr_factor(cfg, step, time_fraction) == old_lr_factor(cfg, step, time_fraction), \
                            (cfg, step, time_fraction)
                        compared += 1
    assert compared > 2000
    real = TrainConfig(max_steps=300, warmup_steps=30, min_lr_ratio=0.1, schedule=schedule)
    assert [lr_factor(real, s) for s in range(320)] == [old_lr_factor(real, s) for s in range(320)]


def test_fits_schedule_is_the_old_warmup_cosine_of_the_audio_networks():
    for steps in (2, 10, 150, 800, 1500, 2000, 3333):
        old = old_warmup_cosine(steps)
        assert [lr_schedule(s, steps, max(1, steps // 10)) for s in range(steps)] == [old(s) for s in range(steps)]


def test_lr_schedule_shape():
    assert lr_schedule(0, 100, 10) == pytest.approx(0.1) and lr_schedule(9, 100, 10) == 1.0
    assert lr_schedule(10, 100, 10) == 1.0 and lr_schedule(55, 100, 10) == pytest.approx(0.5)
    assert lr_schedule(100, 100, 10, floor=0.2) == pytest.approx(0.2)
    assert lr_schedule(20, 100, 10, floor=0.2, time_fraction=1.0) == pytest.approx(0.2)
    factors = [lr_schedule(s, 100, 10) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))


# -- the loop ----------------------------------------------------------------------------------

def regression(seed: int = 0):
    """A linear model, and a loss drawing batches of y = x @ w from its own generator."""
    torch.manual_seed(seed)
    model = nn.Linear(8, 1)
    generator = torch.Generator().manual_seed(seed)
    truth = torch.randn(8, 1, generator=torch.Generator().manual_seed(123))

    def loss(model: nn.Module) -> torch.Tensor:
        x = torch.randn(32, 8, generator=generator)
        return (model(x) - x @ truth).pow(2).mean()

    probe = torch.randn(256, 8, generator=torch.Generator().manual_seed(7))

    @torch.no_grad()
    def held_out(model: nn.Module) -> float:
        return float((model(probe) - probe @ truth).pow(2).mean())

    return model, loss, held_out


def test_fit_makes_the_loss_fall_and_returns_a_frozen_model_in_eval_mode():
    model, loss, held_out = regression()
    before = held_out(model)
    trained = fit(model, loss, 300, lr=0.05, grad_clip=10.0, progress=False)
    assert trained is model and not trained.training
    assert not any(p.requires_grad for p in trained.parameters())
    assert held_out(trained) < before / 100, (before, held_out(trained))


def test_fit_is_deterministic_from_a_seed():
    runs = []
    for _ in range(2):
        model, loss, _ = regression(seed=3)
        runs.append(fit(model, loss, 50, lr=0.01, weight_decay=0.01, progress=False).state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    other, loss, _ = regression(seed=4)
    assert not torch.equal(fit(other, loss, 50, lr=0.01, progress=False).weight, runs[0]["weight"])


def test_fit_trains_under_no_grad():
    model, loss, held_out = regression()
    before = held_out(model)
    with torch.no_grad():
        fit(model, loss, 100, lr=0.05, progress=False)
        assert not torch.is_grad_enabled()
    assert held_out(model) < before / 10


def test_fit_follows_the_schedule(monkeypatch):
    model, loss, _ = regression()
    seen = []
    step = torch.optim.AdamW.step

    def recording(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)
    monkeypatch.setattr(torch.optim.AdamW, "step", recording)
    fit(model, loss, 40, lr=0.5, warmup_fraction=0.25, floor=0.1, progress=False)
    assert seen == [0.5 * lr_schedule(s, 40, 10, 0.1) for s in range(40)]


def test_fit_clips_gradients(monkeypatch):
    norms = []
    step = torch.optim.AdamW.step

    def recording(self, *args, **kwargs):
        norms.append(float(torch.cat([p.grad.flatten() for p in self.param_groups[0]["params"]]).norm()))
        return step(self, *args, **kwargs)
    monkeypatch.setattr(torch.optim.AdamW, "step", recording)
    for clip in (None, 0.5):
        model, loss, _ = regression()
        fit(model, lambda m: 1e4 * loss(m), 5, lr=0.01, grad_clip=clip, progress=False)
    assert min(norms[:5]) > 10 and max(norms[5:]) <= 0.5 + 1e-6


# -- the cache ---------------------------------------------------------------------------------

class Tiny(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.width = width
        self.layer = nn.Linear(width, 2)
        self.holdout_accuracy: float | None = None

    def settings(self) -> dict:
        return {"width": self.width}


def cached_tiny(folder, version: int, calls: list, width: int = 4) -> Tiny:
    def train() -> Tiny:
        calls.append(version)
        torch.manual_seed(len(calls))
        model = Tiny(width)
        model.holdout_accuracy = 0.5 + 0.1 * len(calls)
        return model.eval().requires_grad_(False)

    return cached_network(folder, "tiny", {"version": version}, lambda saved: Tiny(saved["width"]), train,
                          what="tiny network", describe=Tiny.settings)


def test_cached_network_trains_once_then_loads(tmp_path):
    calls = []
    first = cached_tiny(tmp_path, 1, calls, width=5)
    again = cached_tiny(tmp_path, 1, calls, width=5)
    assert calls == [1]                                                   # a miss, then a hit
    assert torch.equal(first.layer.weight, again.layer.weight) and again.width == 5
    assert again.holdout_accuracy == first.holdout_accuracy == pytest.approx(0.6)
    assert not again.training and not any(p.requires_grad for p in again.parameters())
    saved = json.loads((tmp_path / "tiny.json").read_text())
    assert saved["version"] == 1 and saved["width"] == 5 and saved["holdout_accuracy"] == pytest.approx(0.6)
    assert saved["train_seconds"] >= 0
    assert torch.equal(load_network(tmp_path, "tiny", lambda s: Tiny(s["width"])).layer.weight, first.layer.weight)


def test_cached_network_retrains_when_the_version_changes(tmp_path):
    calls = []
    old = cached_tiny(tmp_path, 1, calls)
    new = cached_tiny(tmp_path, 2, calls)
    assert calls == [1, 2] and not torch.equal(old.layer.weight, new.layer.weight)
    assert json.loads((tmp_path / "tiny.json").read_text())["version"] == 2
    assert torch.equal(cached_tiny(tmp_path, 2, calls).layer.weight, new.layer.weight) and calls == [1, 2]


def test_cached_network_pickles_nothing(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("nothing may be pickled")
    for name in ("dump", "dumps", "load", "loads"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "save", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    calls = []
    model = cached_tiny(tmp_path, 1, calls)
    cached_tiny(tmp_path, 1, calls)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"tiny.json", "tiny.safetensors"} <= names <= {"tiny.json", "tiny.safetensors", "checksums.json"}
    assert set(load_file(str(tmp_path / "tiny.safetensors"))) == set(model.state_dict())
    json.loads((tmp_path / "tiny.json").read_text())


def test_cache_folder_stays_inside_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GENLOOM_CACHE", str(tmp_path))
    assert cache_folder("image-features", "digits-1") == tmp_path / "image-features" / "digits-1"
    assert cache_folder("x", cache_dir=tmp_path / "other") == tmp_path / "other" / "x"
    for bad in ("../escape", "a/b", "", ".hidden"):
        with pytest.raises(GenloomError, match="plain folder name"):
            cache_folder(bad)
