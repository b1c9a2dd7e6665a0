"""Distributed batch scoring on Ray Data: one :class:`~ensrm.Scorer` per actor, fed by ``map_batches``.

Needs ``pip install 'ensrm[ray]'``. The same code runs on a laptop (``ray.init()``) and on a
cluster (``ray.init(address="auto")`` or ``"ray://head:10001"``): Ray Data schedules the actors,
ensrm only scores the batches it is handed.

(The example needs a bundle and Ray: not run by the doctests.)

>>> import ray
>>> from ensrm.integrations.ray_data import score_dataset
>>> ds = ray.data.read_parquet("candidates/")                                   # doctest: +SKIP
>>> scored = score_dataset(ds, "/shared/bundles/rm", concurrency=4, objective="wco")  # doctest: +SKIP
>>> scored.write_parquet("scored/")                                             # doctest: +SKIP

Columns added to every row (the input's columns are all kept, unchanged):

- ``ens_heads`` (list of K float32), ``ens_mean``, ``ens_std``, ``ens_min``, ``ens_uwo`` and
  ``ens_score`` (the ``objective``'s value), float32; null for a row marked bad.
- ``ens_error`` (string, null when the row scored) with ``on_bad_row="mark"``.
- ``ens_filter`` (a struct: the :class:`~ensrm.runtime.filter.Decision` fields) with a saved
  :class:`~ensrm.runtime.filter.ResponseFilter`; see :func:`accepted_rows`.
- ``ens_chosen``, ``ens_group_size``, ``ens_group`` after :func:`mark_best_of_n`.

**Bad rows** (a text column missing or null, not a string, bytes that are not UTF-8, a
string with lone surrogates, a pair the tokenizer cannot encode): by default the job fails
with :class:`BadRowError` naming the row (by ``key_column`` when given, else by its fields)
and the problem (the worker's own exception, typed: :func:`ensrm_error`); with
``on_bad_row="mark"`` the row comes back with ``ens_error`` set and null scores, so every
input row is in the output exactly once. Texts are checked by the runtime's one validator
(:func:`ensrm.runtime.texts.as_text`).

**JSONL files** (:func:`score_files`, ``ensrm score --ray``) are the job of ``ensrm score``,
run by the same code: read as lines of text, parsed and validated by ensrm, written in line
order with the same bad-row policy (``"fail"``/``"skip"`` + rejects file) and best-of-n groups,
into a byte-identical file.

**Faults**: a killed actor is restarted and its batches retried (``max_restarts``,
``max_task_retries``, default 3 each, set explicitly rather than left to Ray's unbounded
defaults); a pool that could never start, or would starve the dataset's reads, is refused.

**Row order**: scoring is one row out per row in, with every column, so a score never
loses its row. Ray Data may hand blocks on out of order unless
``ray.data.DataContext.get_current().execution_options.preserve_order = True``, which
keeps the input's order (``ensrm score --ray`` sets it; tested). :func:`mark_best_of_n` regroups
rows by prompt, so its output comes in groups, not in input order.

**The bundle on the workers**: ``bundle`` is a path that every worker opens itself —
either on storage every node mounts at the same path, or relative to the job's
``runtime_env={"working_dir": ...}``, which Ray ships to every worker (both tested).
Each actor loads the bundle once and sets onnxruntime's intra-op threads to the CPUs Ray
assigned it (``num_cpus``), so actors never oversubscribe a node.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import time
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ensrm._optional import require
from ensrm.errors import BundleError, EnsrmError, InputError, JobError
from ensrm.progress import JobProgress
from ensrm.runtime.batch import (
    OUTPUT_FIELD,
    AtomicFile,
    Chunk,
    JobWriter,
    ScoredLine,
    bad_row_policy,
    check_job_paths,
    chunks,
    count_parts,
    read_chunk,
    score_isolating,
    score_lines,
)
from ensrm.runtime.best_of_n import choose
from ensrm.runtime.config import ScorerConfig
from ensrm.runtime.scores import Scores, parse_objective
from ensrm.runtime.texts import as_text

AGGREGATES = ("mean", "std", "min", "uwo")
SCORE_COLUMNS = ("ens_heads", "ens_mean", "ens_std", "ens_min", "ens_uwo", "ens_score")
ERROR_COLUMN = "ens_error"
FILTER_COLUMN = "ens_filter"
BEST_OF_N_COLUMNS = ("ens_chosen", "ens_group_size", "ens_group")
BAD_ROW_MODES = ("fail", "mark")
#: Fault tolerance of the scoring actors, unless the caller says otherwise: a killed actor is
#: restarted (up to ``max_restarts`` times) and its unfinished batches are retried on it (up to
#: ``max_task_retries`` times each); Ray Data's own defaults are unbounded, which turns a
#: deterministic crash into a job that never ends.
MAX_RESTARTS = 3
MAX_TASK_RETRIES = 3
FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class BadRowError(InputError):
    """A row of the dataset cannot be scored; the message names the row and what is wrong with it."""


def _pa():
    return require("pyarrow", "ray")


def _ray():
    return require("ray", "ray")


def _materialized():
    return require("ray.data.dataset", "ray").MaterializedDataset


def _as_text(value, name: str) -> tuple[str | None, str | None]:
    """``(text, None)`` for a usable text value, ``(None, problem)`` otherwise (the runtime's :func:`as_text`)."""
    try:
        return as_text(value, name, f"field {name!r}", decode=True), None
    except InputError as exc:
        return None, str(exc)


def _assigned_threads() -> int | None:
    """Intra-op threads for this process: the CPUs Ray assigned this actor (at least 1);
    ``None`` outside a Ray actor, where onnxruntime's default (one per core) applies."""
    ray = _ray()
    if not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
        return None
    return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))


def _filter_type():
    pa = _pa()
    return pa.struct([("accept", pa.bool_()), ("reason", pa.string()), ("score", pa.float64()),
                      ("std", pa.float64()), ("objective", pa.string()), ("min_score", pa.float64()),
                      ("max_std", pa.float64())])


class ScoreBatches:
    """A callable class for ``Dataset.map_batches``: loads the bundle once per actor, scores each batch.

    Takes and returns ``pyarrow.Table`` batches (``batch_format="pyarrow"``; a pandas
    DataFrame also works, may hold texts of any Python type, and comes back as one).
    ``batch_size`` is pairs per model call: within each Ray batch pairs are grouped by
    token length before batching
    (:meth:`Scorer.score_texts`), so larger Ray batches pad less. ``threads=None`` takes the
    CPUs Ray assigned the actor. ``response_filter`` is the path of a saved
    :class:`~ensrm.runtime.filter.ResponseFilter`; ``key_column`` names rows in errors.

    (The example needs a bundle and Ray: not run by the doctests.)

    >>> scored = ds.map_batches(ScoreBatches, fn_constructor_kwargs={"bundle": "/shared/rm"},
    ...                         batch_format="pyarrow", batch_size=1024, num_cpus=2,
    ...                         compute=ray.data.ActorPoolStrategy(size=4))      # doctest: +SKIP
    """

    def __init__(self, bundle: str | os.PathLike | ScorerConfig, precision: str | None = None, objective: str = "uwo",
                 threads: int | None = None, text_columns: Sequence[str] = ("prompt", "response"),
                 batch_size: int | None = None, on_bad_row: str = "fail", key_column: str | None = None,
                 response_filter: str | os.PathLike | None = None, providers=None, verify: str | None = None):
        from ensrm.runtime.filter import ResponseFilter
        from ensrm.runtime.scorer import Scorer

        config = ScorerConfig.of(bundle, precision=precision, threads=threads, batch_size=batch_size,
                                 providers=providers, verify=verify)
        _check_options(text_columns, on_bad_row, config.batch_size)
        _check_bundle_on_worker(config)
        self.threads = _assigned_threads() if config.threads is None else config.threads
        # spinning=False: several actors share a node, and idle spinning threads would steal their CPUs
        self.scorer = Scorer.from_config(config.replace(threads=self.threads, spinning=False))
        self.objective = parse_objective(objective, self.scorer.num_heads)
        self.filter = ResponseFilter.load(response_filter, self.scorer) if response_filter is not None else None
        self.text_columns = tuple(text_columns)
        self.batch_size = config.batch_size
        self.mark = on_bad_row == "mark"
        self.key_column = key_column
        self.added = SCORE_COLUMNS + ((ERROR_COLUMN,) if self.mark else ()) + \
            ((FILTER_COLUMN,) if self.filter is not None else ())

    def __call__(self, batch):
        pa = _pa()
        if isinstance(batch, pa.Table):
            return self.score_table(batch)
        # pandas: read the texts from the frame itself, which may hold objects Arrow cannot
        out = batch.copy()
        for name, column in self._added(list(batch.columns), len(batch), [
                batch[c].tolist() if c in batch.columns else None for c in self.text_columns],
                lambda i: batch.iloc[i].to_dict()).items():
            out[name] = column.to_pandas().values
        return out

    def score_table(self, table):
        """Score a ``pyarrow.Table``; the same table with the score columns appended."""
        columns = [table.column(c).to_pylist() if c in table.column_names else None for c in self.text_columns]
        for name, column in self._added(table.column_names, table.num_rows, columns,
                                        lambda i: table.slice(i, 1).to_pylist()[0]).items():
            table = table.append_column(name, column)
        return table

    def _added(self, names: list[str], n: int, columns: list, row) -> dict:
        """The columns to add (name -> Arrow array) for a batch of ``n`` rows whose text columns are ``columns``
        (lists, or None when absent); ``row(i)`` gives row i as a dict, to name it in errors."""
        pa = _pa()
        clash = [c for c in self.added if c in names]
        if clash:
            raise InputError(f"the dataset already has the column(s) {', '.join(clash)}, which scoring adds; "
                             "drop or rename them first")
        errors: list[str | None] = [None] * n
        good, texts = [], ([], [])
        for i in range(n):
            problems, pair = [], []
            for name, values in zip(self.text_columns, columns):
                text, problem = (None, f"field {name!r} is missing") if values is None else _as_text(values[i], name)
                if problem is not None:
                    problems.append(problem)
                pair.append(text)
            if problems:
                errors[i] = "; ".join(problems)
            else:
                good.append(i)
                texts[0].append(pair[0])
                texts[1].append(pair[1])
        scores, good = self._score(texts[0], texts[1], good, errors)
        bad = [i for i, e in enumerate(errors) if e is not None]
        if bad and not self.mark:
            raise BadRowError(f"{self._name(row(bad[0]), bad[0], n)}: {errors[bad[0]]}"
                              + (f" (and {len(bad) - 1} more bad rows in this batch)" if len(bad) > 1 else "")
                              + "; fix the data, or pass on_bad_row='mark' to score the rest and mark these")
        missing = np.ones(n, dtype=bool)  # [n]
        missing[good] = False
        k = self.scorer.num_heads
        heads = np.zeros((n, k), dtype=np.float32)  # [n, K]
        heads[good] = scores.heads
        offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
        added = {"ens_heads": pa.ListArray.from_arrays(offsets, pa.array(heads.reshape(-1)), mask=pa.array(missing))}
        values = [getattr(scores, name) for name in AGGREGATES] + [scores.objective(self.objective)]
        for name, column in zip(SCORE_COLUMNS[1:], values):
            full = np.zeros(n, dtype=np.float32)  # [n]
            full[good] = column
            added[name] = pa.array(full, mask=missing)
        if self.mark:
            added[ERROR_COLUMN] = pa.array(errors, type=pa.string())
        if self.filter is not None:
            decisions: list[dict | None] = [None] * n
            for i, decision in zip(good, self.filter.decide_scores(scores)):
                decisions[i] = decision.to_dict()
            added[FILTER_COLUMN] = pa.array(decisions, type=_filter_type())
        return added

    def _score(self, prompts: list[str], responses: list[str], good: list[int], errors: list) -> tuple[Scores, list]:
        scores, kept, failed = score_isolating(self.scorer, prompts, responses, self.batch_size)
        for j, message in failed.items():
            errors[good[j]] = message
        return scores, [good[j] for j in kept]

    def _name(self, row: dict, i: int, n: int) -> str:
        """How an error names a row: its key, or else a short rendering of its fields."""
        if self.key_column is not None and self.key_column in row:
            return f"row {self.key_column}={row[self.key_column]!r}"
        shown = ", ".join(f"{name}={_short(value)}" for name, value in list(row.items())[:6])
        return f"row {i} of a batch of {n} ({shown})"


def _check_bundle_on_worker(config: ScorerConfig) -> None:
    if not config.bundle_dir.is_dir():
        raise BundleError(f"bundle {config.bundle} is not a directory on this worker (host "
                          f"{socket.gethostname()}, cwd {os.getcwd()}); put it on storage every node mounts at "
                          "the same path, or ship it with ray.init(runtime_env={'working_dir': ...}) and give "
                          "its relative path")


def _short(value, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _check_options(text_columns, on_bad_row: str, batch_size: int) -> None:
    if isinstance(text_columns, str) or len(text_columns) != 2:
        raise ValueError(f"text_columns must name two columns (prompt, response), got {text_columns!r}")
    if on_bad_row not in BAD_ROW_MODES:
        raise ValueError(f"on_bad_row must be one of {', '.join(BAD_ROW_MODES)}, got {on_bad_row!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _check_bundle_here(config: ScorerConfig, objective: str) -> None:
    """Fail on the driver, before any actor starts, when the bundle is visible here and the options are wrong.

    A bundle that is only on the workers (a working_dir-relative path) is checked by each actor instead.
    """
    if not config.bundle_dir.is_dir():
        return
    from ensrm.bundle import load_spec

    spec = load_spec(config.bundle, verify="none")
    parse_objective(objective, spec.num_heads)
    if config.precision != "auto" and config.precision not in spec.usable_precisions:
        raise BundleError(f"bundle {config.bundle} has no accepted {config.precision} variant")


def score_dataset(ds, bundle: str | os.PathLike | ScorerConfig, *, concurrency: int = 1, num_cpus: float = 1,
                  rows_per_batch: int = 1024, batch_size: int | None = None, precision: str | None = None,
                  objective: str = "uwo", threads: int | None = None,
                  text_columns: Sequence[str] = ("prompt", "response"), on_bad_row: str = "fail",
                  key_column: str | None = None, response_filter: str | os.PathLike | None = None,
                  best_of_n: bool = False, order_column: str | None = None, providers=None,
                  verify: str | None = None, num_gpus: float | None = None, max_restarts: int = MAX_RESTARTS,
                  max_task_retries: int = MAX_TASK_RETRIES, model_batch_size: int | None = None):
    """Score every row of a Ray ``Dataset`` with ``concurrency`` actors of ``num_cpus`` CPUs each.

    ``bundle`` is a bundle path or a whole :class:`~ensrm.runtime.config.ScorerConfig` (the
    actors get that object); ``precision``, ``threads``, ``batch_size`` (pairs per model call,
    as everywhere in ensrm), ``providers`` and ``verify`` override its fields when given.
    ``rows_per_batch`` is rows per Ray batch (per actor call; ``model_batch_size`` is the old
    name of ``batch_size``). A killed actor is restarted up to ``max_restarts`` times and its
    unfinished batches retried up to ``max_task_retries`` times, so no row is lost or doubled;
    past that the job fails. A pool that needs more CPUs than the cluster has, or every CPU
    while the dataset still has to be read (which would wait forever), is refused at once. With
    ``best_of_n`` the rows are then grouped by the prompt column and marked
    (:func:`mark_best_of_n`). Lazy, like every Ray Data transform: nothing runs until the result
    is consumed or written. See the module docstring for the columns added.

    (The example needs a bundle and Ray: not run by the doctests.)

    >>> ray.init()                                                                # doctest: +SKIP
    >>> ds = ray.data.from_items([{"prompt": "Name a prime.", "response": "7"}])  # doctest: +SKIP
    >>> score_dataset(ds, "bundles/default").take(1)[0]["ens_score"]               # doctest: +SKIP
    0.61
    """
    ray = _ray()
    if model_batch_size is not None:  # the old spelling: batch_size then meant rows per Ray batch
        warnings.warn("score_dataset(model_batch_size=...) is now batch_size= (pairs per model call); "
                      "rows per Ray batch is rows_per_batch=", DeprecationWarning, stacklevel=2)
        rows_per_batch = batch_size if batch_size is not None else rows_per_batch
        batch_size = model_batch_size
    config = ScorerConfig.of(bundle, precision=precision, threads=threads, batch_size=batch_size,
                             providers=providers, verify=verify)
    _check_options(text_columns, on_bad_row, config.batch_size)
    if rows_per_batch < 1:
        raise ValueError(f"rows_per_batch must be >= 1, got {rows_per_batch}")
    _check_capacity(concurrency, num_cpus, reads_pending=not isinstance(ds, _materialized()))
    _check_bundle_here(config, objective)
    kwargs = {"bundle": config, "objective": objective, "text_columns": tuple(text_columns),
              "on_bad_row": on_bad_row, "key_column": key_column,
              "response_filter": None if response_filter is None else str(response_filter)}
    with _remote_args_allowed():
        scored = ds.map_batches(ScoreBatches, fn_constructor_kwargs=kwargs, batch_format="pyarrow",
                                batch_size=rows_per_batch, compute=ray.data.ActorPoolStrategy(size=concurrency),
                                num_cpus=num_cpus, num_gpus=num_gpus, udf_modifying_row_count=False,
                                **_fault_tolerance(max_restarts, max_task_retries))
    # a worker's BadRowError reaches the caller as itself (typed, with its fields), not wrapped in text
    scored.context.raise_original_map_exception = True
    if best_of_n:
        scored = mark_best_of_n(scored, objective=objective, group_column=text_columns[0], order_column=order_column)
    return scored


def _fault_tolerance(max_restarts: int, max_task_retries: int) -> dict:
    """Ray remote options of the scoring actors: restart a dead actor and retry its batches, a bounded number
    of times. Only system failures (a killed worker, a lost node) are retried: an error ensrm raises on
    purpose (a bad row, a bundle that does not load) would fail the same way again."""
    for name, value in (("max_restarts", max_restarts), ("max_task_retries", max_task_retries)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"`{name}` must be an integer >= 0, got {value!r}")
    return {"max_restarts": max_restarts, "max_task_retries": max_task_retries}


@contextlib.contextmanager
def _remote_args_allowed():
    """Ray 2.60 names no parameter for an actor's ``max_restarts``/``max_task_retries`` and warns
    that the generic remote arguments that carry them will go in 2.64; until it names one they are
    the only way to set the retries explicitly."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        yield


def _check_capacity(concurrency: int, num_cpus: float, reads_pending: bool) -> None:
    """Refuse an actor pool that cannot make progress on this cluster, instead of waiting forever.

    A fixed pool of ``concurrency`` actors that needs more CPUs than the cluster has never starts;
    one that takes every CPU leaves none for Ray Data's read tasks, so a dataset that is still to be
    read (``read_json``, ``read_parquet``, ...) never reaches the actors.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    ray = _ray()
    if not ray.is_initialized() or not num_cpus:
        return
    total = float(ray.cluster_resources().get("CPU", 0))
    need = concurrency * num_cpus
    if need > total:
        raise ValueError(f"{concurrency} scoring actors of {num_cpus:g} CPU need {need:g} CPUs but the Ray cluster "
                         f"has {total:g}; lower `concurrency` (or `num_cpus`), or add nodes before starting the job")
    if reads_pending and need > total - 1:
        raise ValueError(f"{concurrency} scoring actors of {num_cpus:g} CPU would hold all {total:g} CPUs of the Ray "
                         "cluster, leaving none for Ray Data to read the dataset with, so the job would wait "
                         f"forever; use `concurrency={max(1, int((total - 1) // num_cpus))}` or fewer, or read the "
                         "data first (ds = ds.materialize())")


def group_id(key) -> int:
    """A stable number for a best-of-n group (48 bits of a hash of its key: the same on every
    run and machine, and exact in JSON).

    >>> group_id("Name a prime.") == group_id("Name a prime.")
    True
    """
    digest = hashlib.blake2b(repr(key).encode("utf-8", "surrogatepass"), digest_size=6).digest()
    return int.from_bytes(digest, "big")


def _mark_group(group, objective: str, order_column: str | None, group_column: str):
    pa = _pa()
    if order_column is not None:
        group = group.sort_by([(order_column, "ascending")])  # Arrow's sort is stable
    n = group.num_rows
    valid = np.asarray(group.column("ens_mean").is_valid(), dtype=bool)  # [n]; bad rows have null scores
    rows = np.flatnonzero(valid)
    chosen = np.zeros(n, dtype=bool)  # [n]
    if len(rows):
        heads = np.asarray(group.column("ens_heads").take(pa.array(rows)).to_pylist(), dtype=np.float32)  # [m, K]
        aggregates = {name: np.asarray(group.column(f"ens_{name}").take(pa.array(rows)).to_numpy(), dtype=np.float32)
                      for name in AGGREGATES}
        try:
            chosen[rows[choose(Scores(heads=heads, **aggregates), objective).index]] = True
        except InputError:
            pass  # every candidate scores NaN: none is chosen, as `ensrm score --best-of-n` does
    key = group.column(group_column)[0].as_py() if n else None
    for name, column in zip(BEST_OF_N_COLUMNS, (pa.array(chosen), pa.array(np.full(n, n, dtype=np.int64)),
                                                pa.array(np.full(n, group_id(key), dtype=np.int64)))):
        group = group.append_column(name, column)
    return group


def mark_best_of_n(scored, objective: str = "uwo", group_column: str = "prompt", order_column: str | None = None):
    """Group a scored dataset by ``group_column`` and mark each group's best row.

    Adds ``ens_chosen`` (bool: exactly one row per group, none when every candidate is
    bad or NaN), ``ens_group_size`` and ``ens_group`` (:func:`group_id`). The choice is
    :func:`ensrm.runtime.best_of_n.choose` over the group's rows, so the tie rule is
    ``ensrm.best_of_n``'s: the lowest index among exact ties — in ``order_column`` order
    when given (e.g. the sample index of each candidate); without it, in the order Ray
    delivers the group, which is not fixed, so exact ties may then go either way.

    (The example needs a bundle and Ray: not run by the doctests.)

    >>> marked = mark_best_of_n(score_dataset(ds, bundle), objective="wco", order_column="sample")  # doctest: +SKIP
    >>> best = marked.filter(lambda row: row["ens_chosen"])                                         # doctest: +SKIP
    """
    return scored.groupby(group_column).map_groups(
        _mark_group, batch_format="pyarrow",
        fn_kwargs={"objective": objective, "order_column": order_column, "group_column": group_column})


def _keep_accepted(table):
    pc = require("pyarrow.compute", "ray")
    return table.filter(pc.fill_null(pc.struct_field(table.column(FILTER_COLUMN), "accept"), False))


def accepted_rows(scored):
    """The rows a :class:`~ensrm.runtime.filter.ResponseFilter` accepted (``score_dataset(..., response_filter=PATH)``);
    rows marked bad are not accepted.

    (The example needs a bundle and Ray: not run by the doctests.)

    >>> kept = accepted_rows(score_dataset(ds, bundle, response_filter="bundles/rm-filter.json"))  # doctest: +SKIP
    """
    return scored.map_batches(_keep_accepted, batch_format="pyarrow")


# -- ensrm score --ray ---------------------------------------------------------------------


def _array(column):
    return column.combine_chunks() if isinstance(column, _pa().ChunkedArray) else column


def _nest(table, objective: str):
    """``ens_*`` columns -> the one ``ensrm`` struct field of ``ensrm score`` records."""
    pa = _pa()
    if OUTPUT_FIELD in table.column_names:
        raise InputError(f"the input already has a field {OUTPUT_FIELD!r}, which the output adds")
    fields = {"heads": table.column("ens_heads"), **{name: table.column(f"ens_{name}") for name in AGGREGATES},
              "objective": pa.array([objective] * table.num_rows, type=pa.string()),
              "score": table.column("ens_score")}
    if "ens_chosen" in table.column_names:
        fields["best_of_n"] = pa.StructArray.from_arrays(
            [_array(table.column(c)) for c in ("ens_chosen", "ens_group", "ens_group_size")],
            names=["chosen", "group", "group_size"])
    for column, name in ((FILTER_COLUMN, "filter"), (ERROR_COLUMN, "error")):
        if column in table.column_names:
            fields[name] = table.column(column)
    nested = pa.StructArray.from_arrays([_array(c) for c in fields.values()], names=list(fields))
    drop = [c for c in table.column_names if c.startswith("ens_")]
    return table.drop_columns(drop).append_column(OUTPUT_FIELD, nested)


def file_format(path: str | os.PathLike) -> str:
    """``json`` or ``parquet`` from a path's suffix (for a directory, from the files in it)."""
    path = Path(path)
    if path.is_dir():
        found = {FORMATS[p.suffix] for p in path.iterdir() if p.suffix in FORMATS}
        if len(found) != 1:
            raise ValueError(f"cannot tell the format of directory {path}: it holds "
                             + ("no .jsonl or .parquet files" if not found else "both JSONL and Parquet files"))
        return found.pop()
    if path.suffix not in FORMATS:
        raise ValueError(f"cannot tell the format of {path}: name it .jsonl or .parquet")
    return FORMATS[path.suffix]


@dataclass(frozen=True)
class RaySummary:
    """What a :func:`score_files` run wrote."""

    records: int
    files: int
    seconds: float
    output: Path
    format: str
    actors: int
    rejected: int = 0
    rejects: Path | None = None
    groups: int | None = None
    accepted: int | None = None

    @property
    def records_per_second(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else float("inf")

    def describe(self) -> str:
        """One line: records, actors, speed and the output, and the counts that apply."""
        where = f"{self.output}/ ({self.files} {self.format} files)" if self.output.is_dir() else str(self.output)
        parts = [f"{self.records:,} records scored on Ray ({self.actors} actors) in {self.seconds:.1f} s "
                 f"({self.records_per_second:,.0f} records/s) -> {where}"]
        return "; ".join(parts + count_parts(self.groups, self.accepted, self.rejected, self.rejects))


def _count_rows(directory: Path, fmt: str) -> tuple[int, int]:
    files = sorted(p for p in directory.iterdir() if p.is_file())
    if fmt == "parquet":
        pq = require("pyarrow.parquet", "ray")
        return sum(pq.read_metadata(p).num_rows for p in files), len(files)
    return sum(sum(1 for line in p.open("rb") if line.strip()) for p in files), len(files)


def ensrm_error(exc: BaseException) -> EnsrmError | None:
    """The ensrm error a Ray worker raised, found by type in Ray's wrappers (``RayTaskError``'s
    ``cause``, a ``UserCodeException``'s ``__cause__``), or ``None`` when the failure is not one.

    ensrm's errors keep their class and fields through pickling, so the driver gets the worker's
    :class:`BadRowError` itself (:func:`score_files` asks Ray Data to raise the UDF's own
    exception; a caller of :func:`score_dataset` can pass whatever it catches here).

    (The example needs a bundle and Ray: not run by the doctests.)

    >>> try:                                                            # doctest: +SKIP
    ...     score_dataset(ds, bundle).take_all()
    ... except Exception as exc:
    ...     print(ensrm_error(exc).field)
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, EnsrmError):
            return exc
        cause = getattr(exc, "cause", None)
        exc = cause if isinstance(cause, BaseException) else exc.__cause__
    return None


class ScoreChunks:
    """A callable class for ``map_batches`` over chunk descriptors: each Ray batch is one chunk of a
    JSONL file, read, parsed and scored by the same code as ``ensrm score`` (:func:`score_lines`).

    Returns one row per non-blank line: ``file``, ``line``, ``text``, ``record`` (the output JSON
    line, or null for a bad line), ``prompt``, ``score``, ``accepted`` and ``problem``. The texts
    travel as strings, so a column of mixed JSON types can never trip Arrow.
    """

    def __init__(self, config: ScorerConfig, files: Sequence[str], objective: str = "uwo", response_filter=None):
        from ensrm.runtime.filter import ResponseFilter
        from ensrm.runtime.scorer import Scorer

        _check_bundle_on_worker(config)
        threads = _assigned_threads() if config.threads is None else config.threads
        self.scorer = Scorer.from_config(config.replace(threads=threads, spinning=False))
        self.batch_size = config.batch_size
        self.files = list(files)
        self.objective = parse_objective(objective, self.scorer.num_heads)
        if isinstance(response_filter, dict):  # a ResponseFilter object the driver was given
            self.filter = ResponseFilter(self.scorer, objective=response_filter["objective"],
                                         min_score=response_filter["min_score"],
                                         max_std=response_filter["max_std"], fitted=response_filter.get("fitted"))
        else:
            self.filter = None if response_filter is None else ResponseFilter.load(response_filter, self.scorer)

    def __call__(self, batch):
        pa = _pa()
        out: list[tuple[int, ScoredLine]] = []
        for row in batch.to_pylist():
            path = self.files[row["file"]]
            chunk = Chunk(row["offset"], row["end"], row["first_line"], row["lines"], row["next_line"])
            items = read_chunk(path, chunk)
            if len(items) != chunk.lines:
                raise InputError(f"{path} changed while being scored: bytes {chunk.offset}-{chunk.end} now hold "
                                 f"{len(items)} records, not {chunk.lines}")
            out += [(row["file"], r) for r in score_lines(self.scorer, items, path=path, objective=self.objective,
                                                          batch_size=self.batch_size, response_filter=self.filter)]
        columns = {"file": pa.array([f for f, _ in out], type=pa.int32())}
        for name, kind in (("line", pa.int64()), ("text", pa.string()), ("record", pa.string()),
                           ("prompt", pa.string()), ("score", pa.float64()), ("accepted", pa.bool_()),
                           ("problem", pa.string())):
            columns[name] = pa.array([getattr(r, name) for _, r in out], type=kind)
        return pa.table(columns)


def _jsonl_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".json") and p.is_file())
    return [path]


def _score_jsonl(ray, config: ScorerConfig, files: list[Path], output: Path, *, concurrency: int, num_cpus: float,
                 objective: str, best_of_n: bool, response_filter, policy: str, rejects_path: Path | None,
                 chunk_size: int, progress: JobProgress | None, retries: dict) -> RaySummary:
    """JSONL on Ray with the semantics of ``ensrm score``: the driver cuts the files into chunks (byte ranges),
    the actors read and score them, and the driver writes the results in line order with :class:`JobWriter`."""
    start = time.perf_counter()
    plan = [{"file": i, "offset": c.offset, "end": c.end, "first_line": c.first_line, "lines": c.lines,
             "next_line": c.next_line} for i, path in enumerate(files) for c, _ in chunks(path, chunk_size)]
    expected = sum(c["lines"] for c in plan)
    if isinstance(response_filter, (str, os.PathLike)) or response_filter is None:
        shipped = None if response_filter is None else str(response_filter)
    else:
        shipped = response_filter.to_dict()
    output_file = AtomicFile(output)
    rejects = None
    try:
        rejects = AtomicFile(rejects_path) if rejects_path is not None else None
        writer = JobWriter(files[0], output_file, rejects, on_bad_row=policy, best_of_n=best_of_n)
        seen, current = 0, 0
        if plan:
            ds = ray.data.from_items(plan, override_num_blocks=len(plan))
            with _remote_args_allowed():
                scored = ds.map_batches(
                    ScoreChunks, batch_size=1, batch_format="pyarrow", num_cpus=num_cpus,
                    compute=ray.data.ActorPoolStrategy(size=concurrency), **retries,
                    fn_constructor_kwargs={"config": config, "files": [str(f) for f in files],
                                           "objective": objective, "response_filter": shipped})
            for batch in scored.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=1):
                for row in batch.to_pylist():
                    if row["file"] != current:  # the next file: its own line numbers and groups
                        writer.close_group()
                        current, writer.last_line, writer.input_path = row["file"], 0, str(files[row["file"]])
                    del row["file"]
                    writer.add(ScoredLine(**row))
                    seen += 1
                if progress is not None:
                    progress(writer.scored, writer.rejected, time.perf_counter() - start)
        if seen != expected:
            raise JobError(f"Ray returned {seen:,} of the {expected:,} input records; nothing was written")
        writer.close_group()
        if rejects is not None:
            rejects.commit()
        output_file.commit()
    finally:
        output_file.discard()
        if rejects is not None:
            rejects.discard()
    return RaySummary(records=writer.written, files=1, seconds=time.perf_counter() - start, output=output,
                      format="json", actors=concurrency, rejected=writer.rejected, rejects=rejects_path,
                      groups=writer.groups if best_of_n else None,
                      accepted=writer.accepted if response_filter is not None else None)


def score_files(bundle: str | os.PathLike | ScorerConfig, input_path: str | os.PathLike, output: str | os.PathLike,
                *, address: str | None = None, concurrency: int = 1, num_cpus: float = 1, objective: str = "uwo",
                batch_size: int | None = None, best_of_n: bool = False,
                response_filter=None, on_bad_row: str | None = None, skip_bad: bool | None = None,
                rejects_path: str | os.PathLike | None = None, chunk_size: int = 1024,
                precision: str | None = None, threads: int | None = None, providers=None,
                output_format: str | None = None, max_restarts: int = MAX_RESTARTS,
                max_task_retries: int = MAX_TASK_RETRIES, progress: JobProgress | None = None) -> RaySummary:
    """``ensrm score --ray``: score a JSONL file (or a directory of them) or Parquet on ``concurrency`` actors.

    **JSONL** gets the job of :func:`ensrm.runtime.batch.score_file`, same arguments, byte-identical
    OUTPUT (and rejects): lines read as text and validated by ensrm (a wrong type, a missing field,
    a line that is not JSON is a bad record, never a crash, and no field is added), input order,
    best-of-n groups = runs of one prompt numbered from 0. ``chunk_size`` non-blank lines make one
    Ray batch; ``batch_size`` is pairs per model call. A directory: files in name order.
    **Parquet** writes a new directory of ``output_format`` files through :func:`score_dataset`
    (``on_bad_row="skip"`` keeps a bad row with ``ensrm.error`` set).
    Nothing appears under ``output`` unless every row was scored, exactly once: a killed actor is
    restarted and its batch retried (``max_restarts``, ``max_task_retries``); past that,
    :class:`~ensrm.errors.JobError`. ``address`` goes to ``ray.init``; without it a Ray already
    initialised here is used, or a local one started.

    (The example needs a bundle and Ray: not run by the doctests.)

    >>> score_files("bundles/default", "candidates.jsonl", "scored.jsonl", concurrency=2)  # doctest: +SKIP
    RaySummary(records=1000, files=1, ...)
    """
    ray = _ray()
    input_path, output = Path(input_path), Path(output)
    policy = bad_row_policy(on_bad_row, skip_bad)
    in_format, rejects_path = _check_files(input_path, output, output_format, policy, rejects_path, chunk_size)
    objective = parse_objective(objective, 10**9)  # names only here; head:K is checked against the bundle
    config = ScorerConfig.of(bundle, precision=precision, threads=threads, batch_size=batch_size, providers=providers)
    retries = _fault_tolerance(max_restarts, max_task_retries)
    _check_bundle_here(config, objective)
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    saved = ctx.execution_options.preserve_order, ctx.raise_original_map_exception
    try:
        _check_capacity(concurrency, num_cpus, reads_pending=False)
        # rows come back in input order; a UDF's own exception (typed, e.g. BadRowError) reaches the driver
        ctx.execution_options.preserve_order, ctx.raise_original_map_exception = True, True
        if in_format == "json":
            return _score_jsonl(ray, config, _jsonl_files(input_path), output, concurrency=concurrency,
                                num_cpus=num_cpus, objective=objective, best_of_n=best_of_n,
                                response_filter=response_filter, policy=policy, rejects_path=rejects_path,
                                chunk_size=chunk_size, progress=progress, retries=retries)
        ctx.execution_options.preserve_order = not best_of_n
        return _score_parquet(ray, config, input_path, output, output_format or FORMATS.get(output.suffix, "parquet"),
                              concurrency=concurrency, num_cpus=num_cpus, objective=objective, best_of_n=best_of_n,
                              response_filter=response_filter, mark=policy == "skip", retries=retries)
    except ray.exceptions.RayError as exc:
        error = _job_error(exc, retries, output)
        raise error from error.__cause__  # Ray's wrapper adds nothing but a worker traceback
    finally:
        ctx.execution_options.preserve_order, ctx.raise_original_map_exception = saved
        if started:
            ray.shutdown()


def _job_error(exc: BaseException, retries: dict, output: Path) -> EnsrmError:
    """What a failed Ray job raises: the worker's own ensrm error, or a :class:`JobError` naming Ray's cause."""
    inner = ensrm_error(exc)
    if inner is not None:
        return inner
    cause = str(exc).strip().splitlines()
    error = JobError(f"the Ray job failed ({type(exc).__name__}: {cause[0] if cause else 'no message'}) after up "
                     f"to {retries['max_restarts']} actor restarts and {retries['max_task_retries']} retries per "
                     f"batch; nothing was written to {output}")
    error.__cause__ = exc
    return error


def _check_files(input_path: Path, output: Path, output_format: str | None, policy: str,
                 rejects_path: str | os.PathLike | None, chunk_size: int) -> tuple[str, Path | None]:
    """The input's format and the rejects path, refusing what :func:`score_files` cannot write."""
    if not input_path.exists():
        raise FileNotFoundError(f"no such input: {input_path}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    in_format = file_format(input_path)
    if in_format == "json":
        if (output_format or FORMATS.get(output.suffix, "json")) != "json":
            raise ValueError("JSONL input is scored into a JSONL file, as `ensrm score` does; name the output .jsonl")
        return in_format, check_job_paths(input_path, output, policy, rejects_path)
    if rejects_path is not None:
        raise ValueError("`rejects_path` goes with JSONL input; Parquet rows marked bad stay in the output "
                         "with ensrm.error set")
    if output.exists():
        raise ValueError(f"{output} exists; Ray writes a directory of files there, so give a new path")
    return in_format, None


def _score_parquet(ray, config: ScorerConfig, input_path: Path, output: Path, out_format: str, *, concurrency: int,
                   num_cpus: float, objective: str, best_of_n: bool, response_filter, mark: bool,
                   retries: dict) -> RaySummary:
    if out_format not in ("json", "parquet"):
        raise ValueError(f"output format must be json or parquet, got {out_format!r}")
    tmp = output.with_name(f".{output.name}.tmp-{uuid.uuid4().hex[:8]}")
    start = time.perf_counter()
    try:
        # The input is read before the actors start (into Ray's object store, which spills to disk), and
        # the reshaping and writes reserve no CPU, so a pool holding every CPU cannot starve them.
        io = {"num_cpus": 0}
        ds = ray.data.read_parquet(str(input_path)).materialize()
        scored = score_dataset(ds, config, concurrency=concurrency, num_cpus=num_cpus, objective=objective,
                               on_bad_row="mark" if mark else "fail", response_filter=response_filter,
                               best_of_n=best_of_n, **retries)
        records = scored.map_batches(_nest, fn_kwargs={"objective": objective}, batch_format="pyarrow", **io)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        if out_format == "json":
            records.write_json(str(tmp), ray_remote_args=io, force_ascii=False, double_precision=15)
        else:
            records.write_parquet(str(tmp), ray_remote_args=io)
        rows, files = _count_rows(tmp, out_format)
        os.replace(tmp, output)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return RaySummary(records=rows, files=files, seconds=time.perf_counter() - start, output=output,
                      format=out_format, actors=concurrency)
