"""The package's shape, read from its source: imports point down the layers, no import cycle, short
functions where the orchestration is, and the repository's ``benchmarks/`` on ensrm's public API only.

Every check reads imports and definitions with ``ast`` (nothing is imported), so they hold for
every module whatever extras are installed.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ensrm"
BENCHMARKS = PACKAGE.parent / "benchmarks"

#: The layers, lowest first: a module may import modules of its own layer and of the layers below,
#: never of one above. DESIGN.md's Shape (spec/errors -> bundle -> runtime -> serve/integrations ->
#: export/calibration/train -> cli), with the places it leaves open decided:
#:
#: - ``foundation``: errors and spec, the package root (``import ensrm``: numpy + stdlib), and the
#:   stdlib-only helpers everything may use (``_optional``, ``_hf``, ``jsonl``, ``progress``, ``data``: synthetic text);
#: - ``builder`` (a bundle written into a staging directory, engines built beside it) sits with the
#:   runtime it reads bundles back with;
#: - ``models`` (the torch modules a bundle is traced from: heads, full ensembles, the partial trunk;
#:   and the ONNX tail written by hand) sits above serving, which never imports torch, and below
#:   everything that makes bundles;
#: - ``export`` (tracing, checks, the fused CPU graph) sits below ``calibration``,
#:   which rewrites and judges what export wrote; ``train`` beside calibration (it reads checkpoints
#:   through export's sources); ``export.exporter`` (``export_bundle``: export, then calibration's
#:   normalisation and variants) is the pipeline above both; ``evaluate`` (``ensrm eval``: the runtime's
#:   scores of preference pairs, calibration's rank metrics, the source model in torch through export's
#:   loaders) beside calibration;
#: - ``demo``, ``bench`` (``ensrm bench``) and ``cli`` are the applications on top.
#:
#: Each entry names a module or a package (which covers its submodules); the longest entry that
#: covers a module decides its layer, and every module must be covered.
LAYERS = [
    ("foundation", ["ensrm", "ensrm.errors", "ensrm.spec", "ensrm._optional", "ensrm._hf", "ensrm.jsonl",
                    "ensrm.progress", "ensrm.data"]),
    ("bundle", ["ensrm.bundle"]),
    ("runtime", ["ensrm.runtime", "ensrm.builder"]),
    ("serve/integrations", ["ensrm.serve", "ensrm.integrations"]),
    ("models", ["ensrm.models"]),
    ("export", ["ensrm.export"]),
    ("calibration/train", ["ensrm.calibration", "ensrm.train", "ensrm.evaluate"]),
    ("pipeline", ["ensrm.export.exporter"]),
    ("applications", ["ensrm.demo", "ensrm.bench", "ensrm.cli"]),
]

#: Where bundles are made, judged (``ensrm eval``), models trained and bundles served: each step small enough
#: to read at once.
SHORT_FUNCTIONS = ["export", "calibration", "train/trainer.py", "builder.py", "serve", "integrations", "runtime",
                   "evaluate"]
MAX_LINES = 60
#: Over-long functions in files being rewritten on other branches (issue 24's scoring-job work); each
#: name here is a function the merge is expected to shorten, then its entry goes.
LONG_FUNCTION_EXEMPTIONS: dict[str, set[str]] = {}


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


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of the longest entry covering ``module`` (``ensrm`` covers itself only)."""
    best, found = -1, None
    for index, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            covers = module == entry or (entry != "ensrm" and module.startswith(entry + "."))
            if covers and len(entry) > best:
                best, found = len(entry), index
    if found is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in {Path(__file__).name}")
    return found


def upward_imports() -> list[str]:
    """``a (layer) imports b (higher layer)`` for every import that points up."""
    modules = _modules()
    found = []
    for name, path in modules.items():
        for other in sorted(_imports(path, modules) - {name}):
            if layer_of(other) > layer_of(name):
                found.append(f"{name} ({LAYERS[layer_of(name)][0]}) imports {other} ({LAYERS[layer_of(other)][0]})")
    return found


def benchmarks_private_imports() -> list[str]:
    """Imports in ``benchmarks/`` of anything of ensrm that is not public (a ``_`` module or name)."""
    found = []
    for path in sorted(BENCHMARKS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            found += [f"{path.name}:{node.lineno} {name}" for name in names
                      if name.split(".")[0] == "ensrm" and any(part.startswith("_") for part in name.split("."))]
    return found


def long_functions(limit: int = MAX_LINES) -> list[str]:
    """``path:line name (n lines)`` for every function (docstring included) over ``limit`` lines, but
    those in :data:`LONG_FUNCTION_EXEMPTIONS`."""
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
                exempt = node.name in LONG_FUNCTION_EXEMPTIONS.get(str(path.relative_to(PACKAGE.parent)), ())
                if lines > limit and not exempt:
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


def test_imports_point_down_the_layers():
    assert upward_imports() == []


def test_the_layer_check_finds_an_upward_import(tmp_path, monkeypatch):
    package = tmp_path / "ensrm"
    (package / "runtime").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "runtime" / "__init__.py").write_text("")
    (package / "errors.py").write_text("")
    # the runtime reaching into a model definition: the shape the layers forbid
    (package / "runtime" / "scorer.py").write_text("from ensrm.errors import x\ndef f():\n    import ensrm.models\n")
    (package / "models").mkdir()
    (package / "models" / "__init__.py").write_text("import ensrm.errors\n")
    monkeypatch.setattr(f"{__name__}.PACKAGE", package)
    assert upward_imports() == ["ensrm.runtime.scorer (runtime) imports ensrm.models (models)"]


def test_every_module_has_a_layer_and_the_longest_entry_decides():
    for name in _modules():
        layer_of(name)  # raises for a module in no layer
    names = [LAYERS[layer_of(m)][0] for m in ("ensrm", "ensrm.cli", "ensrm.export.trace", "ensrm.export.exporter")]
    assert names == ["foundation", "applications", "export", "pipeline"]


def test_long_function_exemptions_name_functions_that_exist():
    """An exemption for a function that is gone or short again is stale: remove it."""
    for relative, names in LONG_FUNCTION_EXEMPTIONS.items():
        tree = ast.parse((PACKAGE.parent / relative).read_text(encoding="utf-8"))
        long = {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and node.end_lineno - min([node.lineno] + [d.lineno for d in node.decorator_list]) + 1 > MAX_LINES}
        assert names <= long, f"{relative}: {sorted(names - long)} no longer over {MAX_LINES} lines"


def test_benchmarks_use_only_the_public_api_and_the_package_never_imports_them():
    assert benchmarks_private_imports() == []
    modules = _modules()
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not any(n.split(".")[0] == "benchmarks" for n in imported), name
