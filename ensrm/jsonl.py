"""Read and write JSONL record files, reporting a malformed line by its number; write a file whole.

Every command that reads records (``ensrm score``, ``calibrate``, ``train``) goes through
:func:`read_records`, so the format and its errors are the same everywhere.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from ensrm.errors import InputFileError


def parse_record(line: str, fields: Sequence[str], path: str | os.PathLike, lineno: int) -> dict:
    """Parse one JSONL line into a dict whose ``fields`` are all strings."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputFileError(path, lineno, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise InputFileError(path, lineno, f"expected a JSON object, found {type(record).__name__}")
    for field in fields:
        if field not in record:
            raise InputFileError(path, lineno,
                                 f"missing field {field!r} (has: {', '.join(sorted(record)) or 'nothing'})")
        if not isinstance(record[field], str):
            raise InputFileError(
                path, lineno, f"field {field!r} must be a string, found {type(record[field]).__name__}"
            )
    return record


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for every non-blank line, streaming."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such records file: {path}")
    with path.open("r", encoding="utf-8", errors="strict") as handle:
        lineno = 0
        while True:
            try:
                line = handle.readline()
            except UnicodeDecodeError as exc:
                raise InputFileError(path, lineno + 1, f"not UTF-8 ({exc.reason})") from None
            if not line:
                return
            lineno += 1
            if line.strip():
                yield lineno, line


def read_records(path: str | os.PathLike, fields: Sequence[str] = ("prompt", "response")) -> Iterator[dict]:
    """Stream the records of a JSONL file, each a dict with string ``fields``.

    (Not run by the doctests: it needs records on disk.)

    >>> for record in read_records("refs.jsonl"):          # doctest: +SKIP
    ...     print(record["prompt"], record["response"])
    """
    for lineno, line in iter_lines(path):
        yield parse_record(line, fields, path, lineno)


def write_records(path: str | os.PathLike, records) -> None:
    """Write records as JSONL (UTF-8, one object a line)."""
    with Path(path).open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def write_atomically(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place (mode 0644):
    ``path`` is never seen half-written, and the temporary file never outlives an error.

    >>> import tempfile
    >>> out = write_atomically(Path(tempfile.mkdtemp()) / "a.txt", lambda tmp: Path(tmp).write_text("hi"))
    >>> out.read_text()
    'hi'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
