"""`genloom plan`: its memory formula against the measured peak of live tensor memory of small runs (within 15%),
Llama 2 7B's published parameter count, and bad input.

Measuring: `LiveTensorMemory` (a TorchDispatchMode) counts every tensor storage an operator returns during a
whole run (model building, forward, backward, optimizer steps, validation, saving) until its last tensor is
freed, and keeps the peak. It counts real allocations, independently of the formula, which is counted on the
meta device before anything is allocated. (The sharded case is in test_fsdp.py, measured on two processes.)
"""

import json

import pytest
import torch
from conftest import run_cli, tiny

from genloom import api
from genloom.core import registry
from genloom.core.config import load_recipe
from genloom.train.plan import LiveTensorMemory, plan_memory
from genloom.train.trainer import resolve_config

QUICK = ["train.max_steps=2", "train.eval_interval=2", "train.eval_batches=1", "train.sample_length=0",
         "train.warmup_steps=0"]


def planned(recipe: str, overrides: list[str], processes: int = 1, parallel: str = "ddp") -> int:
    config = load_recipe(recipe, overrides)
    data = registry.lookup("data", config.data.kind).build(config.data, config)
    data.prepare()
    config = resolve_config(config, data)
    example = data.batch(data.sample_indices(torch.Generator().manual_seed(0), 1))
    build_model = registry.lookup("model", config.model.kind).build
    build_objective = registry.lookup("objective", config.objective.kind).build
    t = config.train
    plan = plan_memory(config, lambda: build_model(config.model, config), lambda: build_objective(config.objective, config),
                       example, processes, t.micro_batch_size or t.batch_size // processes)
    return plan.total(parallel, t.activation_checkpointing)


@pytest.mark.parametrize("recipe, extra", [
    ("text", ["model.d_model=256", "model.n_layer=4", "train.batch_size=1", "model.block_size=16"]),  # Muon's step
    ("text", ["model.d_model=128", "model.n_layer=4", "train.batch_size=32", "model.block_size=128"]),  # activations
    ("text", ["model.d_model=128", "model.n_layer=4", "train.batch_size=32", "model.block_size=128",
              "train.activation_checkpointing=true"]),
    ("text", ["model.d_model=96", "model.n_layer=3", "train.batch_size=16", "model.block_size=256",
              "train.optimizer=adamw", "train.ema_decay=0.9", "model.mlp=swiglu", "model.norm=rmsnorm",
              "model.position=rope"]),
    ("digits-gan", ["train.batch_size=64", "objective.coverage_samples=0"]),      # two phases, an EMA copy
], ids=["muon-state", "activations", "checkpointed", "llama-adamw-ema", "gan"])
def test_planned_memory_is_within_15_percent_of_the_measured_peak(corpus, tmp_path, recipe, extra):
    if recipe == "text":
        recipe, overrides = "shakespeare-char", tiny(corpus, *QUICK, *extra)
    else:
        pytest.importorskip("sklearn")
        overrides = QUICK + ["train.progress=false", "train.precision=fp32", "train.log_interval=1", *extra]
    with LiveTensorMemory() as memory:
        api.train(recipe, out=tmp_path / "run", overrides=overrides)
    plan = planned(recipe, overrides)
    assert memory.peak > 20e6                                 # large enough that the state or activations dominate
    assert abs(plan - memory.peak) <= 0.15 * memory.peak, (plan, memory.peak)


def test_plan_command(corpus):
    data = f"data.path={corpus}"
    result = run_cli("plan", "shakespeare-char", "--size", "7B", "--gpus", "8", "--gpu-memory", "80", "--json",
                     "--set", data, "--set", "train.batch_size=8", "--set", "train.micro_batch_size=1",
                     "--set", "model.block_size=2048")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["parameters"] == 6_738_415_616                # Llama 2 7B's published count
    ddp, fsdp = plan["bytes_per_process"]["ddp"], plan["bytes_per_process"]["fsdp"]
    assert ddp["weights"] == 4 * plan["parameters"] and fsdp["weights"] == -(-4 * plan["parameters"] // 8)
    assert fsdp["activations (checkpointed)"] < fsdp["activations"] == ddp["activations"]
    assert plan["totals"]["fsdp+checkpointing"] < 80 * 1024**3 < plan["totals"]["ddp"]
    # the table and the refusals, in this process (the same command, without another interpreter's start-up)
    from typer.testing import CliRunner

    from genloom.cli import app

    table = CliRunner().invoke(app, ["plan", "shakespeare-char", "--gpus", "2", "--gpu-memory", "16", "--set", data])
    assert table.exit_code == 0 and "fits 16 GB per GPU with: ddp" in table.stdout, table.output
    for args, expected in ((["--size", "9B"], "--size: expected one of 1B, 7B, 70B, got '9B'"),
                           (["--gpus", "3"], "train.batch_size=16 must split evenly into --gpus 3 process(es)")):
        refused = CliRunner().invoke(app, ["plan", "shakespeare-char", *args, "--set", data])
        assert refused.exit_code == 2 and "Traceback" not in refused.output, refused.output
        lines = [line for line in refused.output.splitlines() if line.startswith("genloom: error:")]
        assert len(lines) == 1 and expected in lines[0], refused.output
