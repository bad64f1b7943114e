"""The package layout is the architecture (docs/architecture.md): checked, not just described.

Every import between our modules counts, including those under TYPE_CHECKING and inside
functions: a cycle hidden from the interpreter is still coupling a reader has to untangle.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ptt_server"
# Lower layers never import higher ones. Packages of one rank may use each other as long as
# no cycle forms.
RANK = {
    "core": 0,
    "control": 1, "identity": 1, "media": 1, "recording": 1,
    "node": 2,
    "signaling": 3,
    "service": 4,
    "app": 5,
}
# The pure core: standard library only (no Redis, no aiohttp, no aiortc, no JWT).
PURE = {"core"}
MAX_LINES = 450  # "modules under ~400 lines"; a little slack for docstrings


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                mod = ".".join(anchor + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            for alias in node.names:
                if f"{mod}.{alias.name}" in MODULES:
                    out.add(f"{mod}.{alias.name}")
    return out


GRAPH = {
    name: {m for m in _imports(name, path) if m in MODULES and m != name}
    for name, path in MODULES.items()
}
EXTERNAL = {
    name: {m.split(".")[0] for m in _imports(name, path)} - {"ptt_server", "__future__"}
    for name, path in MODULES.items()
}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_module_is_in_a_layer() -> None:
    loose = [m for m in MODULES if m != "ptt_server" and _layer(m) not in RANK]
    assert not loose, f"modules outside the layered packages: {loose}"


def test_no_import_cycles() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in GRAPH:
        if v not in index:
            visit(v)
    # A package's __init__ importing its own modules is not a cycle of responsibility.
    cycles = [c for c in cycles if not all(_layer(m) == _layer(c[0]) for m in c)
              or not any(MODULES[m].name == "__init__.py" for m in c)]
    assert not cycles, f"import cycles: {cycles}"


def test_layers_only_import_downwards() -> None:
    wrong = []
    for module, targets in GRAPH.items():
        layer = _layer(module)
        if layer is None:
            continue
        for target in targets:
            other = _layer(target)
            if other is not None and RANK[other] > RANK[layer]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports from a higher layer:\n" + "\n".join(sorted(wrong))


@pytest.mark.parametrize("layer", sorted(PURE))
def test_pure_core_uses_the_standard_library_only(layer: str) -> None:
    stdlib = set(sys.stdlib_module_names)
    impure = {
        m: sorted(ext - stdlib) for m, ext in EXTERNAL.items()
        if _layer(m) == layer and ext - stdlib
    }
    assert not impure, f"the pure core imports I/O libraries: {impure}"


def test_modules_stay_small() -> None:
    big = {
        m: n for m, p in MODULES.items()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not big, f"modules over {MAX_LINES} lines: {big}"
