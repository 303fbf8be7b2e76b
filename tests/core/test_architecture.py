"""The layout's rules (docs/architecture.md), checked on every module's imports, lazy ones included.

1. Imports point down only: entry points (cli, serve, each package's cli.py) -> api -> content packages ->
   the handle base -> engines (train, lm, diffusion, gan) -> nn / media / metrics -> core; no cycles.
2. A content package imports another only along an edge declared in `genloom.core.registry.PACKAGES`.
3. No private name (`_x`) is imported from another module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from genloom.core.registry import PACKAGES

ROOT = Path(__file__).resolve().parents[2] / "genloom"
ENGINES = ("train", "lm", "diffusion", "gan")
SHARED = ("nn", "media", "metrics", "watermark")
RANKS = {"core": 0, "shared": 1, "engine": 2, "handle": 3, "content": 4, "api": 5, "entry": 6}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str, packages=PACKAGES) -> tuple[str, str]:
    """(layer, group): the group is the top-level folder (a content package's name for content modules)."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    if module in ("genloom", "genloom.__main__") or top in ("cli", "serve") or (top in packages and parts[-1] == "cli"):
        return "entry", top
    if top == "api":
        return "api", top
    if top in packages:
        return "content", top
    if top == "handle":
        return "handle", top
    if top in ENGINES:
        return "engine", top
    if top in SHARED:
        return "shared", top
    if top == "core":
        return "core", top
    raise AssertionError(f"{module}: not in any layer of docs/architecture.md")


def imports(path: Path, module: str, modules: set[str]) -> list[tuple[str, list[str], int]]:
    """(imported genloom module, names taken from it, line) for every import in the file, nested ones too."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "genloom"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "genloom":
                continue
            plain = []
            for alias in node.names:
                if f"{target}.{alias.name}" in modules:           # `from pkg import submodule`
                    out.append((f"{target}.{alias.name}", [], node.lineno))
                else:
                    plain.append(alias.name)
            if plain:
                out.append((target, plain, node.lineno))
    return out


def violations(root: Path, packages=PACKAGES) -> list[str]:
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    modules = set(files)
    problems, graph = [], {m: set() for m in modules}
    for module, path in files.items():
        mine, my_group = layer(module, packages)
        for target, names, line in imports(path, module, modules):
            if target not in modules:
                continue
            where = f"{path.relative_to(root.parent)}:{line} imports {files[target].relative_to(root.parent)}"
            if target != module:
                graph[module].add(target)
            theirs, their_group = layer(target, packages)
            if RANKS[theirs] > RANKS[mine]:
                problems.append(f"{where}: an upward import ({mine} -> {theirs})")
            elif mine == theirs == "content" and their_group != my_group and their_group not in packages[my_group]:
                problems.append(f"{where}: content package {my_group} may not import {their_group} (declared edges: "
                                f"{', '.join(packages[my_group]) or 'none'}, in genloom/core/registry.py PACKAGES)")
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and target != module:
                problems.append(f"{where}: private name(s) {', '.join(private)} imported across modules")
    problems += [f"import cycle: {' -> '.join(str(files[m].relative_to(root.parent)) for m in cycle)}"
                 for cycle in cycles(graph)]
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component) + [sorted(component)[0]])

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_layout_rules_hold_for_every_module():
    problems = violations(ROOT)
    assert not problems, "\n".join(problems)


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "genloom"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


BASE = {"__init__.py": "", "core/__init__.py": "", "core/io.py": "X = 1\n", "lm/__init__.py": "",
        "lm/decoding.py": "from ..core.io import X\n", "text/__init__.py": "", "text/data.py": "",
        "audio/__init__.py": "", "audio/data.py": "", "images/__init__.py": "", "images/data.py": ""}
EDGES = {"text": (), "audio": (), "images": ()}


def test_the_checker_passes_a_clean_tree(tmp_path):
    assert violations(_tree(tmp_path, BASE), EDGES) == []


@pytest.mark.parametrize("planted, expected", [
    ({"core/io.py": "def f():\n    from ..lm import decoding\n"}, "an upward import (core -> engine)"),
    ({"lm/decoding.py": "from ..text.data import Y\n"}, "an upward import (engine -> content)"),
    ({"audio/data.py": "from ..images.data import Y\n"}, "content package audio may not import images"),
    ({"core/io.py": "from ._hidden import _secret\n", "core/_hidden.py": "_secret = 1\n"}, "private name(s) _secret"),
    ({"text/data.py": "from . import eval\n", "text/eval.py": "from .data import D\n"}, "import cycle"),
])
def test_the_checker_fails_on_a_planted_break(tmp_path, planted, expected):
    problems = violations(_tree(tmp_path, {**BASE, **planted}), EDGES)
    assert any(expected in p for p in problems), problems
    assert all("genloom/" in p for p in problems)      # both files are named
