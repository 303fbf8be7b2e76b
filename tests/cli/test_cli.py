"""The command line as a user meets it: clear errors, streaming generation, evaluation."""

import pytest
from conftest import run_cli, tiny


@pytest.fixture(scope="module")
def checkpoint(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    sets = [x for o in tiny(corpus, "train.max_steps=40") for x in ("--set", o)]
    result = run_cli("train", "shakespeare-char", *sets, "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


def test_help_and_recipes():
    result = run_cli("--help")
    assert result.returncode == 0
    for verb in ("quickstart", "recipes", "train", "generate", "eval"):
        assert verb in result.stdout
    assert "shakespeare-char" in run_cli("recipes").stdout
    assert "--set" in run_cli("train", "--help").stdout


@pytest.mark.parametrize("args, message", [
    (["train", "no-such-recipe"], "unknown recipe 'no-such-recipe'"),
    (["train", "shakespeare-char", "--set", "model.n_layers=2"], "Did you mean model.n_layer?"),
    (["train", "shakespeare-char", "--set", "data.path=/nonexistent/file.txt"], "/nonexistent/file.txt does not exist"),
    (["generate", "text", "--checkpoint", "/nonexistent/run"], "is not a directory"),
    (["eval", "--checkpoint", "/nonexistent/run"], "is not a directory"),
])
def test_user_mistakes_are_one_clear_line(args, message, tmp_path):
    result = run_cli(*args, "--out", str(tmp_path / "o")) if args[0] == "train" else run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()


def test_generate_streams_reproducible_text(checkpoint):
    args = ["generate", "text", "--checkpoint", str(checkpoint), "--prompt", "MACBETH:", "--max-new-tokens", "50",
            "--seed", "7"]
    first, second = run_cli(*args), run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout and first.stdout.startswith("MACBETH:") and len(first.stdout) > 50
    many = run_cli(*args, "--num-samples", "2", "--temperature", "0")
    assert many.stdout.count("MACBETH:") == 2 and "sample 2 (seed 8)" in many.stderr


def test_eval_reports_nats_bits_and_perplexity(checkpoint, corpus, tmp_path):
    result = run_cli("eval", "--checkpoint", str(checkpoint))
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(": ", 1) for line in result.stdout.strip().splitlines())
    nats = float(lines["loss"].split()[0])
    assert 1.0 < nats < 3.5
    assert float(lines["perplexity"]) == pytest.approx(2.718281828 ** nats, rel=1e-3)
    # another file, split the same way; a character the model never saw is scored, not fatal
    other = tmp_path / "other.txt"
    other.write_text(corpus.read_text()[:20000] + "\u00e9\u00e9")
    result = run_cli("eval", "--checkpoint", str(checkpoint), "--data", str(other))
    assert result.returncode == 0, result.stderr
    assert "bits per character" in result.stdout
