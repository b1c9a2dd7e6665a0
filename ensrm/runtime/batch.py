"""Batch scoring of JSONL files, streaming, with nothing lost and nothing half-written.

Every input record (a JSON object with string fields ``prompt`` and ``response``) is written
back with all of its fields plus one added field, ``"ensrm"``::

    {"prompt": ..., "response": ..., <other input fields>,
     "ensrm": {"heads": [K floats], "mean": m, "std": s, "min": w, "uwo": u,
               "objective": "uwo", "score": <the objective's value>,
               "best_of_n": {"chosen": true, "group": 0, "group_size": 4},          # with best_of_n
               "filter": {"accept": false, "reason": "score_too_low", ...}}}        # with a filter

- **Best-of-n** groups *consecutive* records with the same ``prompt`` (so memory stays
  bounded by one chunk plus one group): sort or group the file by prompt first. The chosen
  record of each group has ``"chosen": true`` (tie rule of :mod:`ensrm.runtime.best_of_n`;
  a group whose scores are all NaN has none chosen). Groups are numbered from 0.
- **Filter**: the decision of a :class:`~ensrm.runtime.filter.ResponseFilter` (its own
  objective and thresholds), see :class:`~ensrm.runtime.filter.Decision`.
- **Bad records** (not UTF-8, not JSON, not an object, ``prompt``/``response`` missing or
  not strings, an input field already named ``ensrm``, or a pair the tokenizer cannot
  encode): with ``on_bad_row="fail"`` (the default) the run stops with
  :class:`~ensrm.errors.InputFileError` naming the first bad line; with ``"skip"`` (the
  ``skip_bad=True`` of earlier versions) each goes to the rejects file as
  ``{"line": n, "reason": ..., "text": <the line>}``, in line order. Every non-blank input
  line ends up in exactly one of the two files.
- The output (and rejects) file is written to a temporary file in the same directory and
  renamed into place only when the whole input is done; on any error (a full disk included:
  :class:`~ensrm.errors.OutputError`) neither appears and an existing file of that name is
  left untouched. With ``resume=True`` the run keeps a journal beside the output after every
  chunk, and a run interrupted (even by SIGKILL) continues from its last completed chunk.

The job is the same code on Ray (:func:`ensrm.integrations.ray_data.score_files`): a file is
cut into chunks of ``chunk_size`` non-blank lines (:func:`chunks`), each chunk is scored by
:func:`score_lines` (locally, or in a Ray actor), and one :class:`JobWriter` writes the
results in line order, so both give byte-identical files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ensrm.errors import InputError, InputFileError, JobError, OutputError
from ensrm.jsonl import parse_record
from ensrm.progress import JobProgress
from ensrm.runtime.best_of_n import argmax_or_none
from ensrm.runtime.scores import Scores, parse_objective

FIELDS = ("prompt", "response")
OUTPUT_FIELD = "ensrm"
BAD_ROW_POLICIES = ("fail", "skip")
JOURNAL_VERSION = 1

#: kept for code that imported it from here; the one definition is :data:`ensrm.progress.JobProgress`
Progress = JobProgress


def count_parts(groups: int | None, accepted: int | None, rejected: int, rejects) -> list[str]:
    """The best-of-n, filter and rejects counts of a job summary's line, those that apply.

    >>> count_parts(3, None, 1, "out.rejects.jsonl")
    ['3 best-of-n groups', '1 bad records -> out.rejects.jsonl']
    """
    parts = [] if groups is None else [f"{groups:,} best-of-n groups"]
    if accepted is not None:
        parts.append(f"{accepted:,} accepted by the filter")
    if rejects is not None:
        parts.append(f"{rejected:,} bad records -> {rejects}")
    return parts


@dataclass(frozen=True)
class BatchSummary:
    """What a :func:`score_file` run (or ``score_files`` on Ray) did."""

    records: int           # scored and written to the output
    rejected: int          # written to the rejects file (on_bad_row="skip" only)
    groups: int | None     # best-of-n groups, or None without best_of_n
    accepted: int | None   # records the filter accepted, or None without a filter
    seconds: float
    output: Path
    rejects: Path | None
    resumed_at: int | None = None  # the input line a resumed run continued from

    @property
    def records_per_second(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else float("inf")

    def describe(self) -> str:
        """One line: records, speed, output, and the best-of-n, filter and rejects counts that apply."""
        parts = [f"{self.records:,} records scored in {self.seconds:.1f} s "
                 f"({self.records_per_second:,.0f} records/s) -> {self.output}"]
        if self.resumed_at is not None:
            parts.append(f"resumed at line {self.resumed_at:,}")
        return "; ".join(parts + count_parts(self.groups, self.accepted, self.rejected, self.rejects))


def bad_row_policy(on_bad_row: str | None = None, skip_bad: bool | None = None) -> str:
    """The bad-row policy, ``"fail"`` or ``"skip"``, from ``on_bad_row`` or the older ``skip_bad`` flag.

    >>> bad_row_policy(skip_bad=True), bad_row_policy("fail")
    ('skip', 'fail')
    """
    if on_bad_row is not None and skip_bad is not None and (on_bad_row == "skip") != skip_bad:
        raise ValueError(f"`on_bad_row={on_bad_row}` and `skip_bad={skip_bad}` disagree; give one")
    policy = on_bad_row if on_bad_row is not None else ("skip" if skip_bad else "fail")
    if policy not in BAD_ROW_POLICIES:
        raise ValueError(f"`on_bad_row` must be one of {', '.join(BAD_ROW_POLICIES)}, got {policy!r}")
    return policy


def check_rejects_option(skip_bad: bool, rejects_path: str | os.PathLike | None) -> None:
    """A rejects file is written only when bad records are skipped; refuse one given without ``skip_bad``."""
    if rejects_path is not None and not skip_bad:
        raise ValueError("`rejects_path` goes with `skip_bad=True`: a rejects file is only written when bad "
                         "records are skipped")


def default_rejects_path(output: str | os.PathLike) -> Path:
    """``out.jsonl`` -> ``out.rejects.jsonl`` (any other name gets ``.rejects.jsonl`` appended)."""
    output = Path(output)
    stem = output.name[:-len(".jsonl")] if output.name.endswith(".jsonl") else output.name
    return output.with_name(f"{stem}.rejects.jsonl")


def check_job_paths(input_path: str | os.PathLike, output_path: str | os.PathLike, on_bad_row: str,
                    rejects_path: str | os.PathLike | None) -> Path | None:
    """Refuse an output or rejects path that is the input; the rejects path (``None`` unless skipping)."""
    input_path, output_path = Path(input_path), Path(output_path)
    if output_path.exists() and output_path.resolve() == input_path.resolve():
        raise ValueError(f"the output {output_path} is the input file; write to another path")
    check_rejects_option(on_bad_row == "skip", rejects_path)
    if on_bad_row != "skip":
        return None
    rejects = Path(rejects_path) if rejects_path is not None else default_rejects_path(output_path)
    if rejects.resolve() in (output_path.resolve(), input_path.resolve()):
        raise ValueError(f"the rejects file {rejects} must differ from the input and output files")
    return rejects


class AtomicFile:
    """A file written under a temporary name beside ``path``; ``commit`` renames it into place.

    Any ``OSError`` while writing (a full disk: ENOSPC) removes the temporary file and raises
    :class:`~ensrm.errors.OutputError` naming ``path``. With ``partial`` (a resumable run) the
    temporary name is fixed, ``.<name>.partial``, and an existing one is reopened and cut to
    ``keep`` bytes.
    """

    def __init__(self, path: str | os.PathLike, partial: bool = False, keep: int | None = None):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if partial:
                self.tmp = partial_path(self.path)
                self.handle = self.tmp.open("r+b" if keep is not None else "wb")
                if keep is not None:
                    self.handle.truncate(keep)
                    self.handle.seek(keep)
            else:
                fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
                self.tmp = Path(tmp)
                self.handle = os.fdopen(fd, "wb")
        except OSError as exc:
            raise OutputError(self.path, exc) from None

    def write(self, line: str) -> None:
        """Write one line (``line`` without its newline)."""
        try:
            self.handle.write(line.encode("utf-8") + b"\n")
        except OSError as exc:
            self._fail(exc)

    def sync(self) -> int:
        """Flush to disk; the number of bytes written so far."""
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            return self.handle.tell()
        except OSError as exc:
            self._fail(exc)

    def commit(self) -> None:
        try:
            self.handle.close()
            os.chmod(self.tmp, 0o644)
            os.replace(self.tmp, self.path)
        except OSError as exc:
            self._fail(exc)

    def discard(self) -> None:
        """Close and remove the temporary file (a no-op after ``commit``)."""
        if not self.handle.closed:
            try:
                self.handle.close()
            except OSError:
                pass  # the write that failed already reported it; the file goes anyway
        if self.tmp.exists():
            self.tmp.unlink()

    def _fail(self, exc: OSError):
        self.discard()
        raise OutputError(self.path, exc) from None


def partial_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


def journal_path(output: str | os.PathLike) -> Path:
    """Where a resumable run keeps its journal: ``.<output name>.journal.json`` beside the output."""
    output = Path(output)
    return output.with_name(f".{output.name}.journal.json")


# -- chunks of lines ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """``lines`` non-blank lines at bytes ``[offset, end)`` of a file, from line ``first_line`` to
    ``next_line`` (excluded; blank lines count)."""

    offset: int
    end: int
    first_line: int
    lines: int
    next_line: int


def _is_blank(raw: bytes) -> bool:
    try:
        return not raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return False


def chunks(path: str | os.PathLike, chunk_size: int, offset: int = 0,
           first_line: int = 1) -> Iterator[tuple[Chunk, list[tuple[int, bytes]]]]:
    """Cut a file into chunks of ``chunk_size`` non-blank lines (from byte ``offset``, which is line
    ``first_line``); yields each chunk with its ``(line_number, raw_line)`` pairs. Streams.

    (The example needs a records file: not run by the doctests.)

    >>> [c.lines for c, _ in chunks("records.jsonl", 1024)]      # doctest: +SKIP
    [1024, 1024, 17]
    """
    with Path(path).open("rb") as handle:
        handle.seek(offset)
        start, lineno, items = offset, first_line, []
        chunk_first = first_line
        for raw in handle:
            offset += len(raw)
            if not _is_blank(raw):
                items.append((lineno, raw))
            lineno += 1
            if len(items) >= chunk_size:
                yield Chunk(start, offset, chunk_first, len(items), lineno), items
                start, chunk_first, items = offset, lineno, []
        if items:
            yield Chunk(start, offset, chunk_first, len(items), lineno), items


def read_chunk(path: str | os.PathLike, chunk: Chunk) -> list[tuple[int, bytes]]:
    """The ``(line_number, raw_line)`` pairs of one chunk, read back from its byte range (a Ray worker's read)."""
    with Path(path).open("rb") as handle:
        handle.seek(chunk.offset)
        data = handle.read(chunk.end - chunk.offset)
    items, lineno = [], chunk.first_line
    for raw in io.BytesIO(data):  # split exactly as iterating the file does
        if not _is_blank(raw):
            items.append((lineno, raw))
        lineno += 1
    return items


# -- scoring a chunk ---------------------------------------------------------------------------


class ScoredLine(NamedTuple):
    """One non-blank input line after scoring: its output record (a JSON line without ``best_of_n``),
    or the problem that makes it a bad record."""

    line: int
    text: str                  # the line as text (undecodable bytes replaced), without its newline
    record: str | None         # the output line, for a good record
    prompt: str | None         # for best-of-n grouping
    score: float | None        # the objective's value, for best-of-n
    accepted: bool | None      # the filter's decision, with a filter
    problem: str | None        # why the line is bad, for a bad record


def _parse(raw: bytes, path, lineno: int) -> tuple[str, dict | None, str | None]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return raw.decode("utf-8", errors="replace").rstrip("\r\n"), None, f"not UTF-8 ({exc.reason})"
    text = text.rstrip("\r\n")
    try:
        record = parse_record(text, FIELDS, path, lineno)
    except InputFileError as exc:
        return text, None, exc.problem
    if OUTPUT_FIELD in record:
        return text, None, f"the input already has a field {OUTPUT_FIELD!r}, which the output adds"
    return text, record, None


def score_lines(scorer, items: list[tuple[int, bytes]], *, path: str | os.PathLike = "<input>", objective: str = "uwo",
                batch_size: int = 32, response_filter=None, progress=None) -> list[ScoredLine]:
    """Parse, validate and score raw JSONL lines, ``8 * batch_size`` pairs at a time; one
    :class:`ScoredLine` per item, in order. The same code scores a chunk locally and on Ray.
    ``progress(scored, bad)``, when given, is called after every ``8 * batch_size`` pairs with
    this chunk's counts so far (so progress shows even on a slow machine).

    (The example needs a bundle: not run by the doctests.)

    >>> [r.problem for r in score_lines(scorer, [(1, b'{"prompt": "Hi", "response": 5}')])]  # doctest: +SKIP
    ["field 'response' must be a string, found int"]
    """
    parsed = [(lineno, *_parse(raw, path, lineno)) for lineno, raw in items]
    out: list[ScoredLine | None] = [None] * len(parsed)
    good = [i for i, (_, _, record, _) in enumerate(parsed) if record is not None]
    for i, (lineno, text, record, problem) in enumerate(parsed):
        if record is None:
            out[i] = ScoredLine(lineno, text, None, None, None, None, problem)
    step, scored, failures = 8 * batch_size, 0, 0
    for start in range(0, len(good), step):
        rows = good[start:start + step]
        records = [parsed[i][2] for i in rows]
        scores, kept, failed = score_isolating(scorer, [r["prompt"] for r in records],
                                               [r["response"] for r in records], batch_size)
        for j, message in failed.items():
            lineno, text = parsed[rows[j]][:2]
            out[rows[j]] = ScoredLine(lineno, text, None, None, None, None, message)
        values = scores.objective(objective)  # [kept]
        decisions = response_filter.decide_scores(scores) if response_filter is not None else None
        for n, j in enumerate(kept):
            lineno, text, record, _ = parsed[rows[j]]
            added = scores.row(n)
            added["objective"] = objective
            added["score"] = float(values[n])
            if decisions is not None:
                added["filter"] = decisions[n].to_dict()
            record[OUTPUT_FIELD] = added  # the last key: best-of-n is spliced in before the closing braces
            out[rows[j]] = ScoredLine(lineno, text, json.dumps(record, ensure_ascii=False), record["prompt"],
                                      added["score"], None if decisions is None else bool(decisions[n].accept), None)
        scored += len(kept)
        if progress is not None:
            progress(scored, len(parsed) - len(good) + len(failed) + failures)
        failures += len(failed)
    return out


def score_isolating(scorer, prompts: list[str], responses: list[str],
                    batch_size: int) -> tuple[Scores, list[int], dict[int, str]]:
    """``score_texts`` on all pairs; if a pair cannot be encoded, score them one by one so that
    only the bad pairs fail. Returns the scores of the pairs that scored, their indices, and the
    error message of each pair that did not.

    (The example needs a bundle: not run by the doctests.)

    >>> scores, kept, failed = score_isolating(scorer, ["Hi"], ["Hello!"], 32)   # doctest: +SKIP
    >>> kept, failed  # doctest: +SKIP
    ([0], {})
    """
    try:
        return scorer.score_texts(prompts, responses, batch_size=batch_size), list(range(len(prompts))), {}
    except InputError:
        pass
    # Some pair cannot be encoded; score one by one to name it (rare, so the slow path is fine).
    kept, parts, failed = [], [], {}
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        try:
            parts.append(scorer.score_texts([prompt], [response]))
            kept.append(i)
        except InputError as exc:
            failed[i] = str(exc)
    return Scores.concatenate(parts, scorer.num_heads), kept, failed


# -- writing a job's results -------------------------------------------------------------------


def _with_best_of_n(record: str, chosen: bool, group: int, size: int) -> str:
    # ``record`` ends with the closing braces of its "ensrm" object and of the record itself
    marked = json.dumps({"chosen": chosen, "group": group, "group_size": size})
    return f'{record[:-2]}, "best_of_n": {marked}}}}}'


class JobWriter:
    """Writes scored lines, in input order, to the output and rejects files: the one place that
    applies the bad-row policy, best-of-n grouping (consecutive records with the same prompt,
    numbered from 0; the tie rule of :func:`~ensrm.runtime.best_of_n.argmax_or_none`) and counting."""

    def __init__(self, input_path, output: AtomicFile, rejects: AtomicFile | None, *, on_bad_row: str = "fail",
                 best_of_n: bool = False):
        self.input_path = str(input_path)
        self.output, self.rejects = output, rejects
        self.skip = on_bad_row == "skip"
        self.best_of_n = best_of_n
        self.written = self.scored = self.rejected = self.accepted = self.groups = 0
        self.last_line = 0
        self.group: list[tuple[str, float, str]] = []  # (prompt, score, record) of the open group

    def add(self, item: ScoredLine) -> None:
        if item.line <= self.last_line:
            raise JobError(f"line {item.line} of {self.input_path} arrived again or out of order (after line "
                               f"{self.last_line}); refusing to write it twice")
        self.last_line = item.line
        if item.problem is not None:
            if not self.skip:
                raise InputFileError(self.input_path, item.line, item.problem)
            self.rejects.write(json.dumps({"line": item.line, "reason": item.problem, "text": item.text},
                                          ensure_ascii=False))
            self.rejected += 1
            return
        self.scored += 1
        self.accepted += bool(item.accepted)
        if not self.best_of_n:
            self.output.write(item.record)
            self.written += 1
            return
        if self.group and self.group[0][0] != item.prompt:
            self.close_group()
        self.group.append((item.prompt, item.score, item.record))

    def close_group(self) -> None:
        if not self.group:
            return
        values = np.array([score for _, score, _ in self.group], dtype=np.float32)  # [n]
        chosen = argmax_or_none(values)
        for i, (_, _, record) in enumerate(self.group):
            self.output.write(_with_best_of_n(record, i == chosen, self.groups, len(self.group)))
        self.written += len(self.group)
        self.groups += 1
        self.group = []

    def state(self) -> dict:
        """Everything needed to continue after the last completed chunk (for the resume journal)."""
        return {"written": self.written, "scored": self.scored, "rejected": self.rejected,
                "accepted": self.accepted, "groups": self.groups, "last_line": self.last_line,
                "group": [list(g) for g in self.group]}

    def restore(self, state: dict) -> None:
        for key in ("written", "scored", "rejected", "accepted", "groups", "last_line"):
            setattr(self, key, int(state[key]))
        self.group = [tuple(g) for g in state["group"]]

    def summary(self, seconds: float, response_filter, rejects_path: Path | None,
                resumed_at: int | None = None) -> BatchSummary:
        return BatchSummary(records=self.written, rejected=self.rejected,
                            groups=self.groups if self.best_of_n else None,
                            accepted=self.accepted if response_filter is not None else None, seconds=seconds,
                            output=self.output.path, rejects=rejects_path, resumed_at=resumed_at)


def load_filter(response_filter, scorer):
    """A filter given as a path (loaded for ``scorer``) or as a :class:`ResponseFilter`, or ``None``."""
    if response_filter is None or hasattr(response_filter, "decide_scores"):
        return response_filter
    from ensrm.runtime.filter import ResponseFilter

    return ResponseFilter.load(response_filter, scorer)


# -- the local job, resumable ------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _journal_key(scorer, input_path: Path, options: dict) -> dict:
    """What a journal must match to be continued: the input's bytes, the bundle, the options."""
    from ensrm.spec import MANIFEST_NAME

    manifest = Path(scorer.bundle_dir) / MANIFEST_NAME
    return {"version": JOURNAL_VERSION,
            "input": {"path": str(input_path.resolve()), "size": input_path.stat().st_size,
                      "sha256": _sha256(input_path)},
            "bundle": {"manifest_sha256": _sha256(manifest), "runtime": scorer.description},
            "options": options}


class _Journal:
    """The resume journal: written (atomically, fsynced) after every completed chunk."""

    def __init__(self, path: Path, key: dict):
        self.path, self.key = path, key

    def load(self) -> dict | None:
        """The saved progress when a journal for the same input, bundle and options exists."""
        if not self.path.exists():
            return None
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read the resume journal {self.path} ({exc}); delete it to start over") from None
        differs = [name for name in ("version", "input", "bundle", "options") if saved.get(name) != self.key[name]]
        if differs:
            raise InputError(f"the resume journal {self.path} belongs to a run with a different "
                             f"{', '.join(differs)} (input bytes, bundle and options must all match); "
                             "run with the same arguments, or delete the journal to start over")
        return saved["done"]

    def save(self, done: dict) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with tmp.open("w", encoding="utf-8") as handle:
                json.dump({**self.key, "done": done}, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise OutputError(self.path, exc) from None

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def score_file(scorer, input_path: str | os.PathLike, output_path: str | os.PathLike, *,
               objective: str = "uwo", batch_size: int = 32, best_of_n: bool = False,
               response_filter=None, on_bad_row: str | None = None, skip_bad: bool | None = None,
               rejects_path: str | os.PathLike | None = None, chunk_size: int = 1024,
               progress: JobProgress | None = None, resume: bool = False) -> BatchSummary:
    """Score every record of a JSONL file into another JSONL file (see the module docstring).

    Records are read ``chunk_size`` non-blank lines at a time and scored ``8 * batch_size``
    (pairs per model call) at a time, so memory stays bounded whatever the file's size (plus
    one best-of-n group). ``response_filter`` is a saved filter's path or a
    :class:`~ensrm.runtime.filter.ResponseFilter`. ``on_bad_row`` is ``"fail"`` or ``"skip"``
    (``skip_bad=True`` is the older spelling of ``"skip"``). With ``resume`` a journal beside the
    output records every completed chunk; run again with the same arguments after an
    interruption and it continues there (the final file is identical to an uninterrupted run's).

    (The example needs a bundle: not run by the doctests.)

    >>> summary = score_file(scorer, "candidates.jsonl", "scored.jsonl", best_of_n=True)  # doctest: +SKIP
    >>> summary.records, summary.groups                                                  # doctest: +SKIP
    (4000, 500)
    """
    input_path, output_path = Path(input_path), Path(output_path)
    if not input_path.is_file():
        raise FileNotFoundError(f"no such records file: {input_path}")
    if chunk_size < 1 or batch_size < 1:
        raise ValueError(f"chunk_size and batch_size must be >= 1, got {chunk_size} and {batch_size}")
    policy = bad_row_policy(on_bad_row, skip_bad)
    rejects_path = check_job_paths(input_path, output_path, policy, rejects_path)
    objective = parse_objective(objective, scorer.num_heads)
    job = _LocalJob(scorer, input_path, output_path, rejects_path, objective=objective, batch_size=batch_size,
                    best_of_n=best_of_n, response_filter=load_filter(response_filter, scorer), policy=policy,
                    chunk_size=chunk_size, progress=progress)
    return job.run(resume)


@dataclass
class _LocalJob:
    """One :func:`score_file` run: its settings, and the loop over chunks."""

    scorer: object
    input_path: Path
    output_path: Path
    rejects_path: Path | None
    objective: str
    batch_size: int
    best_of_n: bool
    response_filter: object
    policy: str
    chunk_size: int
    progress: JobProgress | None

    def journal(self) -> tuple[_Journal, dict | None]:
        """The resume journal, and what it says was done (``None``: start from the beginning)."""
        options = {"objective": self.objective, "batch_size": self.batch_size, "best_of_n": self.best_of_n,
                   "on_bad_row": self.policy, "chunk_size": self.chunk_size, "output": str(self.output_path.resolve()),
                   "rejects": None if self.rejects_path is None else str(self.rejects_path.resolve()),
                   "filter": None if self.response_filter is None else self.response_filter.to_dict()}
        journal = _Journal(journal_path(self.output_path), _journal_key(self.scorer, self.input_path, options))
        done = journal.load()
        if done is not None and not partial_path(self.output_path).exists():
            done = None  # the partial output is gone (e.g. committed just before the journal was removed)
        return journal, done

    def run(self, resume: bool) -> BatchSummary:
        start = time.perf_counter()
        journal, done = self.journal() if resume else (None, None)
        keep = (lambda name: None) if done is None else (lambda name: done[name])
        output = AtomicFile(self.output_path, partial=resume, keep=keep("output_bytes"))
        rejects = None
        try:
            if self.rejects_path is not None:
                rejects = AtomicFile(self.rejects_path, partial=resume, keep=keep("rejects_bytes"))
            writer = JobWriter(self.input_path, output, rejects, on_bad_row=self.policy, best_of_n=self.best_of_n)
            if done is not None:
                writer.restore(done["writer"])
            self.score_chunks(writer, journal, start, *((done["offset"], done["line"]) if done else (0, 1)))
            writer.close_group()
            if rejects is not None:
                rejects.commit()  # before the output: a complete output implies complete rejects
            output.commit()
            if journal is not None:
                journal.discard()
        except BaseException as exc:
            # A resumable run keeps its partial files and journal for the next try, unless a write failed
            # (a full disk): then the partial files are not trustworthy and everything goes.
            if not resume or isinstance(exc, OutputError):
                for staged in (output, rejects, journal):
                    if staged is not None:
                        staged.discard()
            raise
        seconds = time.perf_counter() - start
        if self.progress is not None:
            self.progress(writer.written, writer.rejected, seconds)
        return writer.summary(seconds, self.response_filter, self.rejects_path,
                              resumed_at=None if done is None else done["line"])

    def score_chunks(self, writer: JobWriter, journal: _Journal | None, start: float, offset: int,
                     first_line: int) -> None:
        """Score the input from byte ``offset`` (line ``first_line``) on, journalling after every chunk."""
        for chunk, items in chunks(self.input_path, self.chunk_size, offset, first_line):
            def tick(scored: int, bad: int) -> None:
                self.progress(writer.scored + scored, writer.rejected + bad, time.perf_counter() - start)

            for item in score_lines(self.scorer, items, path=self.input_path, objective=self.objective,
                                    batch_size=self.batch_size, response_filter=self.response_filter,
                                    progress=tick if self.progress else None):
                writer.add(item)
            if journal is not None:
                rejects = writer.rejects
                journal.save({"offset": chunk.end, "line": chunk.next_line, "output_bytes": writer.output.sync(),
                              "rejects_bytes": rejects.sync() if rejects else 0, "writer": writer.state()})
