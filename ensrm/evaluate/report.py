"""Write an ``ensrm eval`` report: ``report.json`` (every number), ``report.md`` (the summary), PNG plots.

Plots need matplotlib (``pip install 'ensrm[eval]'``), imported only here. Every file is written
to a temporary name and renamed into place, so a report directory never holds half a file. (The example needs a
report from a scored run: not run by the doctests.)

>>> paths = write_report(report, Path("artifacts/eval"))                       # doctest: +SKIP
>>> sorted(paths)                                                               # doctest: +SKIP
['accuracy_png', 'deciles_png', 'diversity_png', 'json', 'markdown', 'selective_png']
"""

from __future__ import annotations

import json
from pathlib import Path

from ensrm._optional import require
from ensrm.evaluate.analysis import AGGREGATES, MEASURES
from ensrm.jsonl import write_atomically

PLOTS = {"accuracy_png": "accuracy.png", "selective_png": "selective.png", "deciles_png": "deciles.png",
         "diversity_png": "diversity.png"}


def check_plotting() -> None:
    """Raise :class:`MissingDependencyError` (naming ``ensrm[eval]``) when matplotlib is missing."""
    require("matplotlib", "eval")


def write_report(report: dict, out_dir: Path, plots: bool = True) -> dict[str, Path]:
    """Write the report's files into ``out_dir``; return their paths by kind."""
    out_dir = Path(out_dir)
    paths = {"json": out_dir / "report.json", "markdown": out_dir / "report.md"}
    if plots:
        paths.update({kind: out_dir / name for kind, name in PLOTS.items()})
    report["files"] = {kind: str(path) for kind, path in paths.items()}
    if plots:
        for kind, draw in (("accuracy_png", plot_accuracy), ("selective_png", plot_selective),
                           ("deciles_png", plot_deciles), ("diversity_png", plot_diversity)):
            write_atomically(paths[kind], lambda tmp, draw=draw: draw(report, tmp))
    text = json.dumps(report, indent=1) + "\n"
    write_atomically(paths["json"], lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    write_atomically(paths["markdown"], lambda tmp: Path(tmp).write_text(markdown(report), encoding="utf-8"))
    return paths


# -- Markdown ----------------------------------------------------------------------------------


def _pct(estimate: dict | None, digits: int = 1) -> str:
    """``93.1 [92.0, 94.2]`` (percent) from ``{"value", "interval"}``."""
    if estimate is None or estimate.get("value") is None:
        return "n/a"
    text = f"{100 * estimate['value']:.{digits}f}"
    low, high = estimate.get("interval") or [None, None]
    return text if low is None else f"{text} [{100 * low:.{digits}f}, {100 * high:.{digits}f}]"


def _num(estimate: dict | None, digits: int = 3) -> str:
    if estimate is None or estimate.get("value") is None:
        return "n/a"
    text = f"{estimate['value']:.{digits}f}"
    low, high = estimate.get("interval") or [None, None]
    return text if low is None else f"{text} [{low:.{digits}f}, {high:.{digits}f}]"


def _signed(estimate: dict, digits: int = 1) -> str:
    value = estimate.get("value")
    if value is None:
        return "n/a"
    low, high = estimate.get("interval") or [None, None]
    text = f"{100 * value:+.{digits}f}"
    return text if low is None else f"{text} [{100 * low:+.{digits}f}, {100 * high:+.{digits}f}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def markdown(report: dict) -> str:
    """The report's summary as Markdown (accuracies in percent, 95% bootstrap intervals in brackets)."""
    settings = report["settings"]
    primary = report["runs"][0]
    result = primary["analysis"]
    objective = settings["objective"]
    level = int(round(100 * settings["level"]))
    intervals = (f"{level}% bootstrap intervals over {settings['resamples']} resamples (seed {settings['seed']})"
                 if settings["resamples"] else "no intervals (resamples 0)")
    out = [f"# ensrm eval: {report['bundle']}", "",
           f"{report['pairs']} preference pairs" + (f" from `{report['pairs_file']}`" if report["pairs_file"] else "")
           + f"; runs: {', '.join(r['name'] for r in report['runs'])}. Accuracy counts a tie as half; "
           f"brackets are {intervals}.", ""]

    out += ["## Accuracy", ""]
    names = list(result["accuracy"]["overall"])
    rows = []
    for run in report["runs"]:
        overall = run["analysis"]["accuracy"]["overall"]
        rows.append([run["name"]] + [_pct(overall[name]) for name in AGGREGATES])
    out += _table(["run"] + list(AGGREGATES), rows) + [""]
    heads = [name for name in names if name.startswith("head:")]
    overall = result["accuracy"]["overall"]
    out += [f"Per head ({primary['name']}): " + ", ".join(f"{h} {_pct({'value': overall[h]['value']})}"
                                                             for h in heads)
            + f"; best head {max(heads, key=lambda h: overall[h]['value'] or 0)}.", ""]
    ties = {name: count for name, count in result["ties"].items() if count}
    if ties:
        out += ["Ties (scored as half right): " + ", ".join(f"{k} {v}" for k, v in ties.items()) + ".", ""]

    subsets = result["accuracy"].get("subsets")
    if subsets:
        out += ["### By subset", ""]
        out += _table(["subset", "pairs"] + list(AGGREGATES),
                      [[name, str(row["pairs"])] + [_pct(row[a]) for a in AGGREGATES] for name, row in subsets.items()])
        out += [""]
    sections = result["accuracy"].get("rewardbench")
    if sections:
        out += ["### RewardBench sections", "",
                "Each section weights its subsets' accuracies by RewardBench's example counts; the score is the "
                "mean of the sections present.", ""]
        out += _table(["section"] + list(AGGREGATES),
                      [[name] + [_pct(row[a]) for a in AGGREGATES] for name, row in sections["scores"].items()])
        if sections["missing"]:
            out += ["", "Subsets absent here: " + "; ".join(f"{s}: {', '.join(m)}"
                                                            for s, m in sections["missing"].items()) + "."]
        out += [""]

    unc = result["uncertainty"]
    out += ["## Does disagreement predict errors?", "",
            f"For the `{objective}` objective ({primary['name']}): {unc['wrong']} of {result['pairs']} pairs are "
            f"wrong, {unc['ties']} tied. AUROC of each measure for telling a wrong pair from a right one "
            "(0.5: no better than chance):", ""]
    out += _table(["measure"] + [f"AUROC ({a})" for a in AGGREGATES] + [f"selective area ({objective})"],
                  [[f"`{m}`"] + [_num(unc["auroc"][m][a]) for a in AGGREGATES]
                   + [_pct(unc["selective"][m]["area"])] for m in MEASURES])
    out += ["", f"Selective area for reference: keeping pairs at random {_pct(unc['selective_random'])}, "
            f"the best possible order {_pct(unc['selective_oracle'])}.", ""]
    out += ["Measures: " + "; ".join(f"`{m}` {text}" for m, text in MEASURES.items()) + ".", ""]
    out += [f"Accuracy (`{objective}`) by decile of disagreement, least uncertain first:", ""]
    deciles = unc["by_decile"]
    count = max(len(rows) for rows in deciles.values())
    out += _table(["decile"] + [f"`{m}`" for m in MEASURES],
                  [[str(i + 1)] + [_pct({"value": deciles[m][i]["accuracy"]}) if i < len(deciles[m]) else ""
                                   for m in MEASURES] for i in range(count)])
    out += [""]

    div = result["diversity"]
    out += ["## Head diversity", "",
            f"Mean pairwise correlation of the heads' margins: {_fmt(div['mean_margin_correlation'])}; "
            f"the heads disagree on the winner in {100 * div['winner_disagreement']:.1f}% of pairs "
            f"(a given two heads in {100 * div['mean_pairwise_winner_disagreement']:.1f}%).", ""]

    if report["comparisons"]:
        out += [f"## Against {report['reference']}", "",
                "Accuracy deltas in points (paired bootstrap intervals); same winner: share of pairs where both "
                "runs prefer the same response; Spearman over all responses' scores.", ""]
        rows = []
        for name, comp in report["comparisons"].items():
            rows.append([name] + [_signed(comp["accuracy_delta"][a]) for a in AGGREGATES]
                        + [f"{100 * comp['same_winner'][objective]:.2f}%", f"{comp['spearman'][objective]:.5f}",
                           f"{max(comp['max_abs_diff'].values()):.2g}"])
        out += _table(["run"] + [f"Δ {a}" for a in AGGREGATES]
                      + [f"same winner ({objective})", f"Spearman ({objective})", "max abs diff"], rows) + [""]

    choice = report.get("filter")
    if choice:
        expected = choice["expected"]
        how = ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in choice["chosen_by"].items())
        thresholds = f"max_std = {_fmt(choice['max_std'])}"
        if choice["min_score"] is not None:
            thresholds += f", min_score = {choice['min_score']:g} ({choice['objective']})"
        out += ["## Filter", "",
                f"Chosen for {how} on the `{choice['objective']}` errors of {choice['run']}: {thresholds}"
                + (f", saved to `{choice['file']}`" if choice.get("file") else "") + ".", "",
                f"- accuracy of the kept pairs: {_pct(expected['accuracy'])} (all pairs: "
                f"{_pct({'value': choice['accuracy_without_filter']})})",
                f"- pairs kept (both responses accepted): {_pct(expected['pair_keep'])} "
                f"({choice['kept_pairs']} of {choice['pairs']})",
                f"- responses accepted: {_pct(expected['response_keep'])}", "",
                "The threshold was chosen on these same pairs, so these are in-sample figures: expect a little "
                "less on new data.", ""]

    timing = report["timing"]
    out += ["## Runs", ""]
    out += _table(["run", "what ran", "scoring (s)"],
                  [[r["name"], r["description"], f"{r['seconds']:.1f}"] for r in report["runs"]])
    out += ["", f"Total {timing['total_seconds']:.1f} s: scoring {timing['scoring_seconds']:.1f} s, "
            f"statistics {timing['analysis_seconds']:.1f} s.", ""]
    files = report.get("files", {})
    plots = [Path(files[k]).name for k in PLOTS if k in files]
    if plots:
        out += ["## Plots", ""] + [f"![{name}]({name})" for name in plots] + [""]
    return "\n".join(out)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


# -- plots -------------------------------------------------------------------------------------


def _pyplot():
    matplotlib = require("matplotlib", "eval")
    matplotlib.use("Agg")
    return require("matplotlib.pyplot", "eval")


def _save(fig, path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    fig.clf()
    import matplotlib.pyplot as plt

    plt.close(fig)


def plot_accuracy(report: dict, path) -> None:
    """Accuracy of every head and aggregate with its interval, one marker series per run."""
    plt = _pyplot()
    runs = report["runs"]
    names = list(runs[0]["analysis"]["accuracy"]["overall"])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(names) + 2), 3.6))
    width = 0.8 / len(runs)
    for r, run in enumerate(runs):
        overall = run["analysis"]["accuracy"]["overall"]
        xs = [i - 0.4 + width * (r + 0.5) for i in range(len(names))]
        values = [100 * (overall[n]["value"] or 0.0) for n in names]
        low = [v - 100 * (overall[n]["interval"][0] if overall[n]["interval"][0] is not None else overall[n]["value"])
               for v, n in zip(values, names)]
        high = [100 * (overall[n]["interval"][1] if overall[n]["interval"][1] is not None else overall[n]["value"]) - v
                for v, n in zip(values, names)]
        ax.errorbar(xs, values, yerr=[low, high], fmt="o", capsize=3, label=run["name"])
    ax.set_xticks(range(len(names)), [n.replace("head:", "h") for n in names])
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Preference accuracy, {report['pairs']} pairs (95% bootstrap intervals)")
    ax.axvline(len(names) - len(AGGREGATES) - 0.5, color="grey", lw=0.8, ls=":")
    ax.grid(axis="y", alpha=0.3)
    if len(runs) > 1:
        ax.legend(fontsize=8)
    _save(fig, path)


def plot_selective(report: dict, path) -> None:
    """Selective-prediction curves: every measure for the first run; ``response_std`` for every run."""
    plt = _pyplot()
    runs = report["runs"]
    first = runs[0]["analysis"]["uncertainty"]
    panels = 2 if len(runs) > 1 else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.0), squeeze=False)
    ax = axes[0][0]
    for measure in MEASURES:
        curve = first["selective"][measure]["curve"]
        ax.plot([0.0] + curve["coverage"], [100 * curve["accuracy"][0]] + [100 * a for a in curve["accuracy"]],
                drawstyle="steps-pre", label=f"{measure} (area {_pct(first['selective'][measure]['area'])})")
    ax.axhline(100 * first["selective_random"]["value"], color="grey", ls="--", lw=0.8, label="random order")
    # below 5% coverage a curve is a handful of pairs: keep them from setting the scale
    settled = [a for m in MEASURES for c, a in zip(first["selective"][m]["curve"]["coverage"],
                                                    first["selective"][m]["curve"]["accuracy"]) if c >= 0.05]
    if settled:
        ax.set_ylim(max(0.0, 100 * min(settled) - 5), 100.5)
    ax.set_xlabel("fraction of pairs kept (most uncertain rejected first)")
    ax.set_ylabel(f"accuracy of kept pairs (%), {first['objective']}")
    ax.set_title(f"Selective prediction, {runs[0]['name']}")
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    choice = report.get("filter")
    if choice and choice["expected"]["pair_keep"]["value"] is not None:
        ax.plot([choice["expected"]["pair_keep"]["value"]], [100 * choice["expected"]["accuracy"]["value"]], "k*",
                ms=10, label="chosen filter")
        ax.legend(fontsize=7, loc="lower left")
    if panels == 2:
        ax = axes[0][1]
        for run in runs:
            curve = run["analysis"]["uncertainty"]["selective"]["response_std"]["curve"]
            ax.plot(curve["coverage"], [100 * a for a in curve["accuracy"]], drawstyle="steps-pre", label=run["name"])
        ax.set_xlabel("fraction of pairs kept")
        ax.set_title("response_std, every run")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    _save(fig, path)


def plot_deciles(report: dict, path) -> None:
    """Accuracy by decile of each disagreement measure (first run)."""
    plt = _pyplot()
    unc = report["runs"][0]["analysis"]["uncertainty"]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    width = 0.8 / len(MEASURES)
    for j, measure in enumerate(MEASURES):
        rows = unc["by_decile"][measure]
        ax.bar([row["bin"] - 0.4 + width * (j + 0.5) for row in rows], [100 * row["accuracy"] for row in rows],
               width=width, label=measure)
    ax.set_xlabel("decile of uncertainty (1: most certain)")
    ax.set_ylabel(f"accuracy (%), {unc['objective']}")
    ax.set_xticks(range(1, 11))
    low = min(100 * row["accuracy"] for rows in unc["by_decile"].values() for row in rows)
    ax.set_ylim(max(0.0, low - 10), 100.5)
    ax.set_title(f"Accuracy by disagreement decile, {report['runs'][0]['name']}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=len(MEASURES))
    _save(fig, path)


def plot_diversity(report: dict, path) -> None:
    """Heatmap of the correlation between the heads' margins (first run)."""
    plt = _pyplot()
    div = report["runs"][0]["analysis"]["diversity"]
    corr = [[float("nan") if x is None else x for x in row] for row in div["margin_correlation"]]
    k = len(corr)
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * k + 1.5, 0.45 * k + 1.6))
    image = ax.imshow(corr, vmin=min(0.0, min(min(r) for r in corr)), vmax=1.0, cmap="viridis")
    ax.set_xticks(range(k), [f"h{i}" for i in range(k)])
    ax.set_yticks(range(k), [f"h{i}" for i in range(k)])
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{corr[i][j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if corr[i][j] < 0.8 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_title("Correlation of head margins")
    _save(fig, path)
