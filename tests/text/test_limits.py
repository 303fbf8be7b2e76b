"""The limits tasks: closed-form calibration, AUROC and coverage on made-up scores, n-gram measures, passkey
prompts, CrowS-Pairs files, and every task run end to end on a tiny model trained on builtin:biographies."""

from __future__ import annotations

import json
import math

import pytest
import torch

from genloom.core.errors import DataError, GenloomError
from genloom.text.limit_measures import (
    auroc,
    coverage_curve,
    distinct_n,
    expected_calibration_error,
    passkey_prompt,
    reliability_bins,
    repeated_ngram_share,
)
from genloom.text.limits import read_pairs
from genloom.text.limits_long import stated_facts


def test_ece_closed_form():
    # one bin: confidence 0.9, accuracy 0.7 -> ECE 0.2
    assert expected_calibration_error([0.9] * 10, [True] * 7 + [False] * 3) == pytest.approx(0.2)
    # two bins: 4 at 0.25 (1 right: acc 0.25) and 6 at 0.85 (3 right: acc 0.5) -> 0.6 * 0.35
    conf = [0.25] * 4 + [0.85] * 6
    correct = [True, False, False, False] + [True] * 3 + [False] * 3
    assert expected_calibration_error(conf, correct) == pytest.approx(0.6 * 0.35)
    assert expected_calibration_error([1.0, 0.0], [True, False]) == pytest.approx(0.0)   # the edges fall in bins
    bins = reliability_bins(conf, correct)
    assert [b["count"] for b in bins] == [0, 0, 4, 0, 0, 0, 0, 0, 6, 0]


def test_auroc_is_the_pairwise_probability_with_ties_and_closed_forms():
    g = torch.Generator().manual_seed(0)
    scores = (torch.rand(200, generator=g) * 10).round().tolist()          # many ties
    labels = (torch.rand(200, generator=g) < 0.3).tolist()
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    pairwise = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))
    assert auroc(scores, labels) == pytest.approx(pairwise)
    assert auroc([1, 2, 3, 4], [False, False, True, True]) == 1.0
    assert auroc([1, 2, 3, 4], [True, True, False, False]) == 0.0
    assert auroc([5, 5], [True, False]) == 0.5
    assert math.isnan(auroc([1, 2], [True, True]))


def test_coverage_curve_closed_form():
    curve = coverage_curve([0.9, 0.8, 0.3, 0.1], [True, True, False, True], thresholds=[0.0, 0.5, 0.95])
    assert curve[0] == {"threshold": 0.0, "coverage": 1.0, "accuracy": 0.75, "correct_share": 0.75}
    assert curve[1] == {"threshold": 0.5, "coverage": 0.5, "accuracy": 1.0, "correct_share": 0.5}
    assert curve[2]["coverage"] == 0.0 and curve[2]["accuracy"] is None


def test_ngram_measures():
    assert distinct_n([1, 2, 3, 4], 1) == 1.0
    assert distinct_n([1, 1, 1, 1], 1) == 0.25
    assert distinct_n([1, 2, 1, 2, 1], 2) == 0.5                   # (1,2),(2,1) of 4
    assert repeated_ngram_share([1, 2, 3, 1, 2, 3, 1, 2, 3], 3) == pytest.approx(1 - 3 / 7)
    text = ("Alric Abford was born in Lyon on 3 May 1970. Alric works in geology. Alric works in music. "
            "Alric is employed by Vantex Labs. Bertram works in botany.")
    facts = stated_facts(text, "Alric")
    assert facts["field"] == {"geology", "music"} and facts["birth_city"] == {"Lyon"}
    assert facts["employer"] == {"Vantex Labs"}


def test_passkey_prompt_has_the_length_and_the_key_at_its_depth():
    from genloom.lm.tokenizers import TextTokenizer

    tok = TextTokenizer.train_char(set("The pass key is 0123456789. Remember it. What? grass green sky blue sun "
                                       "yellow Here we go There and back again"))
    for length, depth in ((300, 0.0), (512, 0.5), (1024, 1.0)):
        ids, answer = passkey_prompt(tok, length, "48213", depth)
        assert len(ids) == length and answer == " 48213"
        text = tok.decode(ids)
        assert text.endswith("What is the pass key? The pass key is")
        at = text.index("The pass key is 48213")
        assert abs(at / len(text) - depth) < 0.15
    with pytest.raises(GenloomError, match="at least"):
        passkey_prompt(tok, 20, "48213", 0.5)


def test_pairs_files_name_line_and_column(tmp_path):
    good = tmp_path / "pairs.csv"
    good.write_text('sent_more,sent_less,stereo_antistereo,bias_type\n"A, b",c d,stereo,x\ne,f,antistereo,y\n')
    assert [r["sent_more"] for r in read_pairs(good)] == ["A, b", "e"]
    cases = {"sent_less\nx\n": "line 1: no column 'sent_more'",
             "sent_more,sent_less\na,b\nc\n": "line 3: 1 columns",
             "sent_more,sent_less\na,\n": "line 2, column 2 (sent_less): empty",
             "sent_more,sent_less,stereo_antistereo\na,b,maybe\n": "line 2, column 3 (stereo_antistereo)"}
    for text, message in cases.items():
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
            read_pairs(bad)


# -- the tasks on a tiny model ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_bio(tmp_path_factory):
    from conftest import TINY

    from genloom import api, load

    out = tmp_path_factory.mktemp("bio") / "run"
    api.train("biographies", out=out, overrides=["data.tokenizer=char", *TINY, "train.max_steps=20",
                                                 "model.block_size=48"])
    return load(out)


def test_tasks_run_on_a_tiny_model(tiny_bio, tmp_path):
    from genloom.text.limits import bias, hallucination, understanding, write_report
    from genloom.text.limits_long import consistency, context

    h = hallucination(tiny_bio, num_samples=2, limit=12)
    f = h.figures
    assert f["seen_questions"] == f["unseen_questions"] == 12
    assert 0 <= f["seen_accuracy"] <= 1 and 0 <= f["unseen_made_up"] <= 1 and 0 <= f["ece"] <= 1
    assert "auroc_agreement" in f and len(h.details["abstention"]) == 12
    assert 0 <= f["passage_faithful"] <= 1 and f["passage_faithful"] + f["passage_made_up"] <= 1
    u = understanding(tiny_bio, limit=5)
    assert u.figures["reversal_gap"] == u.figures["forward_accuracy"] - u.figures["reversed_accuracy"]
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("sent_more,sent_less\nAlric works in geology.,Alric works in botany.\n"
                     "Amara works in botany.,Amara works in geology.\n")
    b = bias(tiny_bio, pairs=str(pairs), limit=10)
    assert 0 < b.figures["model_rate"] < 1 and b.figures["group_rate"] == pytest.approx(0.8, abs=0.01)
    assert 0.6 < b.figures["planted_data_rate"] < 0.95         # the rate for the evaluated first names
    assert b.figures["amplification"] == pytest.approx(b.figures["model_rate"] / b.figures["planted_data_rate"])
    assert b.figures["pairs"] == 2
    c = consistency(tiny_bio, num_samples=1, length=60)
    assert set(c.figures["decodings"]) == {"greedy", "sampling", "repetition_penalty", "no_repeat_ngram",
                                           "contrastive"}
    assert c.figures["decodings"]["greedy"]["perplexity"] > 1
    matched = c.figures["equal_perplexity"]
    assert matched["perplexity"] == c.figures["decodings"]["contrastive"]["perplexity"]
    assert set(matched["decodings"]) == {"sampling", "repetition_penalty", "no_repeat_ngram"}
    sweep = c.figures["temperature_sweeps"]["sampling"]
    assert any(r["temperature"] == 1.0 for r in sweep) and 1 <= len(sweep) <= 6
    x = context(tiny_bio, num_samples=2, multiples=(1, 2, 8))
    scalings = x.figures["scalings"]
    assert set(scalings) == {"none", "linear", "ntk", "yarn"}
    assert len(scalings["yarn"]["perplexity_by_block"]) == 8
    assert scalings["none"]["passkey"]["1"] is None and scalings["none"]["passkey"]["8"] is not None  # 48 tokens: no room
    assert x.figures["streaming"]["sinks_4"] > 1 and x.figures["streaming"]["cache_bytes"] > 0
    for result in (h, b, c, x):
        report = tmp_path / f"{result.task}.json"
        plot = write_report(result, report)
        assert json.loads(report.read_text())["task"] == result.task
        assert plot is not None and plot.stat().st_size > 1000


def test_cli_writes_report_and_plot_and_refuses_bad_input_in_one_line(tiny_bio, tmp_path):
    from typer.testing import CliRunner

    from genloom.cli import app
    from genloom.handle import EvalRequest
    from genloom.text.limits import run_task

    pairs = tmp_path / "pairs.csv"
    pairs.write_text("sent_more,sent_less\nAlric works in geology.,Alric works in botany.\n")
    report = tmp_path / "bias.json"
    ok = CliRunner().invoke(app, ["eval", "--checkpoint", str(tiny_bio.path), "--task", "bias", "--pairs", str(pairs),
                                  "--report", str(report)])
    assert ok.exit_code == 0, ok.output
    assert "amplification" in ok.output and json.loads(report.read_text())["pairs"] == 1
    assert report.with_suffix(".png").stat().st_size > 1000
    bad = tmp_path / "bad.csv"
    bad.write_text("sent_more,sent_less\nonly one\n")
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(tiny_bio.path), "--task", "bias", "--pairs", str(bad)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("genloom: error:")]
    assert len(errors) == 1 and "line 2" in errors[0] and "1 columns" in errors[0]
    with pytest.raises(GenloomError, match="--pairs: not an option for --task understanding"):
        run_task(tiny_bio, EvalRequest(task="understanding", pairs=str(pairs)))
    with pytest.raises(GenloomError, match="hallucination"):
        run_task(tiny_bio, EvalRequest(task="halucination"))


def test_temperature_search_brackets_the_target_perplexity():
    from genloom.text.limits_long import temperature_search

    tried = []

    def measure(t):                                       # a model whose perplexity is e^t
        tried.append(t)
        return {"perplexity": math.exp(t)}

    rows = temperature_search(measure, {"temperature": 1.0, "perplexity": math.e}, math.exp(3.0))
    assert tried[:2] == [2.0, 4.0]                        # doubled until past the target, then halved between
    assert tried[2] == pytest.approx(math.sqrt(8.0))
    assert [r["temperature"] for r in rows] == sorted(r["temperature"] for r in rows)
    assert min(abs(r["perplexity"] / math.exp(3.0) - 1) for r in rows) < 0.25
    assert temperature_search(measure, {"temperature": 1.0, "perplexity": 20.0}, 20.5) == \
        [{"temperature": 1.0, "perplexity": 20.0}]        # already within 5%: nothing more to try


def test_figures_at_equal_perplexity_interpolate_in_log_perplexity():
    from genloom.text.limits_long import at_perplexity

    rows = [{"temperature": 1.0, "perplexity": 4.0, "rep_4": 0.0, "x": None},
            {"temperature": 0.5, "perplexity": 1.0, "rep_4": 0.6, "x": None}]
    mid = at_perplexity(rows, 2.0)                        # log 2 is halfway between log 1 and log 4
    assert mid["reached"] and mid["temperature"] == pytest.approx(0.75) and mid["rep_4"] == pytest.approx(0.3)
    assert mid["perplexity"] == 2.0 and mid["x"] is None
    low = at_perplexity(rows, 0.5)                        # below the sweep: the nearest row, not reached
    assert not low["reached"] and low["temperature"] == 0.5 and low["perplexity"] == 1.0
    assert at_perplexity(rows, 4.0)["reached"] and at_perplexity(rows, 9.0)["temperature"] == 1.0
