"""The sandbox that runs generated code: every hostile sample is contained and reported for what it is."""

from __future__ import annotations

import os
import time
from pathlib import Path

from genloom.code.sandbox import SandboxLimits, run_many, run_sandboxed


def test_passing_and_failing_samples_are_told_apart():
    assert run_sandboxed("def add(a, b):\n    return a + b\nassert add(2, 3) == 5").status == "passed"
    failed = run_sandboxed("assert sorted([3, 1]) == [3, 1], 'not sorted'")
    assert failed.status == "failed" and "AssertionError: not sorted" in failed.detail
    assert run_sandboxed("def f(:\n    pass").status == "failed"                  # a syntax error
    crashed = run_sandboxed("import os\nos._exit(3)")
    assert crashed.status == "crashed" and "code 3" in crashed.detail


def test_an_infinite_loop_times_out():
    result = run_sandboxed("while True:\n    pass", SandboxLimits(timeout=1.0, cpu_seconds=5))
    assert result.status == "timeout" and result.seconds < 3


def test_a_fork_bomb_is_contained():
    result = run_sandboxed("import os\nwhile True:\n    os.fork()")
    assert result.status == "failed" and "os.fork" in result.detail
    for program in ("import subprocess\nsubprocess.run(['sh', '-c', 'echo hi'])",
                    "import os\nos.system('echo hi')",
                    "import multiprocessing", "import ctypes", "import _posixsubprocess"):
        assert run_sandboxed(program).status == "failed", program


def test_a_huge_allocation_is_refused():
    result = run_sandboxed("block = bytearray(4 * 1024 ** 3)", SandboxLimits(memory_mb=256))
    assert result.status in ("failed", "crashed") and "Memory" in result.detail + "MemoryError"


def test_writing_outside_the_working_directory_is_refused(tmp_path):
    target = tmp_path / "escaped.txt"
    result = run_sandboxed(f"open({str(target)!r}, 'w').write('x')")
    assert result.status == "failed" and "outside the working directory" in result.detail
    assert not target.exists()
    assert run_sandboxed(f"import os\nos.remove({str(Path(__file__))!r})").status == "failed"
    assert Path(__file__).exists()
    inside = run_sandboxed("open('notes.txt', 'w').write('x')\nassert open('notes.txt').read() == 'x'")
    assert inside.status == "passed"                                           # its own folder is fine
    big = run_sandboxed("open('big.bin', 'wb').write(b'x' * (8 * 1024 * 1024))", SandboxLimits(file_mb=1))
    assert big.status in ("failed", "crashed")


def test_environment_secrets_are_not_visible(monkeypatch):
    monkeypatch.setenv("GENLOOM_TEST_SECRET", "hunter2")
    result = run_sandboxed("import os\nassert 'GENLOOM_TEST_SECRET' not in os.environ\n"
                           "assert 'hunter2' not in str(dict(os.environ))")
    assert result.status == "passed"
    assert os.environ["GENLOOM_TEST_SECRET"] == "hunter2"


def test_trivial_samples_run_fast_in_parallel():
    start = time.perf_counter()
    results = run_many(["assert 1 + 1 == 2"] * 40)
    rate = 40 / (time.perf_counter() - start)
    assert all(r.passed for r in results)
    assert rate >= 10, f"{rate:.1f} samples/s"                  # the target, 20/s, is measured in bench/


def test_pass_at_k_matches_hand_computed_values(tmp_path):
    import math

    import pytest

    from genloom.code.passk import CodeTask, pass_at_k, read_tasks, task_program
    from genloom.core.errors import DataError

    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)                  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - math.comb(7, 5) / math.comb(10, 5))
    assert pass_at_k(10, 0, 5) == 0.0 and pass_at_k(3, 3, 2) == 1.0 and pass_at_k(4, 1, 4) == 1.0
    with pytest.raises(ValueError, match="at least 6 samples"):
        pass_at_k(5, 1, 6)
    task = CodeTask("t/0", "def double(x):\n", "def check(f):\n    assert f(3) == 6\n", "double")
    assert run_sandboxed(task_program(task, "    return 2 * x\n")).passed
    assert not run_sandboxed(task_program(task, "    return x\n")).passed
    path = tmp_path / "tasks.jsonl"
    path.write_text('{"task_id": "a", "prompt": "def f():\\n", "test": "def check(c): pass"}\n')
    with pytest.raises(DataError, match="line 1: missing the string field.*entry_point"):
        read_tasks(path)
