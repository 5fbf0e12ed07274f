"""The package's shape: modules (the tests' and benchmarks' too) readable in one sitting, no
import circles, a short top level."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "infogan_cells"
MAX_LINES = 450
MAX_TOP_LEVEL_MODULES = 8


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports, at the top or inside a function."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    [*package.split(".")[: len(package.split(".")) - node.level + 1], base]
                ).strip(".")
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def test_no_module_is_longer_than_one_sitting():
    long = {n: len(p.read_text().splitlines()) for n, p in _modules().items()}
    assert {n: k for n, k in long.items() if k > MAX_LINES} == {}


def test_no_test_or_benchmark_module_is_longer_than_one_sitting():
    """The tests and benchmarks too: a file past the limit has grown a second concern; split it."""
    root = PACKAGE.parent
    files = [*(root / "tests").rglob("*.py"), *(root / "benchmarks").rglob("*.py")]
    long = {str(p.relative_to(root)): len(p.read_text().splitlines()) for p in files}
    assert {n: k for n, k in long.items() if k > MAX_LINES} == {}


def test_the_top_level_holds_few_plain_modules():
    plain = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(plain) <= MAX_TOP_LEVEL_MODULES, plain


def test_no_import_circle():
    modules = _modules()
    graph = {n: _imports(n, p, set(modules)) for n, p in modules.items()}
    # a sub-package's __init__ is imported with any of its modules; it imports nothing of ours
    graph = {
        n: {t for t in ts if not (n.startswith(t + ".") and not graph.get(t))} for n, ts in graph.items()
    }
    state: dict[str, int] = {}
    circles = []

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for t in sorted(graph[n]):
            if state.get(t) == 1:
                circles.append(" -> ".join([*stack[stack.index(t) :], t]))
            elif t not in state:
                visit(t, [*stack, t])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert circles == []
