"""The package's import graph has no cycles: neither between modules (function-level imports included,
type-checking-only imports excluded) nor between the folders of concern (data, layers, models, train, topk,
serve, ...). A cycle is reported with the imports that close it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "polyrec"


def _module_names() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _module_names()


def _resolve(name: str) -> str | None:
    """The module a dotted import target lives in (`polyrec.a.b.Name` -> `polyrec.a.b`)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of import nodes under `if TYPE_CHECKING:` (they never run)."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skip


def _imports(module: str) -> dict[str, int]:
    """polyrec modules `module` imports, with the line of the first import of each."""
    tree = ast.parse(MODULES[module].read_text())
    skip = _type_checking_only(tree)
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    out: dict[str, int] = {}
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] or [base]
        for t in targets:
            if t.startswith("polyrec"):
                resolved = _resolve(t)
                if resolved and resolved != module:
                    out.setdefault(resolved, node.lineno)
    return out


GRAPH = {m: _imports(m) for m in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def _describe(component: list[str], graph: dict[str, dict[str, int]], label) -> str:
    members = set(component)
    edges = [f"{a} -> {b}" for a in component for b in graph.get(a, {}) if b in members]
    return f"{' <-> '.join(component)}: " + "; ".join(edges[:8])


def test_no_module_import_cycles():
    graph = {m: set(t) for m, t in GRAPH.items()}
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(
        _describe(c, {m: {t: 0 for t in ts} for m, ts in GRAPH.items()}, None) for c in cycles)


def _folder(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 or MODULES[module].name == "__init__.py" else module


def test_no_cycles_between_folders_of_concern():
    folders: dict[str, dict[str, str]] = {}
    for m, targets in GRAPH.items():
        for t, line in targets.items():
            a, b = _folder(m), _folder(t)
            if a != b:
                folders.setdefault(a, {}).setdefault(b, f"{MODULES[m].relative_to(ROOT.parent)}:{line}")
    cycles = _cycles({k: set(v) for k, v in folders.items()})
    lines = [" <-> ".join(c) + ": " + "; ".join(f"{a} -> {b} ({folders[a][b]})" for a in c for b in c
                                                if b in folders.get(a, {})) for c in cycles]
    assert not cycles, "folders importing each other:\n" + "\n".join(lines)


@pytest.mark.parametrize("module", ["polyrec.data", "polyrec.layers", "polyrec.metrics"])
def test_lower_layers_import_nothing_above_them(module):
    above = ("polyrec.models", "polyrec.train", "polyrec.topk", "polyrec.serve", "polyrec.bench", "polyrec.tune",
             "polyrec.runs", "polyrec.cli", "polyrec.recipes")
    bad = [f"{m} -> {t}" for m, ts in GRAPH.items() if m == module or m.startswith(module + ".")
           for t in ts if t.startswith(above)]
    assert not bad, f"{module} imports from a layer above it: {bad}"
