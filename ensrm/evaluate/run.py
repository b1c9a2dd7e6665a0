"""``ensrm eval``: score preference pairs with a bundle (and its variants, and its source in torch), report.

One run per precision (and one for the torch checkpoint): the chosen and the rejected responses
of every pair are scored in **one** :meth:`Scorer.score_texts` call, so the runtime's length
grouping batches all ``2n`` texts together and evaluation runs at the scorer's speed. (The example
needs a bundle and a pairs file: not run by the doctests.)

>>> from ensrm.runtime.config import ScorerConfig
>>> report = evaluate_file(ScorerConfig("bundles/default"), "pairs.jsonl", out_dir="artifacts/eval")  # doctest: +SKIP
>>> report["runs"][0]["analysis"]["accuracy"]["overall"]["uwo"]["value"]     # doctest: +SKIP
0.93
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ensrm.bundle import read_spec
from ensrm.errors import InputError, InputFileError
from ensrm.evaluate import stats
from ensrm.evaluate.analysis import analyse, compare, groups_of
from ensrm.evaluate.pairs import PreferencePairs, read_pairs
from ensrm.evaluate.threshold import build_filter, check_filter_options, choose_threshold
from ensrm.progress import StageProgress
from ensrm.runtime.config import ScorerConfig
from ensrm.runtime.scores import Scores, parse_objective

REPORT_FORMAT = "ensrm-eval"
REPORT_VERSION = 1
CHECKPOINT_RUN = "checkpoint (torch)"

#: ``progress(stage, done, total)``: what is running and how far it is (``total`` 0: no count).
Progress = StageProgress


def resolve_precisions(bundle: str | os.PathLike, primary: str, others: str | Sequence[str] | None) -> list[str]:
    """The precisions to evaluate: ``primary`` first, then ``others`` (``"all"``: every accepted one).

    The example reads a bundle: not run by the doctests.

    >>> resolve_precisions("bundles/default", "fp32", "all")          # doctest: +SKIP
    ['fp32', 'fp16', 'int8']
    """
    usable = read_spec(bundle).usable_precisions
    if others is None:
        wanted = []
    elif isinstance(others, str):
        wanted = list(usable) if others.strip() == "all" else [p.strip() for p in others.split(",") if p.strip()]
    else:
        wanted = list(others)
    unknown = [p for p in wanted if p not in usable]
    if unknown:
        raise ValueError(f"`precisions` {', '.join(unknown)}: not an accepted precision of {bundle} "
                         f"(accepted: {', '.join(usable)}; or all)")
    runs = [primary] + [p for p in wanted if p != primary]
    return list(dict.fromkeys(runs))


def _locate(exc: InputError, pairs: PreferencePairs, path, order: Sequence[int]) -> Exception:
    """Name the record (its line) behind a scoring error about scored text ``j``, which is text
    ``order[j]`` of the chosen+rejected list."""
    match = re.match(r"(prompts|responses)\[(\d+)\]", exc.field or "")
    if match is None:
        return exc
    j, n = int(match.group(2)), len(pairs)
    i = order[j]
    pair, side = i % n, "chosen" if i < n else "rejected"
    what = "prompt" if match.group(1) == "prompts" else side
    message = re.sub(rf"\b(pair {j}|prompts\[{j}\]|responses\[{j}\])", f"the (prompt, {side}) pair", str(exc))
    message = f"{what}: {message}"
    line = pairs.lines[pair]
    if path is None or line is None:
        return InputError(f"record {pair}: {message}", field=f"records[{pair}].{what}")
    return InputFileError(path, line, message)


def score_pairs(scorer, pairs: PreferencePairs, path=None, progress: Progress | None = None,
                stage: str = "scoring") -> tuple[Scores, Scores]:
    """``(chosen, rejected)`` scores of every pair, from one ``score_texts`` call over all ``2n`` texts.

    A (prompt, response) that occurs more than once is scored once, so equal texts get equal
    scores on every runtime (a pair whose chosen equals its rejected is an exact tie, even where
    the runtime's kernels round differently by batch shape) and repeated texts cost nothing.
    """
    n = len(pairs)
    texts = list(zip(pairs.prompts + pairs.prompts, pairs.chosen + pairs.rejected))  # 2n (prompt, response)
    first: dict[tuple[str, str], int] = {}  # each distinct text -> its first position among the 2n
    for i, text in enumerate(texts):
        first.setdefault(text, i)
    row = {text: j for j, text in enumerate(first)}
    slot = np.array([row[text] for text in texts], dtype=np.int64)  # [2n]: each text's row of scores
    order = list(first.values())
    try:
        scores = scorer.score_texts([p for p, _ in first], [r for _, r in first],
                                    progress=_ticker(progress, stage))
    except InputError as exc:
        raise _locate(exc, pairs, path, order) from None
    return scores.take(slot[:n]), scores.take(slot[n:])


def evaluate_pairs(config: ScorerConfig, pairs: PreferencePairs | str | os.PathLike, *,
                   precisions: str | Sequence[str] | None = None, checkpoint: Sequence[str | os.PathLike] = (),
                   checkpoint_heads: str | os.PathLike | None = None, objective: str = "uwo",
                   resamples: int = stats.RESAMPLES, seed: int = stats.SEED, bins: int = 10,
                   target_accuracy: float | None = None, keep: float | None = None, min_score: float | None = None,
                   progress: Progress | None = None) -> tuple[dict, object | None]:
    """Score ``pairs`` with every requested run and analyse them; return ``(report, filter)``.

    ``config`` is the primary run (its precision); ``precisions`` adds others (``"all"``, or
    ``"fp32,int8"``); ``checkpoint`` the source model in torch. Deltas are against fp32 when it
    is among the runs, else against the primary run. With ``target_accuracy`` or ``keep`` a
    :class:`ResponseFilter` is chosen on the primary run and returned (else ``None``).
    """
    started = time.perf_counter()
    pairs, path = _read(pairs, progress)
    _check_options(resamples, target_accuracy, keep, min_score)  # before minutes of scoring
    from ensrm.runtime.scorer import Scorer

    primary = Scorer.from_config(config)  # the primary run: its precision ("auto" resolved) comes first
    objective = parse_objective(objective, primary.num_heads)
    runs, scored = _score_bundle(config, primary, precisions, pairs, path, progress)
    if checkpoint:
        run, scored[CHECKPOINT_RUN] = _score_checkpoint(checkpoint, checkpoint_heads, primary, config.batch_size,
                                                        pairs, path, progress)
        runs.append(run)
    scoring_seconds = time.perf_counter() - started

    if progress is not None:
        progress("analysing", 0, 0)
    t0 = time.perf_counter()
    weights = stats.bootstrap_weights(groups_of(pairs.subsets), resamples, seed) if resamples else None
    settings = {"objective": objective, "resamples": resamples, "seed": seed, "level": stats.LEVEL,
                "bins": bins, "batch_size": config.batch_size, "backend": config.backend}
    report = _analyse(config, pairs, path, settings, runs, scored, weights)
    response_filter = None
    if target_accuracy is not None or keep is not None:
        chosen, rejected = scored[runs[0]["name"]]
        report["filter"] = choose_threshold(chosen, rejected, objective, target_accuracy=target_accuracy, keep=keep,
                                            min_score=min_score, weights=weights)
        report["filter"]["run"] = runs[0]["name"]
        response_filter = build_filter(primary, report["filter"], source=path)
    report["timing"] = {"scoring_seconds": scoring_seconds, "analysis_seconds": time.perf_counter() - t0,
                        "total_seconds": time.perf_counter() - started}
    return report, response_filter


def _read(pairs: PreferencePairs | str | os.PathLike, progress: Progress | None) -> tuple[PreferencePairs, str | None]:
    """``(pairs, path)``: the pairs (read from the file ``pairs`` names, else as given) and their file (or ``None``)."""
    path = None
    if not isinstance(pairs, PreferencePairs):
        path = str(pairs)
        if progress is not None:
            progress(f"reading {path}", 0, 0)
        pairs = read_pairs(path)
    if len(pairs) == 0:
        raise InputError("no preference pairs to evaluate")
    return pairs, path


def _check_options(resamples: int, target_accuracy: float | None, keep: float | None,
                   min_score: float | None) -> None:
    """Refuse a negative ``resamples``, and bad filter options when a filter is wanted."""
    if resamples < 0:
        raise ValueError(f"`resamples` must be >= 0, got {resamples}")
    if target_accuracy is not None or keep is not None:
        check_filter_options(target_accuracy, keep, min_score)


def _ticker(progress: Progress | None, stage: str):
    """``progress`` as a ``tick(done, total)`` for ``stage`` (``None`` without ``progress``)."""
    return None if progress is None else (lambda done, total: progress(stage, done, total))


def _score_bundle(config: ScorerConfig, primary, precisions, pairs: PreferencePairs, path,
                  progress: Progress | None) -> tuple[list[dict], dict[str, tuple[Scores, Scores]]]:
    """``(runs, scored)``: one run per precision of the bundle (``primary``'s first) and its pairs' scores by name."""
    from ensrm.runtime.scorer import Scorer

    runs, scored = [], {}
    for name in resolve_precisions(config.bundle, primary.precision, precisions):
        scorer = primary if name == primary.precision else Scorer.from_config(config.replace(precision=name))
        t0 = time.perf_counter()
        scored[name] = score_pairs(scorer, pairs, path, progress, stage=f"scoring {name}")
        runs.append({"name": name, "kind": "bundle", "description": scorer.description,
                     "seconds": time.perf_counter() - t0})
    return runs, scored


def _score_checkpoint(checkpoint: Sequence[str | os.PathLike], heads, primary, batch_size: int,
                      pairs: PreferencePairs, path, progress: Progress | None) -> tuple[dict, tuple[Scores, Scores]]:
    """``(run, (chosen, rejected))``: the source model's scores in torch (``--checkpoint``), as ``primary`` would."""
    from ensrm.evaluate.checkpoint import score_checkpoint

    t0 = time.perf_counter()
    try:
        both = score_checkpoint(checkpoint, primary, pairs.prompts + pairs.prompts, pairs.chosen + pairs.rejected,
                                batch_size=batch_size, heads=heads,
                                progress=_ticker(progress, f"scoring {CHECKPOINT_RUN}"))
    except InputError as exc:
        raise _locate(exc, pairs, path, range(2 * len(pairs))) from None  # every text, in order
    n = len(pairs)
    scores = both.take(slice(0, n)), both.take(slice(n, 2 * n))
    return {"name": CHECKPOINT_RUN, "kind": "torch", "seconds": time.perf_counter() - t0,
            "description": f"torch eager: {', '.join(map(str, checkpoint))}"}, scores


def _analyse(config: ScorerConfig, pairs: PreferencePairs, path, settings: dict, runs: list[dict],
             scored: dict[str, tuple[Scores, Scores]], weights: np.ndarray | None) -> dict:
    """The report (without filter and timing): every run analysed, and compared with the reference run."""
    for run in runs:
        chosen, rejected = scored[run["name"]]
        run["analysis"] = analyse(chosen, rejected, pairs.subsets, objective=settings["objective"], weights=weights,
                                  bins=settings["bins"])
    reference = "fp32" if "fp32" in scored else runs[0]["name"]
    comparisons = {run["name"]: compare(scored[reference], scored[run["name"]], settings["objective"], weights)
                   for run in runs if run["name"] != reference}
    return {"format": REPORT_FORMAT, "version": REPORT_VERSION, "bundle": str(config.bundle), "pairs_file": path,
            "pairs": len(pairs), "subsets": _subset_counts(pairs), "settings": settings, "runs": runs,
            "reference": reference, "comparisons": comparisons}


def _subset_counts(pairs: PreferencePairs) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in pairs.subsets:
        if s is not None:
            counts[s] = counts.get(s, 0) + 1
    return dict(sorted(counts.items()))


def evaluate_file(config: ScorerConfig, pairs: str | os.PathLike | PreferencePairs, out_dir: str | os.PathLike,
                  *, write_filter: str | os.PathLike | None = None, plots: bool = True,
                  progress: Progress | None = None, **options) -> dict:
    """:func:`evaluate_pairs`, then write ``report.json``, ``report.md`` and the plots into ``out_dir``
    (and the filter to ``write_filter``). Returns the report, with the written paths under ``"files"``."""
    from ensrm.evaluate.report import check_plotting, write_report

    if plots:
        check_plotting()  # a missing matplotlib is found before the scoring, not after
    if write_filter is not None and options.get("target_accuracy") is None and options.get("keep") is None:
        raise ValueError("`write_filter` needs `target_accuracy` or `keep` to choose the threshold by")
    report, response_filter = evaluate_pairs(config, pairs, progress=progress, **options)
    if response_filter is not None and write_filter is not None:
        report["filter"]["file"] = str(response_filter.save(write_filter))
    if progress is not None:
        progress(f"writing {out_dir}", 0, 0)
    report["files"] = {name: str(p) for name, p in write_report(report, Path(out_dir), plots=plots).items()}
    return report
