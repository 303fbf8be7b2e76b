"""The benchmarks import helpers from each other (most from bench/text_bench.py): every name one bench imports from
another must be defined there, so removing a helper cannot silently break the benches (they are not run in CI)."""
from __future__ import annotations

import ast
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def test_every_name_a_bench_imports_from_another_bench_exists():
    modules = {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(BENCH.glob("*.py"))}
    defined = {name: _top_level_names(tree) for name, tree in modules.items()}
    missing = []
    for name, tree in modules.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in modules and node.level == 0:
                missing += [f"bench/{name}.py imports {a.name} from bench/{node.module}.py, which has no such name"
                            for a in node.names if a.name not in defined[node.module]]
    assert not missing, "\n".join(missing)
