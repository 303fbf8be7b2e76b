"""The sandbox's cost: samples per second before (the audit-hook sandbox of commit cfaa937) and after (the
bubblewrap sandbox of genloom/code/sandbox.py), measured in the same run, interleaved round by round.

    python bench/sandbox_bench.py [--rounds 3] [--samples 200] [--out bench/out]

Three variants: before, after, and after without namespaces (the new harness alone, through the unsafe
path: what bubblewrap itself costs). Two workloads, each on every core (run_many's default) and one at a time (latency):
- trivial: a one-line function and its assert (as bench/code_bench.py runs);
- tasks: genloom's 40 HumanEval-format tasks with their canonical solutions (prompt + body + check).
The old sandbox is read from git (`git show cfaa937:genloom/eval/sandbox.py`), so it needs the repository.
Results go to OUT/sandbox.json and are printed as Markdown.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from text_bench import cpu_name  # noqa: E402

BEFORE = "cfaa937"


def old_sandbox() -> types.ModuleType:
    source = subprocess.run(["git", "show", f"{BEFORE}:genloom/eval/sandbox.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType("genloom_sandbox_before")
    module.__file__ = f"<{BEFORE}:genloom/eval/sandbox.py>"
    sys.modules[module.__name__] = module           # (dataclasses look their module up)
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def workloads(n: int) -> dict[str, list[str]]:
    from genloom.code.eval import builtin_tasks_path
    from genloom.code.passk import task_program

    records = [json.loads(line) for line in builtin_tasks_path().read_text().splitlines() if line.strip()]
    from genloom.code.passk import CodeTask

    tasks = [task_program(CodeTask(r["task_id"], r["prompt"], r["test"], r["entry_point"]), r["canonical_solution"])
             for r in records]
    return {"trivial": [f"def f(x):\n    return x + {i}\nassert f(1) == {i + 1}\n" for i in range(n)],
            "tasks": [tasks[i % len(tasks)] for i in range(n)]}


def rate(run_many, programs: list[str], workers: int | None) -> tuple[float, int]:
    started = time.perf_counter()
    results = run_many(programs, workers=workers)
    return len(programs) / (time.perf_counter() - started), sum(r.passed for r in results)


def without_isolation(after: types.ModuleType):
    """The new harness (verdict channel, bounded output, rlimits, hook) with no namespaces: what bwrap costs."""
    def run_many(programs, workers=None):
        real = after.isolation
        after.isolation = lambda: after.Isolation(False, missing="switched off by the benchmark")
        try:
            return after.run_many(programs, workers=workers, unsafe_sandbox=True)
        finally:
            after.isolation = real
    return types.SimpleNamespace(run_many=run_many)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=200, help="per workload and round, on every core")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()

    from genloom.code import sandbox as after

    before = old_sandbox()
    found = after.isolation()
    if not found.available:
        raise SystemExit(f"no isolation here ({found.missing}): nothing to compare")
    after.run_sandboxed("pass")                      # the one-time probe is not part of the rate
    before.run_sandboxed("pass")
    bare = without_isolation(after)
    logging.getLogger("genloom.code.sandbox").setLevel(logging.ERROR)     # (its warning, expected here)
    cores = len(os.sched_getaffinity(0))
    sequential = max(20, args.samples // 10)
    rows: dict[str, dict[str, list[float]]] = {}
    passed: dict[str, int] = {}
    for round_ in range(args.rounds):
        for workload, programs in workloads(args.samples).items():
            for label, module in (("before", before), ("after", after), ("after, no namespaces", bare)):
                for mode, workers, items in (("every core", None, programs), ("one at a time", 1, programs[:sequential])):
                    value, ok = rate(module.run_many, items, workers)
                    rows.setdefault(f"{workload}, {mode}", {}).setdefault(label, []).append(value)
                    passed[f"{label} {workload} {mode}"] = passed.get(f"{label} {workload} {mode}", 0) + ok
                    print(f"round {round_ + 1} {workload:7s} {mode:13s} {label:6s} {value:6.1f} samples/s "
                          f"({ok}/{len(items)} passed)", file=sys.stderr)
    result = {"machine": cpu_name(), "cores": cores, "isolation": found.how, "euid": os.geteuid(),
              "before": f"{BEFORE}:genloom/eval/sandbox.py", "rounds": args.rounds, "samples": args.samples,
              "sequential_samples": sequential, "passed": passed,
              "rates": {k: {label: statistics.median(v) for label, v in d.items()} for k, d in rows.items()},
              "all_rates": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sandbox.json").write_text(json.dumps(result, indent=2))
    print(f"\n{result['machine']}, {cores} cores, as {'root' if os.geteuid() == 0 else 'uid ' + str(os.geteuid())}; "
          f"after = {found.how}\n")
    print("| workload | before (samples/s) | after (samples/s) | after / before | after without namespaces |")
    print("|---|---|---|---|---|")
    for key, v in result["rates"].items():
        print(f"| {key} | {v['before']:.1f} | {v['after']:.1f} | {v['after'] / v['before']:.2f} | "
              f"{v['after, no namespaces']:.1f} |")
    print(f"\nmedian of {args.rounds} interleaved rounds; {args.samples} samples per round on every core, "
          f"{sequential} one at a time")


if __name__ == "__main__":
    main()
