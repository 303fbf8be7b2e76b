"""compile=auto: the decision in closed form, and a run that compiles, keeps what it measured, saves the plain
model, and whose budget counts from the command."""

import json
import time

import pytest
from conftest import tiny

from genloom import api, load
from genloom.train import compiling
from genloom.train.compiling import AutoCompile


def test_the_decision_is_the_break_even_rule(monkeypatch, tmp_path):
    monkeypatch.setenv("GENLOOM_CACHE", str(tmp_path))
    auto = AutoCompile({"model": "x"})
    # No record: the cold figures. (R - C) * s > R  <=>  R > C * s / (s - 1).
    c, s = compiling.COLD_COMPILE_S, compiling.PRIOR_SPEEDUP
    break_even = c * s / (s - 1)
    assert AutoCompile({"model": "x"}).decide(break_even * 1.05) is True
    assert AutoCompile({"model": "x"}).decide(break_even * 0.95) is False
    # A record of an earlier run (a warm cache: 2 s to compile, 1.3x) moves the break-even to 8.7 s.
    auto.eager_times = [0.13] * 9
    auto.decided, auto.compiled = True, True
    auto.observe_compiled(2.1)                      # the first compiled step holds the compile
    for _ in range(compiling._COMPILED_WINDOW):
        auto.observe_compiled(0.1)
    record = json.loads((tmp_path / "compile" / "records.json").read_text())[auto.key]
    assert record["compile_s"] == pytest.approx(2.0) and record["speedup"] == pytest.approx(1.3)
    again = AutoCompile({"model": "x"})
    assert again.expected()[:2] == (pytest.approx(2.0), pytest.approx(1.3))
    assert again.decide(10.0) is True and AutoCompile({"model": "y"}).decide(10.0) is False


def test_auto_compiles_and_keeps_the_measurement(corpus, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(compiling, "COLD_COMPILE_S", 0.0)       # make compiling pay at once
    out = tmp_path / "run"
    with caplog.at_level("INFO", logger="genloom.train.compiling"):
        api.train("shakespeare-char", out=out, overrides=tiny(
            corpus, "train.compile=auto", "train.max_time=600", "train.max_steps=40", "train.eval_interval=40"))
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "compile=auto: compiling" in messages and "kept for the next run" in messages
    records = json.loads((compiling.cache_folder("compile") / "records.json").read_text())
    assert any(r["speedup"] > 0 and r["compile_s"] >= 0 for r in records.values())
    assert compiling.cache_folder("compile", "inductor").is_dir()          # Inductor's cache is genloom's
    assert "_orig_mod" not in " ".join(load(out).model.state_dict())        # the checkpoint holds the plain model
    config = json.loads((out / "config.json").read_text())
    assert config["machine"]["precision"] in ("fp32", "bf16") and config["train"]["compile"] == "auto"


def test_a_short_budget_stays_eager(corpus, tmp_path, caplog):
    with caplog.at_level("INFO", logger="genloom.train.compiling"):
        api.train("shakespeare-char", out=tmp_path / "run", overrides=tiny(
            corpus, "train.compile=auto", "train.max_time=8", "train.max_steps=200"))
    assert "compile=auto: staying eager" in " ".join(r.getMessage() for r in caplog.records)


def test_the_budget_counts_from_the_command(corpus, tmp_path):
    """A run that started 6 s before training (start-up) with a 9 s budget trains for about 3 s, and its
    final evaluation fits inside the budget."""
    out = tmp_path / "run"
    start = time.time()
    result = api.train("shakespeare-char", out=out, started_at=start - 6.0, overrides=tiny(
        corpus, "train.max_time=9", "train.max_steps=100000", "train.eval_interval=20"))
    took = time.time() - start
    assert result.elapsed >= 6.0 and took < 3.0 + 6.0, took    # the 6 s of start-up came out of the budget
    assert result.elapsed < 9.0 + 3.0                          # the last evaluation was kept back (loose: CI noise)
