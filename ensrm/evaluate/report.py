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


def check_plotting() -> None:
    """Raise :class:`MissingDependencyError` (naming ``ensrm[eval]``) when matplotlib is missing."""
    require("matplotlib", "eval")


def write_report(report: dict, out_dir: Path, plots: bool = True) -> dict[str, Path]:
    """Write the report's files into ``out_dir``; return their paths by kind."""
    out_dir = Path(out_dir)
    paths = {"json": out_dir / "report.json", "markdown": out_dir / "report.md"}
    if plots:
        paths.update({kind: out_dir / name for kind, (name, _) in PLOTS.items()})
    report["files"] = {kind: str(path) for kind, path in paths.items()}
    if plots:
        for kind, (_, draw) in PLOTS.items():
            write_atomically(paths[kind], lambda tmp, draw=draw: draw(report, tmp))
    for kind, text in (("json", json.dumps(report, indent=1) + "\n"), ("markdown", markdown(report))):
        write_atomically(paths[kind], lambda tmp, text=text: Path(tmp).write_text(text, encoding="utf-8"))
    return paths


# -- Markdown ----------------------------------------------------------------------------------


def _estimate(estimate: dict | None, scale: float, spec: str) -> str:
    """``value [low, high]`` from ``{"value", "interval"}``, each ``scale`` times, formatted by ``spec``;
    ``n/a`` without a value, the value alone without an interval.

    >>> _estimate({"value": 0.931, "interval": [0.92, 0.942]}, 100, ".1f")
    '93.1 [92.0, 94.2]'
    """
    if estimate is None or estimate.get("value") is None:
        return "n/a"
    low, high = estimate.get("interval") or [None, None]
    text = format(scale * estimate["value"], spec)
    return text if low is None else f"{text} [{format(scale * low, spec)}, {format(scale * high, spec)}]"


def _pct(estimate: dict | None) -> str:
    """An accuracy in percent: ``93.1 [92.0, 94.2]``."""
    return _estimate(estimate, 100, ".1f")


def _num(estimate: dict | None) -> str:
    """A plain number (an AUROC): ``0.612 [0.540, 0.688]``."""
    return _estimate(estimate, 1, ".3f")


def _signed(estimate: dict | None) -> str:
    """A difference of accuracies in points: ``+0.6 [-0.3, +1.5]``."""
    return _estimate(estimate, 100, "+.1f")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def markdown(report: dict) -> str:
    """The report's summary as Markdown (accuracies in percent, 95% bootstrap intervals in brackets):
    one section per function below, in reading order; a section with nothing to say is left out."""
    sections = (_introduction, _accuracy, _by_subset, _rewardbench, _uncertainty, _deciles, _diversity,
                _comparisons, _filter, _runs, _plots)
    return "\n".join(line for section in sections for line in section(report))


def _introduction(report: dict) -> list[str]:
    settings = report["settings"]
    level = int(round(100 * settings["level"]))
    intervals = (f"{level}% bootstrap intervals over {settings['resamples']} resamples (seed {settings['seed']})"
                 if settings["resamples"] else "no intervals (resamples 0)")
    source = f" from `{report['pairs_file']}`" if report["pairs_file"] else ""
    return [f"# ensrm eval: {report['bundle']}", "",
            f"{report['pairs']} preference pairs{source}; runs: {', '.join(r['name'] for r in report['runs'])}. "
            f"Accuracy counts a tie as half; brackets are {intervals}.", ""]


def _accuracy(report: dict) -> list[str]:
    """Every run's aggregates, then the primary run's heads and ties."""
    primary = report["runs"][0]
    result = primary["analysis"]
    rows = [[run["name"]] + [_pct(run["analysis"]["accuracy"]["overall"][a]) for a in AGGREGATES]
            for run in report["runs"]]
    overall = result["accuracy"]["overall"]
    heads = [name for name in overall if name.startswith("head:")]
    out = ["## Accuracy", ""] + _table(["run"] + list(AGGREGATES), rows) + [""]
    out += [f"Per head ({primary['name']}): " + ", ".join(f"{h} {_pct({'value': overall[h]['value']})}" for h in heads)
            + f"; best head {max(heads, key=lambda h: overall[h]['value'] or 0)}.", ""]
    ties = {name: count for name, count in result["ties"].items() if count}
    if ties:
        out += ["Ties (scored as half right): " + ", ".join(f"{k} {v}" for k, v in ties.items()) + ".", ""]
    return out


def _by_subset(report: dict) -> list[str]:
    subsets = report["runs"][0]["analysis"]["accuracy"].get("subsets")
    if not subsets:
        return []
    rows = [[name, str(row["pairs"])] + [_pct(row[a]) for a in AGGREGATES] for name, row in subsets.items()]
    return ["### By subset", ""] + _table(["subset", "pairs"] + list(AGGREGATES), rows) + [""]


def _rewardbench(report: dict) -> list[str]:
    sections = report["runs"][0]["analysis"]["accuracy"].get("rewardbench")
    if not sections:
        return []
    out = ["### RewardBench sections", "",
           "Each section weights its subsets' accuracies by RewardBench's example counts; the score is the "
           "mean of the sections present.", ""]
    out += _table(["section"] + list(AGGREGATES),
                  [[name] + [_pct(row[a]) for a in AGGREGATES] for name, row in sections["scores"].items()])
    if sections["missing"]:
        out += ["", "Subsets absent here: " + "; ".join(f"{s}: {', '.join(m)}"
                                                        for s, m in sections["missing"].items()) + "."]
    return out + [""]


def _uncertainty(report: dict) -> list[str]:
    """How well each disagreement measure predicts a wrong pair (AUROC, selective area)."""
    objective, primary = report["settings"]["objective"], report["runs"][0]
    result = primary["analysis"]
    unc = result["uncertainty"]
    out = ["## Does disagreement predict errors?", "",
           f"For the `{objective}` objective ({primary['name']}): {unc['wrong']} of {result['pairs']} pairs are "
           f"wrong, {unc['ties']} tied. AUROC of each measure for telling a wrong pair from a right one "
           "(0.5: no better than chance):", ""]
    out += _table(["measure"] + [f"AUROC ({a})" for a in AGGREGATES] + [f"selective area ({objective})"],
                  [[f"`{m}`"] + [_num(unc["auroc"][m][a]) for a in AGGREGATES]
                   + [_pct(unc["selective"][m]["area"])] for m in MEASURES])
    return out + ["", f"Selective area for reference: keeping pairs at random {_pct(unc['selective_random'])}, "
                  f"the best possible order {_pct(unc['selective_oracle'])}.", "",
                  "Measures: " + "; ".join(f"`{m}` {text}" for m, text in MEASURES.items()) + ".", ""]


def _deciles(report: dict) -> list[str]:
    deciles = report["runs"][0]["analysis"]["uncertainty"]["by_decile"]
    count = max(len(rows) for rows in deciles.values())
    rows = [[str(i + 1)] + [_pct({"value": deciles[m][i]["accuracy"]}) if i < len(deciles[m]) else ""
                            for m in MEASURES] for i in range(count)]
    return ([f"Accuracy (`{report['settings']['objective']}`) by decile of disagreement, least uncertain first:",
             ""] + _table(["decile"] + [f"`{m}`" for m in MEASURES], rows) + [""])


def _diversity(report: dict) -> list[str]:
    div = report["runs"][0]["analysis"]["diversity"]
    return ["## Head diversity", "",
            f"Mean pairwise correlation of the heads' margins: {_num({'value': div['mean_margin_correlation']})}; "
            f"the heads disagree on the winner in {100 * div['winner_disagreement']:.1f}% of pairs "
            f"(a given two heads in {100 * div['mean_pairwise_winner_disagreement']:.1f}%).", ""]


def _comparisons(report: dict) -> list[str]:
    """Each run against the reference run: accuracy deltas, same winner, Spearman, largest difference."""
    if not report["comparisons"]:
        return []
    objective = report["settings"]["objective"]
    rows = [[name] + [_signed(comp["accuracy_delta"][a]) for a in AGGREGATES]
            + [f"{100 * comp['same_winner'][objective]:.2f}%", f"{comp['spearman'][objective]:.5f}",
               f"{max(comp['max_abs_diff'].values()):.2g}"] for name, comp in report["comparisons"].items()]
    return ([f"## Against {report['reference']}", "",
             "Accuracy deltas in points (paired bootstrap intervals); same winner: share of pairs where both "
             "runs prefer the same response; Spearman over all responses' scores.", ""]
            + _table(["run"] + [f"Δ {a}" for a in AGGREGATES]
                     + [f"same winner ({objective})", f"Spearman ({objective})", "max abs diff"], rows) + [""])


def _filter(report: dict) -> list[str]:
    """The chosen filter's thresholds and what it keeps on these pairs."""
    choice = report.get("filter")
    if not choice:
        return []
    expected = choice["expected"]
    how = ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in choice["chosen_by"].items())
    thresholds = f"max_std = {_num({'value': choice['max_std']})}"
    if choice["min_score"] is not None:
        thresholds += f", min_score = {choice['min_score']:g} ({choice['objective']})"
    saved = f", saved to `{choice['file']}`" if choice.get("file") else ""
    return ["## Filter", "",
            f"Chosen for {how} on the `{choice['objective']}` errors of {choice['run']}: {thresholds}{saved}.", "",
            f"- accuracy of the kept pairs: {_pct(expected['accuracy'])} (all pairs: "
            f"{_pct({'value': choice['accuracy_without_filter']})})",
            f"- pairs kept (both responses accepted): {_pct(expected['pair_keep'])} "
            f"({choice['kept_pairs']} of {choice['pairs']})",
            f"- responses accepted: {_pct(expected['response_keep'])}", "",
            "The threshold was chosen on these same pairs, so these are in-sample figures: expect a little "
            "less on new data.", ""]


def _runs(report: dict) -> list[str]:
    timing = report["timing"]
    return (["## Runs", ""]
            + _table(["run", "what ran", "scoring (s)"],
                     [[r["name"], r["description"], f"{r['seconds']:.1f}"] for r in report["runs"]])
            + ["", f"Total {timing['total_seconds']:.1f} s: scoring {timing['scoring_seconds']:.1f} s, "
               f"statistics {timing['analysis_seconds']:.1f} s.", ""])


def _plots(report: dict) -> list[str]:
    files = report.get("files", {})
    plots = [Path(files[k]).name for k in PLOTS if k in files]
    return (["## Plots", ""] + [f"![{name}]({name})" for name in plots] + [""]) if plots else []


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
        values, bars = _error_bars(run["analysis"]["accuracy"]["overall"], names)
        ax.errorbar([i - 0.4 + width * (r + 0.5) for i in range(len(names))], values, yerr=bars, fmt="o",
                    capsize=3, label=run["name"])
    ax.set_xticks(range(len(names)), [n.replace("head:", "h") for n in names])
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Preference accuracy, {report['pairs']} pairs (95% bootstrap intervals)")
    ax.axvline(len(names) - len(AGGREGATES) - 0.5, color="grey", lw=0.8, ls=":")
    ax.grid(axis="y", alpha=0.3)
    if len(runs) > 1:
        ax.legend(fontsize=8)
    _save(fig, path)


def _error_bars(overall: dict, names: list[str]) -> tuple[list[float], list[list[float]]]:
    """The accuracies of ``names`` in percent and their error bars ``[below, above]`` (none without an interval)."""
    values = [100 * (overall[n]["value"] or 0.0) for n in names]
    bounds = [[100 * (end if end is not None else overall[n]["value"]) for end in overall[n]["interval"]]
              for n in names]
    below = [v - low for v, (low, _) in zip(values, bounds)]
    above = [high - v for v, (_, high) in zip(values, bounds)]
    return values, [below, above]


def plot_selective(report: dict, path) -> None:
    """Selective-prediction curves: every measure for the first run; ``response_std`` for every run."""
    plt = _pyplot()
    runs = report["runs"]
    panels = 2 if len(runs) > 1 else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.0), squeeze=False)
    _selective_by_measure(axes[0][0], report)
    if panels == 2:
        _selective_by_run(axes[0][1], runs)
    _save(fig, path)


def _selective_by_measure(ax, report: dict) -> None:
    """The first run's curve of every measure, the random order's level and the chosen filter's point."""
    first = report["runs"][0]["analysis"]["uncertainty"]
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
    ax.set_ylabel(f"accuracy of kept pairs (%), {first['objective']}")
    choice = report.get("filter")
    if choice and choice["expected"]["pair_keep"]["value"] is not None:
        expected = choice["expected"]
        ax.plot([expected["pair_keep"]["value"]], [100 * expected["accuracy"]["value"]], "k*", ms=10,
                label="chosen filter")
    _finish_selective(ax, "fraction of pairs kept (most uncertain rejected first)",
                      f"Selective prediction, {report['runs'][0]['name']}")


def _selective_by_run(ax, runs: list[dict]) -> None:
    """The ``response_std`` curve of every run."""
    for run in runs:
        curve = run["analysis"]["uncertainty"]["selective"]["response_std"]["curve"]
        ax.plot(curve["coverage"], [100 * a for a in curve["accuracy"]], drawstyle="steps-pre", label=run["name"])
    _finish_selective(ax, "fraction of pairs kept", "response_std, every run")


def _finish_selective(ax, xlabel: str, title: str) -> None:
    """What every selective-prediction panel shares: coverage from 0 to 1, a grid, the legend."""
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")


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


#: The plots by kind (the key of their path in ``report["files"]``): file name and drawing function.
PLOTS = {"accuracy_png": ("accuracy.png", plot_accuracy), "selective_png": ("selective.png", plot_selective),
         "deciles_png": ("deciles.png", plot_deciles), "diversity_png": ("diversity.png", plot_diversity)}
