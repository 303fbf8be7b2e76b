"""Shared fixtures: a private token cache, a small corpus and a tiny model recipe."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from genloom.core.sources import markdown_play_to_text, shakespeare_plays

# Tests elsewhere start servers with tests/serve/test_serve.py's `Server`, also when run on their own.
sys.path.insert(0, str(Path(__file__).parent / "serve"))

TINY = [
    "model.block_size=32", "model.n_layer=2", "model.n_head=2", "model.d_model=32",
    "train.batch_size=8", "train.max_steps=30", "train.warmup_steps=5", "train.eval_interval=10",
    "train.eval_batches=2", "train.log_interval=1", "train.sample_length=20", "train.precision=fp32",
    "train.progress=false", "train.lr=3e-3", "train.compile=false",
]


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    os.environ["GENLOOM_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """About 60k characters of one play, as plain text."""
    path = dict(shakespeare_plays())["macbeth"]
    text = markdown_play_to_text(path.read_text(encoding="utf-8"))[:60_000]
    out = tmp_path_factory.mktemp("corpus") / "macbeth.txt"
    out.write_text(text, encoding="utf-8")
    return out


def tiny(corpus: Path, *extra: str) -> list[str]:
    return [f"data.path={corpus}", *TINY, *extra]


def run_cli(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run `python -m genloom ARGS` and return the finished process (text mode)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **kwargs.pop("env", {})}
    return subprocess.run([sys.executable, "-m", "genloom", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, **kwargs)


def one_line_error(result: subprocess.CompletedProcess, *expected: str) -> None:
    """A user mistake as the CLI must report it: exit code 2, no traceback, one `genloom: error:` line holding
    each of `expected`."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("genloom: error:")]
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
