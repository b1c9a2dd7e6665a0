"""The package's shape, read from its source: no import cycle, short functions where the orchestration is.

Both checks read imports and definitions with ``ast`` (nothing is imported), so they hold for
every module whatever extras are installed.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ensrm"
#: Where bundles are made and models trained: each step small enough to read at once.
SHORT_FUNCTIONS = ["export", "calibration", "train/trainer.py", "builder.py"]
MAX_LINES = 60


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The ensrm modules ``path`` imports anywhere in its body (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module in modules:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & modules.keys()
            # `from ensrm.x import y` imports module ensrm.x.y when y is one, else a name of ensrm.x
            found.update(submodules or {node.module})
            if len(submodules) < len(node.names):
                found.add(node.module)
    return found


def import_cycles() -> list[list[str]]:
    """Strongly connected groups of more than one module in the import graph (Tarjan)."""
    modules = _modules()
    graph = {name: sorted(_imports(path, modules) - {name}) for name, path in modules.items()}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        on_stack.add(name)
        for other in graph[name]:
            if other not in index:
                visit(other)
                low[name] = min(low[name], low[other])
            elif other in on_stack:
                low[name] = min(low[name], index[other])
        if low[name] == index[name]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == name:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for name in graph:
        if name not in index:
            visit(name)
    return cycles


def long_functions(limit: int = MAX_LINES) -> list[str]:
    """``path:line name (n lines)`` for every function (docstring included) over ``limit`` lines."""
    paths = []
    for entry in SHORT_FUNCTIONS:
        target = PACKAGE / entry
        paths += sorted(target.rglob("*.py")) if target.is_dir() else [target]
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                lines = node.end_lineno - start + 1
                if lines > limit:
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_the_package_has_no_import_cycle():
    assert import_cycles() == []


def test_the_cycle_finder_finds_a_cycle(tmp_path, monkeypatch):
    package = tmp_path / "ensrm"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from ensrm.b import g\n")
    (package / "b.py").write_text("from ensrm import a\n")
    monkeypatch.setattr(f"{__name__}.PACKAGE", package)
    assert import_cycles() == [["ensrm.a", "ensrm.b"]]


def test_bundle_making_and_training_functions_are_short():
    assert long_functions() == []
