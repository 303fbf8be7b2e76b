"""The start-up probe: measured once per machine and kept, read back, re-measured when damaged, and a
failing probe falls back to fp32 and the plain tiers; `[[budget]]` tiers that ask for a fast machine."""

import json
import logging

import pytest
import torch

from genloom.core import config as config_module
from genloom.core import machine
from genloom.core.config import load_recipe
from genloom.core.errors import ConfigError
from genloom.train.runtime import choose_precision


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    monkeypatch.setenv("GENLOOM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(machine, "_memo", {})
    return tmp_path / "cache" / "machine"


def test_probe_is_measured_once_and_kept(fresh, monkeypatch):
    profile = machine.machine_profile("cpu")
    assert profile["fp32_gflops"] > 0 and profile["bf16_gflops"] > 0
    kept = list(fresh.glob("*.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text())["fp32_gflops"] == profile["fp32_gflops"]
    calls = []
    monkeypatch.setattr(machine, "_memo", {})
    monkeypatch.setattr(machine, "_measure", lambda device: calls.append(device) or {})
    assert machine.machine_profile("cpu")["fp32_gflops"] == profile["fp32_gflops"] and not calls   # read, not measured
    assert profile["speed"] == round(max(profile["fp32_gflops"], profile["bf16_gflops"]
                                         if machine.bf16_is_faster(profile) else 0) / machine.REFERENCE_GFLOPS, 2)


def test_a_damaged_record_is_measured_again(fresh, monkeypatch):
    machine.machine_profile("cpu")
    (path,) = fresh.glob("*.json")
    path.write_text("{not json")
    monkeypatch.setattr(machine, "_memo", {})
    monkeypatch.setattr(machine, "_measure", lambda device: {"fp32_gflops": 100.0, "bf16_gflops": 400.0})
    assert machine.machine_profile("cpu")["bf16_gflops"] == 400.0
    assert json.loads(path.read_text())["bf16_gflops"] == 400.0


def test_a_failing_probe_falls_back_and_says_so_once(fresh, monkeypatch, caplog):
    def broken(device):
        raise RuntimeError("no matmul today")
    monkeypatch.setattr(machine, "_measure", broken)
    monkeypatch.setattr(machine, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="genloom.core.machine"):
        first = machine.machine_profile("cpu")
        machine.machine_profile("cpu")
    assert first["fp32_gflops"] == 0 and first["probe"] == "failed"
    assert sum("machine probe failed" in r.getMessage() for r in caplog.records) == 1
    assert not list(fresh.glob("*.json"))                      # a failure is not kept
    monkeypatch.setattr(machine, "cpu_has_amx", lambda: False, raising=False)
    assert choose_precision("auto", torch.device("cpu")) in (None, torch.bfloat16)   # today's flag rule


@pytest.mark.parametrize("rates, expected", [({"fp32_gflops": 200.0, "bf16_gflops": 900.0}, torch.bfloat16),
                                             ({"fp32_gflops": 300.0, "bf16_gflops": 160.0}, None),
                                             ({"fp32_gflops": 300.0, "bf16_gflops": 350.0}, None)])
def test_precision_auto_follows_the_measured_rates(fresh, monkeypatch, rates, expected):
    monkeypatch.setattr(machine, "_measure", lambda device: rates)
    assert choose_precision("auto", torch.device("cpu")) == expected
    assert choose_precision("fp32", torch.device("cpu")) is None
    assert choose_precision("bf16", torch.device("cpu")) == torch.bfloat16


TIERED = """
description = "tiers"
[data]
kind = "text"
path = "builtin:shakespeare"
tokenizer = "char"
[model]
kind = "transformer"
d_model = 64
n_head = 4
[objective]
kind = "lm"
[[budget]]
min_time = 600
model = { d_model = 96 }
[[budget]]
min_time = 60
min_gflops = 500
model = { d_model = 128 }
[[budget]]
min_time = 600
min_gflops = 500
model = { d_model = 192 }
"""


@pytest.mark.parametrize("rate, budget, d_model", [(100.0, 30, 64), (100.0, 107, 64), (100.0, 900, 96),
                                                  (900.0, 30, 64), (900.0, 107, 128), (900.0, 900, 192)])
def test_budget_tiers_follow_the_machine(tmp_path, monkeypatch, rate, budget, d_model):
    recipe = tmp_path / "tiered.toml"
    recipe.write_text(TIERED)
    asked = []
    monkeypatch.setattr(config_module, "_machine_rate", lambda train: asked.append(train) or rate)
    config = load_recipe(str(recipe), [f"train.max_time={budget}"])
    assert config.model.d_model == d_model
    if budget < 60:
        assert not asked                # no tier asks for a rate at this budget: no probe
    if d_model in (128, 192):
        assert "500 GFLOP/s" in config.recipe


def test_a_tier_with_an_unknown_key_is_named(tmp_path):
    recipe = tmp_path / "bad.toml"
    recipe.write_text(TIERED.replace("min_gflops = 500\nmodel = { d_model = 128 }", "min_gflop = 500"))
    with pytest.raises(ConfigError, match="min_gflop"):
        load_recipe(str(recipe), ["train.max_time=100"])
