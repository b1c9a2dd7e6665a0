"""The tables of the overoptimisation experiment (docs/benchmarks/overoptimisation.md), from its results file.

    python examples/overoptimisation/report.py                      # examples/overoptimisation/results/...
    python examples/overoptimisation/report.py path/to/overoptimisation.json

Prints Markdown: gold of the selected response with paired differences to the single proxy,
proxy quality, the compute table and the run's time. Every number is read from the file, so
the page's copy can be checked against a rerun.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DEFAULT = Path(__file__).parent / "results" / "overoptimisation.json"
NAMES = {"single": "single proxy", "frozen": "frozen multi-head", "multi": "multi-head (m = 0)",
         "full": "full ensemble"}


def form_label(form: str) -> str:
    return NAMES.get(form) or f"partial trunk (m = {form.removeprefix('trunk')})"


def _pm(value: float, stderr: float | None, signed: bool = False) -> str:
    text = f"{value:+.3f}" if signed else f"{value:.3f}"
    return text if stderr is None else f"{text} ± {stderr:.3f}"


def gold_table(results: dict) -> str:
    """Gold at the table's n for every objective, and its paired difference to the single proxy."""
    ns, table, peak = results["config"]["table_ns"], results["table"], results["peak"]
    head = ["proxy objective"] + [f"n = {n}" for n in ns] + [f"vs single, n = {n}" for n in ns] + ["peak (n)"]
    rows = [head, ["---"] * len(head)]
    names = ["single"] + [f"{f}_{o}" for f in results["config"]["forms"] for o in ("mean", "wco", "uwo")]
    for name in names + ["gold_oracle"]:
        cells = table.get(name) or {}
        label = ("best-of-n by gold itself" if name == "gold_oracle" else
                 "single proxy" if name == "single" else
                 f"{form_label(name.rsplit('_', 1)[0])} {name.rsplit('_', 1)[1].upper()}")
        row = [label] + [_pm(cells[str(n)]["gold"], cells[str(n)]["gold_stderr"]) for n in ns]
        row += [_pm(cells[str(n)]["diff"], cells[str(n)]["diff_stderr"], signed=True)
                if "diff" in cells[str(n)] else "—" for n in ns]
        row.append("" if name == "gold_oracle" else f"{peak[name]['gold']:.3f} ({peak[name]['n']})")
        rows.append(row)
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def quality_table(results: dict) -> str:
    """Accuracy on the clean held-out pairs and correlation with gold over the pool, mean over seeds."""
    acc, corr = results["clean_test_accuracy"], results["proxy_gold_correlation"]
    rows = ["| proxy | clean accuracy mean / WCO / UWO | correlation with gold mean / WCO / UWO |", "|---|---|---|"]
    rows.append(f"| single proxy | {acc['single']['mean']['head']:.3f} | {corr['single']['mean']:.3f} |")
    for form in results["config"]["forms"]:
        a = " / ".join(f"{acc[form]['mean'][o]:.3f}" for o in ("mean", "wco", "uwo"))
        c = " / ".join(f"{corr[f'{form}_{o}']['mean']:.3f}" for o in ("mean", "wco", "uwo"))
        rows.append(f"| {form_label(form)} | {a} | {c} |")
    return "\n".join(rows)


def cost_table(results: dict) -> str:
    """Training and scoring cost of each form, as the run measured it."""
    rows = ["| form | members | encoder passes | training, s (pairs/s) | scoring in the run, candidates/s | "
            "weights on disk | peak RSS | load | s / 1000 candidates (fresh process) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for form, c in results["costs"].items():
        in_run = c["scoring_candidates_per_second_in_run"]
        rows.append(f"| {form_label(form)} | {c['members']} | {c['encoder_equivalents']:g} | "
                    f"{c['training_seconds']:.0f} ({c['training_pairs_per_second']:.1f}) | "
                    f"{'—' if in_run is None else f'{in_run:.1f}'} | {c.get('weights_mb', '—')} MB | "
                    f"{c.get('peak_rss_mb', '—')} MB | {c.get('load_seconds', '—')} s | "
                    f"{c.get('seconds_per_1000', '—')} |")
    return "\n".join(rows)


def time_summary(results: dict) -> str:
    """Wall time of the run by kind of stage."""
    stages = results["seconds"]
    kinds = {kind: sum(v for k, v in stages.items() if f": {kind}" in k) for kind in ("train", "export", "score")}
    other = stages["total"] - sum(kinds.values())
    return (f"total {stages['total'] / 60:.1f} min: training {kinds['train'] / 60:.1f} min, exports "
            f"{kinds['export'] / 60:.1f} min, scoring {kinds['score'] / 60:.1f} min, the frozen bundle, "
            f"costs and statistics {other / 60:.1f} min")


def markdown(results: dict) -> str:
    return "\n\n".join([gold_table(results), quality_table(results), cost_table(results), time_summary(results)])


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else DEFAULT
    print(markdown(json.loads(path.read_text(encoding="utf-8"))))


if __name__ == "__main__":
    main()
