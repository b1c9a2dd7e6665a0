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
  encode) stop the run with :class:`~ensrm.errors.InputFileError` naming the line, or with
  ``skip_bad`` go to the rejects file as ``{"line": n, "reason": ..., "text": <the line>}``.
  Every input line ends up in exactly one of the two files.
- The output (and rejects) file is written to a temporary file in the same directory and
  renamed into place only when the whole input is done; on any error neither appears and an
  existing file of that name is left untouched.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ensrm.errors import InputError, InputFileError
from ensrm.jsonl import parse_record
from ensrm.runtime.best_of_n import argmax_or_none
from ensrm.runtime.scores import Scores, parse_objective

FIELDS = ("prompt", "response")
OUTPUT_FIELD = "ensrm"

#: ``progress(records_scored, records_rejected, seconds_elapsed)``, called after every few batches.
Progress = Callable[[int, int, float], None]


@dataclass(frozen=True)
class BatchSummary:
    """What a :func:`score_file` run did."""

    records: int           # scored and written to the output
    rejected: int          # written to the rejects file (skip_bad only)
    groups: int | None     # best-of-n groups, or None without best_of_n
    accepted: int | None   # records the filter accepted, or None without a filter
    seconds: float
    output: Path
    rejects: Path | None

    @property
    def records_per_second(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else float("inf")

    def describe(self) -> str:
        """One line: records, speed, output, and the best-of-n, filter and rejects counts that apply."""
        parts = [f"{self.records:,} records scored in {self.seconds:.1f} s "
                 f"({self.records_per_second:,.0f} records/s) -> {self.output}"]
        if self.groups is not None:
            parts.append(f"{self.groups:,} best-of-n groups")
        if self.accepted is not None:
            parts.append(f"{self.accepted:,} accepted by the filter")
        if self.rejects is not None:
            parts.append(f"{self.rejected:,} bad records -> {self.rejects}")
        return "; ".join(parts)


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


class _AtomicFile:
    """A text file written under a temporary name beside ``path``; ``commit`` renames it into place."""

    def __init__(self, path: Path):
        self.path = path
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        self.tmp = Path(tmp)
        self.handle = os.fdopen(fd, "w", encoding="utf-8")

    def write(self, record: dict) -> None:
        self.handle.write(json.dumps(record, ensure_ascii=False) + "\n")

    def commit(self) -> None:
        self.handle.close()
        os.chmod(self.tmp, 0o644)
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        if not self.handle.closed:
            self.handle.close()
        if self.tmp.exists():
            self.tmp.unlink()


def _lines(path: Path):
    """``(line_number, text or None, problem or None)`` for every non-blank line, read as bytes
    so that one undecodable line is reported (or skipped) rather than ending the read."""
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield lineno, raw.decode("utf-8", errors="replace").rstrip("\r\n"), f"not UTF-8 ({exc.reason})"
                continue
            if text.strip():
                yield lineno, text, None


class _Run:
    def __init__(self, scorer, input_path, objective, batch_size, best_of_n, response_filter, skip_bad,
                 output: _AtomicFile, rejects: _AtomicFile | None, progress: Progress | None):
        self.scorer = scorer
        self.input_path = input_path
        self.objective = objective
        self.batch_size = batch_size
        self.best_of_n = best_of_n
        self.filter = response_filter
        self.skip_bad = skip_bad
        self.output = output
        self.rejects = rejects
        self.progress = progress
        self.start = time.perf_counter()
        self.scored = 0
        self.written = 0
        self.rejected = 0
        self.accepted = 0
        self.groups = 0
        self.group: list[dict] = []  # scored records of the current best-of-n group

    def bad(self, lineno: int, text: str, problem: str) -> None:
        if not self.skip_bad:
            raise InputFileError(self.input_path, lineno, problem)
        self.rejects.write({"line": lineno, "reason": problem, "text": text.rstrip("\r\n")})
        self.rejected += 1

    def _score(self, chunk: list[tuple[int, str, dict]]) -> tuple[list[tuple[int, str, dict]], Scores]:
        scores, kept, failed = score_isolating(self.scorer, [r["prompt"] for _, _, r in chunk],
                                               [r["response"] for _, _, r in chunk], self.batch_size)
        for i, message in failed.items():
            self.bad(chunk[i][0], chunk[i][1], message)
        return [chunk[i] for i in kept], scores

    def flush(self, chunk: list[tuple[int, str, dict]]) -> None:
        # Score a few batches at a time so that progress shows even on a slow machine; pairs
        # are grouped by length within each slice.
        step = 8 * self.batch_size
        for start in range(0, len(chunk), step):
            self._flush(chunk[start:start + step])
            if self.progress is not None:
                self.progress(self.scored, self.rejected, time.perf_counter() - self.start)

    def _flush(self, chunk: list[tuple[int, str, dict]]) -> None:
        chunk, scores = self._score(chunk)
        self.scored += len(chunk)
        values = scores.objective(self.objective)  # [n]
        decisions = self.filter.decide_scores(scores) if self.filter is not None else None
        for i, (_, _, record) in enumerate(chunk):
            added = scores.row(i)
            added["objective"] = self.objective
            added["score"] = float(values[i])
            if decisions is not None:
                added["filter"] = decisions[i].to_dict()
                self.accepted += decisions[i].accept
            record[OUTPUT_FIELD] = added
            if self.best_of_n:
                if self.group and self.group[0]["prompt"] != record["prompt"]:
                    self.close_group()
                self.group.append(record)
            else:
                self.output.write(record)
                self.written += 1

    def close_group(self) -> None:
        if not self.group:
            return
        values = np.array([r[OUTPUT_FIELD]["score"] for r in self.group], dtype=np.float32)  # [n]
        chosen = argmax_or_none(values)
        for i, record in enumerate(self.group):
            record[OUTPUT_FIELD]["best_of_n"] = {"chosen": i == chosen, "group": self.groups,
                                                 "group_size": len(self.group)}
            self.output.write(record)
        self.written += len(self.group)
        self.groups += 1
        self.group = []


def score_isolating(scorer, prompts: list[str], responses: list[str],
                    batch_size: int) -> tuple[Scores, list[int], dict[int, str]]:
    """``score_texts`` on all pairs; if a pair cannot be encoded, score them one by one so that
    only the bad pairs fail. Returns the scores of the pairs that scored, their indices, and the
    error message of each pair that did not.

    >>> scores, kept, failed = score_isolating(scorer, ["Hi"], ["Hello!"], 32)   # doctest: +SKIP
    >>> kept, failed
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


def score_file(scorer, input_path: str | os.PathLike, output_path: str | os.PathLike, *,
               objective: str = "uwo", batch_size: int = 32, best_of_n: bool = False,
               response_filter=None, skip_bad: bool = False, rejects_path: str | os.PathLike | None = None,
               chunk_size: int = 1024, progress: Progress | None = None) -> BatchSummary:
    """Score every record of a JSONL file into another JSONL file (see the module docstring).

    Records are read ``chunk_size`` at a time and scored ``8 * batch_size`` at a time, so memory
    stays bounded whatever the file's size (plus one best-of-n group).

    >>> summary = score_file(scorer, "candidates.jsonl", "scored.jsonl", best_of_n=True)  # doctest: +SKIP
    >>> summary.records, summary.groups                                                  # doctest: +SKIP
    (4000, 500)
    """
    input_path, output_path = Path(input_path), Path(output_path)
    if not input_path.is_file():
        raise FileNotFoundError(f"no such records file: {input_path}")
    if output_path.exists() and output_path.resolve() == input_path.resolve():
        raise ValueError(f"the output {output_path} is the input file; write to another path")
    if chunk_size < 1 or batch_size < 1:
        raise ValueError(f"chunk_size and batch_size must be >= 1, got {chunk_size} and {batch_size}")
    objective = parse_objective(objective, scorer.num_heads)
    check_rejects_option(skip_bad, rejects_path)
    rejects_path = (Path(rejects_path) if rejects_path is not None else default_rejects_path(output_path)) \
        if skip_bad else None
    if rejects_path is not None and rejects_path.resolve() in (output_path.resolve(), input_path.resolve()):
        raise ValueError(f"the rejects file {rejects_path} must differ from the input and output files")
    output_path.parent.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    output = _AtomicFile(output_path)
    rejects = None
    try:
        if rejects_path is not None:
            rejects_path.parent.mkdir(parents=True, exist_ok=True)
            rejects = _AtomicFile(rejects_path)
        run = _Run(scorer, input_path, objective, batch_size, best_of_n, response_filter, skip_bad, output, rejects,
                   progress)
        chunk: list[tuple[int, str, dict]] = []
        for lineno, text, problem in _lines(input_path):
            if problem is None:
                try:
                    record = parse_record(text, FIELDS, input_path, lineno)
                except InputFileError as exc:
                    problem = exc.problem
                else:
                    if OUTPUT_FIELD in record:
                        problem = f"the input already has a field {OUTPUT_FIELD!r}, which the output adds"
            if problem is not None:
                run.bad(lineno, text, problem)
                continue
            chunk.append((lineno, text, record))
            if len(chunk) >= chunk_size:
                run.flush(chunk)
                chunk = []
        run.flush(chunk)
        run.close_group()
        if rejects is not None:
            rejects.commit()  # before the output: a complete output implies complete rejects
        output.commit()
    finally:
        output.discard()
        if rejects is not None:
            rejects.discard()
    seconds = time.perf_counter() - start
    if progress is not None:
        progress(run.written, run.rejected, seconds)
    return BatchSummary(records=run.written, rejected=run.rejected, groups=run.groups if best_of_n else None,
                        accepted=run.accepted if response_filter is not None else None, seconds=seconds,
                        output=output_path, rejects=rejects_path)
