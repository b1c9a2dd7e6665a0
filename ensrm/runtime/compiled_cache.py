"""The on-disk cache of compiled graphs: one entry per graph content, bounded in size.

OpenVINO keys a cached blob by the graph's absolute path and the compile options, and checks only
the graph file's size and modification time before reusing it, never its weights: new weights
under an unchanged ``model.onnx`` (an external-data file edited in place, or a bundle replaced by
one unpacked with normalised timestamps, as reproducible archives have) went on scoring the old
weights from the old blob. So every graph content gets an entry directory of its own, named by
the sha256 the bundle's manifest records for the graph and its weights (verified when the bundle
loads) and by the files' paths, sizes and modification times; OpenVINO's ``CACHE_DIR`` points
there. Each blob holds a copy of the weights (87 MiB for MiniLM, over 1 GiB for a 0.5B decoder),
so the least recently used entries are deleted once the cache outgrows its limit.

>>> import tempfile
>>> root = Path(tempfile.mkdtemp())
>>> graph = root / "model.onnx"; _ = graph.write_bytes(b"graph")
>>> entry = cache_entry(root / "cache", graph)
>>> entry.parent == root / "cache", entry == cache_entry(root / "cache", graph)
(True, True)
>>> _ = graph.write_bytes(b"other graph")   # rewritten in place: a new entry
>>> cache_entry(root / "cache", graph) == entry
False
>>> cache_entry(root / "cache", graph, {"model.onnx": "ab12"}) == cache_entry(root / "cache", graph)
False
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

#: The cache's default size limit in GiB; ``$ENSRM_OPENVINO_CACHE_GB`` overrides it (0 turns the cache off).
LIMIT_GB = 4.0
LIMIT_VARIABLE = "ENSRM_OPENVINO_CACHE_GB"


def weight_files(graph: Path) -> list[Path]:
    """The files a graph reads: itself, an ONNX graph's external data (``<file>.data``, as ensrm writes
    it) and an OpenVINO IR's weights (``.bin``), where they exist."""
    candidates = (graph, graph.with_name(graph.name + ".data"), graph.with_suffix(".bin"))
    return [path for path in candidates if path.is_file()]


def cache_entry(root: Path, graph: Path, digests: dict[str, str] | None = None) -> Path | None:
    """The entry directory (created, marked as just used) under ``root`` for ``graph``'s current content,
    or ``None`` where the limit is 0; ``digests`` are the sha256 of its files by name, as a bundle's
    manifest lists them."""
    if limit_bytes() == 0:
        return None
    digests = digests or {}
    stats = [(path, path.stat()) for path in weight_files(graph)]
    stamp = "\n".join(f"{path.resolve()}\t{st.st_size}\t{st.st_mtime_ns}\t{digests.get(path.name)}"
                      for path, st in stats)
    entry = root / hashlib.sha256(stamp.encode()).hexdigest()[:24]
    entry.mkdir(parents=True, exist_ok=True)
    os.utime(entry)  # recency: pruning deletes the entries used longest ago
    return entry


def limit_bytes() -> int:
    """The size limit in bytes, from ``$ENSRM_OPENVINO_CACHE_GB`` or :data:`LIMIT_GB`."""
    raw = os.environ.get(LIMIT_VARIABLE, "").strip()
    try:
        gib = float(raw) if raw else LIMIT_GB
    except ValueError:
        gib = -1.0
    if not gib >= 0:  # also catches nan
        raise ValueError(f"{LIMIT_VARIABLE} must be a size in GiB >= 0 (0: no cache), got {raw!r}")
    return int(gib * 2**30)


def prune(root: Path, keep: Path, limit: int | None = None) -> list[Path]:
    """Delete the least recently used entries of ``root`` (never ``keep``) until it holds at most ``limit``
    bytes (default: :func:`limit_bytes`); loose files (blobs of the flat layout older versions wrote,
    never read now) go first.

    Returns what was deleted. Another process pruning at the same time is harmless: an entry or file
    already gone is skipped.
    """
    limit = limit_bytes() if limit is None else limit
    removed, entries = [], []
    for child in list(root.iterdir()):
        try:
            if child.is_dir():
                size = sum(f.stat().st_size for f in child.iterdir() if f.is_file())
                entries.append((child.stat().st_mtime, size, child))
            else:
                child.unlink()
                removed.append(child)
        except FileNotFoundError:
            continue
    total = sum(size for _, size, _ in entries)
    for _, size, child in sorted(entries):
        if total <= limit:
            break
        if child != keep:
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
            total -= size
    return removed
