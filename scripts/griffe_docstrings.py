"""A griffe extension that lets the package's reST-flavoured docstrings render as Markdown.

The docstrings are written for ``help()`` and doctest: ``:class:`Scorer``` roles and bare ``>>>``
examples. mkdocstrings reads docstrings as Markdown, where a role shows up as text and an example
line such as ``rows[0]["ens_score"]`` parses as a (broken) reference link. Converting here, at
build time, keeps the package's docstrings as they are:

- ``:class:`~ensrm.errors.InputError``` becomes ```InputError``` (``~``: the last component,
  as Sphinx shows it), other roles their target in backticks;
- each run of doctest lines (``>>>`` and ``...`` with the output lines after them) becomes a fenced
  ``pycon`` block, with doctest directives (``# doctest: +SKIP``) removed.

>>> to_markdown("Use :class:`~ensrm.Scorer`.\\n\\n>>> 1 + 1\\n2")
'Use `Scorer`.\\n\\n```pycon\\n>>> 1 + 1\\n2\\n```'
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|data|exc|obj|const):`(~?)([^`]+)`")
_DIRECTIVE = re.compile(r"\s*#\s*doctest:\s*[+-]\w+(?:\s*,\s*[+-]\w+)*\s*$")


def _role(match: re.Match) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def to_markdown(text: str) -> str:
    """The docstring ``text`` with roles as code spans and doctest runs as fenced blocks."""
    lines = _ROLE.sub(_role, text).split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        stripped = lines[i].lstrip()
        if not stripped.startswith(">>>"):
            out.append(lines[i])
            i += 1
            continue
        indent = lines[i][: len(lines[i]) - len(stripped)]
        out.append(f"{indent}```pycon")
        while i < len(lines) and lines[i].strip():  # a doctest run ends at a blank line
            out.append(_DIRECTIVE.sub("", lines[i]))
            i += 1
        out.append(f"{indent}```")
    return "\n".join(out)


class DocstringMarkdown(griffe.Extension):
    """Rewrite every loaded object's docstring with :func:`to_markdown`."""

    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
