"""The docstring examples that need no model run, and every example that does not run says why.

Modules are imported (the export extra is needed for some); examples that need a bundle, a
checkpoint, a GPU or minutes are marked ``# doctest: +SKIP`` and their docstring says so in a
sentence containing "not run by the doctests".
"""

from __future__ import annotations

import ast
import doctest
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ensrm"
BENCHMARKS = PACKAGE.parent / "benchmarks"
#: Modules whose examples are not checked here, and why. The files being rewritten on other
#: branches (issue 24's scoring-config and scoring-job work) join the run after that merge.
NOT_CHECKED = {
    "ensrm.serve": "being rewritten on another branch (one error mapping per boundary)",
}
REASON = "not run by the doctests"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _checked(path: Path) -> bool:
    name = _module_name(path)
    return not any(name == m or name.startswith(m + ".") for m in NOT_CHECKED)


def _with_examples() -> list[Path]:
    files = sorted(PACKAGE.rglob("*.py")) + sorted(BENCHMARKS.glob("*.py"))
    return [p for p in files if ">>> " in p.read_text(encoding="utf-8") and _checked(p)]


@pytest.mark.parametrize("path", _with_examples(), ids=_module_name)
def test_examples_run(path, monkeypatch):
    monkeypatch.chdir(PACKAGE.parent)  # examples name paths relative to the repository root
    module = importlib.import_module(_module_name(path))
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {path.name}"


def skipped_without_reason(paths: list[Path]) -> list[str]:
    """``path:line name`` for every docstring with a skipped example and no sentence saying why."""
    found = []
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=False) or ""
                if "+SKIP" in doc and REASON not in doc.lower():
                    where = path.relative_to(PACKAGE.parent) if path.is_relative_to(PACKAGE.parent) else path.name
                    found.append(f"{where}:{getattr(node, 'lineno', 1)} {getattr(node, 'name', '<module>')}")
    return found


def test_skipped_examples_say_why():
    assert skipped_without_reason(_with_examples()) == []


def test_the_reason_check_finds_a_silent_skip(tmp_path):
    silent = tmp_path / "silent.py"
    silent.write_text('def f():\n    """Do it.\n\n    >>> f()   # doctest: +SKIP\n    """\n')
    said = tmp_path / "said.py"
    said.write_text('def g():\n    """Do it. (Not run by the doctests: needs a bundle.)\n\n'
                    '    >>> g()  # doctest: +SKIP\n    """\n')
    assert skipped_without_reason([silent, said]) == ["silent.py:1 f"]
