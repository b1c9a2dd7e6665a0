"""Nothing in the documentation rots: the site builds with --strict, and every example in it runs.

The examples run against the bundle ``ensrm demo`` builds (the session fixture ``demo_run``), each
page in its own stand-in for the repository root; see ``tests/docs/examples.py`` for the rules.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.docs.examples import ROOT, Block, find_blocks, pages, run_python, run_shell, shell_env

BLOCKS = [block for path in pages() for block in find_blocks(path.read_text(encoding="utf-8"),
                                                              path.relative_to(ROOT).as_posix())]
#: what a page's working directory links from the repository, so that paths read as from its root
REPO_LINKS = ("examples", "scripts", "benchmarks")
README_MAX_LINES = 200


def load_hooks():
    pytest.importorskip("mkdocs", reason="mkdocs is not installed: pip install 'ensrm[docs]'")
    spec = importlib.util.spec_from_file_location("ensrm_mkdocs_hooks", ROOT / "scripts" / "mkdocs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the site ------------------------------------------------------------------------------------

def test_site_builds_strict_with_every_command_and_public_name(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python", "mkdocs_click"):
        pytest.importorskip(module, reason=f"{module} is not installed: pip install 'ensrm[docs]'")
    from ensrm.cli import main

    site = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                            cwd=ROOT, env={**shell_env(), "NO_MKDOCS_2_WARNING": "1"}, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]

    cli = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    for name in main.commands:
        assert f"ensrm {name}" in cli, f"`ensrm {name}` is missing from the CLI reference"
    assert "ens-export" in cli and "--normalize-on" in cli
    api = (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    for name, path in load_hooks().public_names().items():
        assert f'id="{path}"' in api, f"ensrm.{name} ({path}) is missing from the API reference"
    search = json.loads((site / "search" / "search_index.json").read_text(encoding="utf-8"))
    assert any("best_of_n_batch" in doc["text"] for doc in search["docs"])
    # the results files the benchmark pages show are published with the site
    assert (site / "benchmarks" / "results" / "serve" / "bench_serve.png").is_file()


def test_nav_drops_only_absent_optional_pages(tmp_path):
    hooks = load_hooks()
    (tmp_path / "guides").mkdir()
    (tmp_path / "guides" / "eval.md").write_text("# eval\n")
    nav = [{"Home": "index.md"},
           {"Guides": [{"Eval": "guides/eval.md"}, {"Backends": "guides/backends.md"}]},
           {"Reference": [{"Faults": "reference/faults.md"}]},
           {"Typo": "guides/typo.md"}]
    assert hooks._drop_absent(nav, tmp_path) == [{"Home": "index.md"}, {"Guides": [{"Eval": "guides/eval.md"}]},
                                                 {"Typo": "guides/typo.md"}]  # left for --strict to refuse


def test_readme_stays_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move the detail into docs/"


# -- the examples ----------------------------------------------------------------------------------

def test_a_broken_example_fails_naming_its_page_and_line(tmp_path):
    shell, python = find_blocks("Intro.\n\n```bash\nensrm no-such-command\n```\n\n```python\nprint(undefined)\n```\n",
                                "docs/x.md")
    with pytest.raises(AssertionError, match=r"(?s)docs/x.md:3: bash block exited with status 2\n.*No such command"):
        run_shell(shell, tmp_path)
    with pytest.raises(NameError, match="undefined"):
        run_python(python, {})


def test_examples_are_found_and_skips_give_a_reason():
    assert {b.page for b in BLOCKS} >= {"README.md", "docs/guides/using-scores.md"}
    assert {"python", "bash"} <= {b.lang for b in BLOCKS}
    assert all(b.skip is None or len(b.skip) > 10 for b in BLOCKS)


@dataclass
class Workspace:
    root: Path
    namespace: dict = field(default_factory=lambda: {"__name__": "__main__"})
    done: set = field(default_factory=set)


def _link_or_copy(source, target):
    try:
        os.link(source, target)
    except OSError:  # another file system
        shutil.copy2(source, target)


@pytest.fixture(scope="session")
def docs_workspace(demo_run, tmp_path_factory):
    """``docs_workspace(page)``: the page's working directory, made once per page.

    It holds ``bundles/default`` (hard links to the demo bundle: ensrm replaces bundle files by
    renaming, never in place), ``checkpoints/default`` and links to the repository's example folders.
    """
    made: dict[str, Workspace] = {}

    def get(page: str) -> Workspace:
        if page not in made:
            root = tmp_path_factory.mktemp("docs-" + page.replace("/", "-").removesuffix(".md"))
            (root / "bundles").mkdir()
            shutil.copytree(demo_run.bundle, root / "bundles" / "default", copy_function=_link_or_copy)
            (root / "checkpoints").mkdir()
            (root / "checkpoints" / "default").symlink_to(demo_run.checkpoint, target_is_directory=True)
            for name in REPO_LINKS:
                (root / name).symlink_to(ROOT / name, target_is_directory=True)
            made[page] = Workspace(root)
        return made[page]

    return get


def _run(block: Block, workspace: Workspace) -> None:
    workspace.done.add(block.line)
    if block.lang != "python":
        run_shell(block, workspace.root)
        return
    before = os.getcwd()
    os.chdir(workspace.root)
    try:
        run_python(block, workspace.namespace)
    finally:
        os.chdir(before)


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"{b.where}-{b.lang}")
def test_example_runs(block, docs_workspace):
    if block.skip:
        pytest.skip(f"{block.where}: {block.skip}")
    workspace = docs_workspace(block.page)
    runnable = [b for b in BLOCKS if b.page == block.page and not b.skip]
    try:
        for earlier in runnable:  # a block may use what the page's earlier blocks made
            if earlier.line < block.line and earlier.line not in workspace.done:
                _run(earlier, workspace)
        _run(block, workspace)
    finally:
        if block is runnable[-1]:  # the page is done: let its scorers go
            workspace.namespace.clear()
            gc.collect()


def test_overoptimisation_tables_are_the_results_file():
    page = (ROOT / "docs" / "benchmarks" / "overoptimisation.md").read_text(encoding="utf-8")
    report = subprocess.run([sys.executable, str(ROOT / "examples" / "overoptimisation" / "report.py")],
                            capture_output=True, text=True, check=True).stdout
    rows = [line for line in report.splitlines() if line.startswith("| ")]
    assert len(rows) > 20 and [row for row in rows if row not in page] == []


def test_readme_links_point_at_files():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\((?!https?://|#)([^)#\s]+)", text)
    assert targets and [t for t in targets if not (ROOT / t).exists()] == []


def test_every_manifest_field_is_documented():
    import dataclasses

    from ensrm.spec import EnsembleSpec

    page = (ROOT / "docs" / "reference" / "bundle-format.md").read_text(encoding="utf-8")
    fields = [f.name for f in dataclasses.fields(EnsembleSpec)] + ["outputs"]
    assert [name for name in fields if f"| `{name}` |" not in page] == []


def test_development_tree_names_every_module_and_package():
    page = (ROOT / "docs" / "development.md").read_text(encoding="utf-8")
    tree = page.split("```\nensrm/\n", 1)[1].split("```", 1)[0]
    entries = [p.name + ("/" if p.is_dir() else "") for p in (ROOT / "ensrm").iterdir()
               if p.name != "__pycache__" and (p.is_dir() or p.suffix == ".py")]
    named = set(re.findall(r"[\w.]+/?", tree))
    assert [entry for entry in entries if entry not in named] == []


#: dotted names in the docs that are not Python objects: fields of the records `ensrm score` writes
NOT_OBJECTS = {"ensrm.error"}


def _resolve(dotted: str):
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError as exc:
            if exc.name and not exc.name.startswith("ensrm"):
                pytest.skip(f"{dotted} needs {exc.name}, which is not installed")
            continue
        for part in parts[i:]:
            obj = getattr(obj, part)
        return obj
    raise AssertionError(f"no module of {dotted} imports")


@pytest.mark.parametrize("dotted", sorted({name for path in pages() for name in re.findall(
    r"(?<![\w/.-])ensrm(?:\.[A-Za-z_]\w*)+", path.read_text(encoding="utf-8"))} - NOT_OBJECTS))
def test_dotted_ensrm_names_in_the_docs_resolve(dotted):
    _resolve(dotted)


def test_readme_headline_numbers_are_the_performance_pages():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Performance", 1)[1].split("\n## ", 1)[0]
    table = "\n".join(line for line in section.splitlines() if line.startswith("| "))
    numbers = re.findall(r"\d+\.\d+", table)
    page = "".join((ROOT / "docs" / "benchmarks" / name).read_text(encoding="utf-8")
                   for name in ("performance.md", "serving.md"))
    assert len(numbers) >= 8 and [n for n in numbers if n not in page] == []


def test_every_error_class_is_in_the_reference():
    import inspect

    import ensrm.errors

    classes = [name for name, obj in vars(ensrm.errors).items()
               if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == "ensrm.errors"]
    api = (ROOT / "docs" / "reference" / "api.md").read_text(encoding="utf-8")
    errors = (ROOT / "docs" / "reference" / "errors.md").read_text(encoding="utf-8")
    assert [name for name in classes if f"::: ensrm.errors.{name}\n" not in api or f"| `{name}` |" not in errors] == []
