"""The training loop: learning, exact resume after SIGKILL, torchrun parity, failures that lose nothing."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import run_cli, tiny

from genloom import api, load
from genloom.core.errors import CheckpointError, ConfigError, TrainingError
from genloom.lm.objective import LanguageModelObjective
from genloom.train.metrics import MetricsLog


def losses(run_dir):
    return {int(r["step"]): float(r["loss"]) for r in MetricsLog.read(run_dir / "metrics.csv") if r["loss"]}


def test_loss_falls_and_run_folder_is_complete(corpus, tmp_path):
    out = tmp_path / "run"
    result = api.train("shakespeare-char", out=out, overrides=tiny(corpus, "train.max_steps=150", "train.batch_size=32"))
    curve = losses(out)
    assert curve[1] > 4.0 and curve[150] < 2.8, curve  # from uniform over ~66 characters to below unigram entropy
    assert result.val_loss < 3.0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "train_state.json",
                 "train_state.safetensors", "metrics.csv", "loss.png"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "samples").iterdir())[-1] == "step_0000150.txt"
    assert json.loads((out / "config.json").read_text())["model"]["vocab_size"] == load(out).tokenizer.vocab_size


def test_bf16_autocast_trains(corpus, tmp_path):
    result = api.train("shakespeare-char", out=tmp_path / "bf16",
                       overrides=tiny(corpus, "train.precision=bf16", "train.max_steps=20"))
    assert result.val_loss < 3.5


def test_compiled_muon_training_matches_eager_start(corpus, tmp_path):
    """torch.compile and Muon: the first steps agree with eager mode, and training works end to end."""
    overrides = tiny(corpus, "train.optimizer=muon", "train.max_steps=4", "train.eval_interval=4")
    api.train("shakespeare-char", out=tmp_path / "eager", overrides=overrides)
    api.train("shakespeare-char", out=tmp_path / "compiled", overrides=overrides + ["train.compile=true"])
    eager, compiled = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert all(abs(eager[s] - compiled[s]) < 1e-3 for s in eager), (eager, compiled)


def test_llama_style_with_accumulation_trains(corpus, tmp_path):
    result = api.train("shakespeare-char", out=tmp_path / "llama", overrides=tiny(
        corpus, "model.position=rope", "model.norm=rmsnorm", "model.mlp=swiglu", "model.bias=false",
        "model.n_kv_head=1", "model.tie_embeddings=false", "train.micro_batch_size=4", "train.max_steps=20"))
    assert result.val_loss < 3.5


def test_resume_after_sigkill_reproduces_the_loss_curve(corpus, tmp_path):
    args = ["train", "shakespeare-char", "--set", *" --set ".join(
        tiny(corpus, "train.max_steps=400", "train.checkpoint_interval=5", "train.eval_interval=100",
             "model.dropout=0.1")).split(" ")]
    reference = run_cli(*args, "--out", str(tmp_path / "whole"))
    assert reference.returncode == 0, reference.stderr

    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "genloom", *args, "--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        state = killed / "train_state.json"
        try:
            if json.loads(state.read_text())["step"] >= 100:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    step_at_kill = json.loads((killed / "train_state.json").read_text())["step"]
    assert step_at_kill < 400

    resumed = run_cli(*args, "--out", str(killed), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a, b = losses(tmp_path / "whole"), losses(killed)
    assert sorted(a) == sorted(b) == list(range(1, 401))
    assert max(abs(a[s] - b[s]) for s in a) <= 1e-6


def test_torchrun_two_processes_match_one(corpus, tmp_path):
    overrides = tiny(corpus, "train.max_steps=8", "train.eval_interval=8", "train.micro_batch_size=2")
    sets = [x for o in overrides for x in ("--set", o)]
    one = run_cli("train", "shakespeare-char", *sets, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          "29517", "-m", "genloom", "train", "shakespeare-char", *sets, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert two.returncode == 0, two.stderr
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == list(range(1, 9))
    assert max(abs(a[s] - b[s]) for s in a) < 1e-5, (a, b)
    assert json.loads((tmp_path / "two" / "train_state.json").read_text())["world_size"] == 2


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(corpus, tmp_path, monkeypatch):
    original = LanguageModelObjective.loss
    calls = {"n": 0}

    def poisoned(self, phase, model, batch):
        calls["n"] += model.training  # count training steps, not validation batches
        loss = original(self, phase, model, batch)
        return loss * float("nan") if calls["n"] == 14 and model.training else loss

    monkeypatch.setattr(LanguageModelObjective, "loss", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(TrainingError, match=r"loss became nan at step 14.*last good checkpoint \(step 10\)"):
        api.train("shakespeare-char", out=out, overrides=tiny(corpus))
    assert json.loads((out / "train_state.json").read_text())["step"] == 10
    load(out)  # the kept checkpoint still loads


def test_ctrl_c_saves_then_exits(corpus, tmp_path):
    out = tmp_path / "interrupted"
    args = [x for o in tiny(corpus, "train.max_steps=100000", "train.eval_interval=50") for x in ("--set", o)]
    proc = subprocess.Popen([sys.executable, "-m", "genloom", "train", "shakespeare-char", *args, "--out", str(out)],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 120
    while not (out / "train_state.json").is_file() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    step = json.loads((out / "train_state.json").read_text())["step"]
    assert step >= 50 and max(losses(out)) == step  # saved at the step where it was interrupted


def test_existing_checkpoint_is_never_overwritten(corpus, tmp_path):
    out = tmp_path / "run"
    api.train("shakespeare-char", out=out, overrides=tiny(corpus, "train.max_steps=5"))
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="already holds a checkpoint; add --resume"):
        api.train("shakespeare-char", out=out, overrides=tiny(corpus, "train.max_steps=5"))
    assert (out / "model.safetensors").read_bytes() == before
    with pytest.raises(CheckpointError, match="holds no checkpoint to resume"):
        api.train("shakespeare-char", out=tmp_path / "fresh", overrides=tiny(corpus), resume=True)
    with pytest.raises(ConfigError, match=r"recipe differs from the checkpoint.*model\.n_layer"):
        api.train("shakespeare-char", out=out, overrides=tiny(corpus, "model.n_layer=3"), resume=True)


def test_broken_checkpoints_are_named(corpus, tmp_path):
    out = tmp_path / "run"
    api.train("shakespeare-char", out=out, overrides=tiny(corpus, "train.max_steps=5"))
    config = json.loads((out / "config.json").read_text())
    config["model"]["d_model"] = 64
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"does not fit the model.*embed\.weight: checkpoint has shape \(\d+, 32\), "
                                              r"the model expects \(\d+, 64\)"):
        load(out)
    (out / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="is missing model.safetensors"):
        load(out)
    with pytest.raises(CheckpointError, match="is not a directory"):
        load(tmp_path / "nowhere")


def test_interrupted_commit_keeps_previous_or_finishes(tmp_path):
    from genloom.core import io as ckpt

    (tmp_path / "labels.json").write_text("old")
    ckpt.commit(tmp_path, {"labels.json": lambda p: p.write_text("new")})
    assert (tmp_path / "labels.json").read_text() == "new" and not (tmp_path / ".staging").exists()
    # killed before the COMMIT marker: the staged file is ignored
    (tmp_path / ".staging").mkdir()
    (tmp_path / ".staging" / "labels.json").write_text("half")
    ckpt.recover(tmp_path)
    assert (tmp_path / "labels.json").read_text() == "new"
    # killed after the marker: the next reader finishes the move
    ckpt.write_json_atomic(tmp_path / ".staging" / "COMMIT", {"files": ["labels.json"]})
    ckpt.recover(tmp_path)
    assert (tmp_path / "labels.json").read_text() == "half" and not (tmp_path / ".staging").exists()


def test_max_time_stops_on_budget(corpus, tmp_path):
    start = time.perf_counter()
    result = api.train("shakespeare-char", out=tmp_path / "timed", overrides=tiny(corpus, "train.max_steps=1000000"),
                       max_time=3)
    assert result.step < 1000000 and result.elapsed < 8 and time.perf_counter() - start < 20
