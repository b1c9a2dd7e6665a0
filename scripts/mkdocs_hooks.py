"""MkDocs hooks for the documentation site (``hooks:`` in mkdocs.yml).

Three jobs, each so that the site cannot drift from the repository:

- **Repository files on the site.** The benchmark results (plots, JSON, tables), the overoptimisation
  figure and ``benchmarks/NOTES.md`` stay where the scripts write them; they join the site under their
  repository paths (``benchmarks/results/serve/bench_serve.png``), so pages link to the files the
  commands wrote rather than to copies.
- **Pages still being written elsewhere.** ``OPTIONAL_PAGES`` are nav entries whose pages come from
  other branches; while a page is absent its entry is dropped and links to it are shown as plain
  text (both logged), so ``--strict`` stays green, and the page appears by itself once merged. Any
  other nav entry or link without a file still fails the build.
- **Every public name in the API reference.** ``reference/api.md`` documents ``ensrm.__all__`` by hand;
  any name in ``ensrm.__all__`` that the page does not render yet is appended to it, so a name added
  to the package appears in the reference without an edit here.
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File, InclusionLevel

log = logging.getLogger("mkdocs.hooks.ensrm")

ROOT = Path(__file__).resolve().parents[1]
#: repository folders and files published on the site under the same relative path
REPO_FILES = ("benchmarks/NOTES.md", "benchmarks/results", "examples/overoptimisation/results")
#: nav pages other branches add; dropped from the nav while they do not exist
OPTIONAL_PAGES = frozenset({
    "guides/backends.md", "guides/choosing.md", "guides/deploying.md", "guides/eval.md", "guides/decoders.md",
    "reference/faults.md",
})
API_PAGE = "reference/api.md"
_LINK = re.compile(r"\[([^\]]+)\]\(([^)#\s]+\.md)(#[^)\s]*)?\)")


def _drop_absent(nav, docs_dir: Path):
    """``nav`` without entries for absent ``OPTIONAL_PAGES`` (and sections left empty by that)."""
    kept = []
    for entry in nav:
        if isinstance(entry, dict):
            (title, value), = entry.items()
            if isinstance(value, list):
                value = _drop_absent(value, docs_dir)
                if value:
                    kept.append({title: value})
                continue
            if value in OPTIONAL_PAGES and not (docs_dir / value).is_file():
                log.info("nav: %s (%s) is not written yet; left out", value, title)
                continue
        kept.append(entry)
    return kept


def on_config(config):
    config["nav"] = _drop_absent(config["nav"], Path(config["docs_dir"]))
    return config


def on_files(files, config):
    for name in REPO_FILES:
        path = ROOT / name
        sources = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for source in sources:
            if any(part.startswith(".") for part in source.relative_to(ROOT).parts):
                continue
            uri = source.relative_to(ROOT).as_posix()
            # NOTES.md has a nav entry; the results' own tables are reachable by links only
            inclusion = InclusionLevel.INCLUDED if uri == "benchmarks/NOTES.md" else InclusionLevel.NOT_IN_NAV
            files.append(File.generated(config, uri, abs_src_path=str(source), inclusion=inclusion))
    return files


def public_names() -> dict[str, str]:
    """``{name: "module.name"}`` for every class and function in ``ensrm.__all__`` (not ``__version__``)."""
    import ensrm

    paths = {}
    for name in ensrm.__all__:
        obj = getattr(ensrm, name)
        module = getattr(obj, "__module__", None)
        if module and getattr(obj, "__name__", None) == name:
            paths[name] = f"{module}.{name}"
    return paths


def _unlink_absent(markdown: str, page_uri: str, docs_dir: Path) -> str:
    """``markdown`` with links to absent ``OPTIONAL_PAGES`` reduced to their text."""

    def replace(match: re.Match) -> str:
        target = posixpath.normpath(posixpath.join(posixpath.dirname(page_uri), match.group(2)))
        if target in OPTIONAL_PAGES and not (docs_dir / target).is_file():
            log.info("%s: link to %s (not written yet) shown as text", page_uri, target)
            return match.group(1)
        return match.group(0)

    return _LINK.sub(replace, markdown)


def on_page_markdown(markdown, page, config, files):
    markdown = _unlink_absent(markdown, page.file.src_uri, Path(config["docs_dir"]))
    if page.file.src_uri != API_PAGE:
        return markdown
    missing = [path for path in public_names().values() if f"::: {path}\n" not in markdown + "\n"]
    if missing:
        log.info("api: appending %s, in ensrm.__all__ but not on %s", ", ".join(missing), API_PAGE)
        markdown += "\n\n## Also exported\n\n" + "\n\n".join(f"::: {path}" for path in missing) + "\n"
    return markdown
