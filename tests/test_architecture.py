"""Rules from docs/architecture.md, checked on the source (pure, no imports of rayft modules):
the package import graph has no cycles, and the product never imports rayft.testing."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "rayft"


def _imports() -> dict[str, dict[str, set[str]]]:
    """{package: {imported package: {files}}} over every import statement (function-local too);
    a package is the first name under rayft (``train``, ``cli``, ``_env`` ...)."""
    graph: dict[str, dict[str, set[str]]] = {}
    for f in SRC.rglob("*.py"):
        here = f.relative_to(SRC.parent).with_suffix("").parts  # ("rayft", "train", "loop")
        pkg = here[:-1]
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level:
                base = ".".join(pkg[: len(pkg) - node.level + 1])
                names = [f"{base}.{node.module}"] if node.module else [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for n in names:
                parts = n.split(".")
                if parts[0] == "rayft" and len(parts) > 1 and parts[1] != here[1]:
                    graph.setdefault(here[1], {}).setdefault(parts[1], set()).add(str(f.relative_to(SRC)))
    return graph


def _cycle(graph) -> list[str]:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(v, path):
        state[v] = 1
        for w in sorted(graph.get(v, {})):
            if state.get(w) == 1:
                return path[path.index(w):] + [w] if w in path else [v, w]
            if w not in state and (found := visit(w, path + [w])):
                return found
        state[v] = 2
        return []

    for v in sorted(graph):
        if v not in state and (found := visit(v, [v])):
            return found
    return []


def test_no_import_cycles_between_packages():
    graph = _imports()
    cycle = _cycle(graph)
    where = [f"{a} -> {b}: {sorted(graph[a][b])}" for a, b in zip(cycle, cycle[1:])]
    assert not cycle, "import cycle " + " -> ".join(cycle) + "\n" + "\n".join(where)


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b": {"x"}}, "b": {"c": {"y"}}, "c": {"a": {"z"}}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b": {"x"}}, "b": {}}) == []


def test_product_does_not_import_test_code():
    users = {pkg: files for pkg, deps in _imports().items() if pkg != "testing"
             for dep, files in deps.items() if dep == "testing"}
    assert not users, f"rayft.testing is for tests and benchmarks only; imported by {users}"
