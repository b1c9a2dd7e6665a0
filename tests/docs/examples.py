"""Find and run the fenced examples of the README and the documentation site.

A page's ```python blocks share one namespace (a later block may use an earlier block's names);
```bash / ```sh / ```shell blocks run in ``bash -euo pipefail``; ```console blocks run their ``$ ``
lines. Every block of a page runs in that page's own working directory, a stand-in for the
repository root (``bundles/default``, ``checkpoints/default``, ``examples/``, ``scripts/``, ...).
A block that cannot run here carries ``<!-- skip: REASON -->`` on the line directly above its
opening fence. Other fences (json, text, a bare fence) are shown, never run.

>>> [(b.lang, b.line, b.skip) for b in find_blocks("<!-- skip: needs a GPU -->\\n```bash\\nnvidia-smi\\n```\\n")]
[('bash', 2, 'needs a GPU')]
"""

from __future__ import annotations

import linecache
import os
import re
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: fence language -> how it runs
RUNNERS = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash", "console": "console"}
_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")
_SKIP = re.compile(r"^\s*<!--\s*skip:\s*(?P<reason>.+?)\s*-->\s*$")
#: a block that runs longer than this fails (examples are meant to take seconds)
BLOCK_TIMEOUT_S = 300


@dataclass(frozen=True)
class Block:
    """One runnable fenced block: where it is, how it runs, and why it is skipped (if it is)."""

    page: str          # path relative to the repository root
    line: int          # 1-based line of the opening fence
    lang: str          # "python", "bash" or "console"
    code: str
    skip: str | None = None

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def find_blocks(text: str, page: str = "<text>") -> list[Block]:
    """The runnable blocks of a Markdown ``text``, in page order (fences may be indented in lists)."""
    lines = text.split("\n")
    blocks, i = [], 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, start = match["fence"], i
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith(fence)
                    and not lines[j].strip().strip(fence[0])), None)
        if end is None:
            raise ValueError(f"{page}:{i + 1}: code fence {fence} is never closed")
        lang = RUNNERS.get(match["lang"].lower())
        if lang is not None:
            skip = _SKIP.match(lines[start - 1]) if start > 0 else None
            code = textwrap.dedent("\n".join(lines[start + 1:end]))
            blocks.append(Block(page, start + 1, lang, code, skip["reason"] if skip else None))
        i = end + 1
    return blocks


def pages() -> list[Path]:
    """README.md and every Markdown page of the site."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def console_commands(code: str) -> str:
    """The ``$ `` command lines of a console block (with their ``\\`` continuations), as a script."""
    commands, continuing = [], False
    for line in code.split("\n"):
        if line.startswith("$ ") or continuing:
            commands.append(line[2:] if line.startswith("$ ") and not continuing else line)
            continuing = line.rstrip().endswith("\\")
    return "\n".join(commands)


def run_python(block: Block, namespace: dict) -> None:
    """Run a python block in the page's ``namespace``; a traceback shows the page's lines."""
    filename = f"<{block.where}>"
    linecache.cache[filename] = (len(block.code), None, block.code.splitlines(keepends=True), filename)
    exec(compile(block.code, filename, "exec"), namespace)


def shell_env() -> dict[str, str]:
    """This interpreter's scripts first on PATH (``ensrm``, ``ens-export``, ``python``), this checkout importable."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def run_shell(block: Block, cwd: Path, timeout: float = BLOCK_TIMEOUT_S) -> str:
    """Run a bash/console block in ``cwd``; return its output, or raise naming the block and its output.

    The block runs in its own session, and whatever it left running (a server started with ``&``)
    is ended with it.
    """
    script = console_commands(block.code) if block.lang == "console" else block.code
    proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=shell_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _end_group(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        raise AssertionError(f"{block.where}: {block.lang} block ran over {timeout:.0f} s\n{output[-4000:]}") from None
    finally:
        _end_group(proc.pid, signal.SIGTERM)
    if proc.returncode != 0:
        raise AssertionError(f"{block.where}: {block.lang} block exited with status {proc.returncode}\n"
                             f"{output[-4000:]}")
    return output


def _end_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:  # nothing of the block is left
        pass
