"""Turn a benchmark run into ``bench.json``, ``bench.png`` and ``bench.md`` (the results tables).

The project's own pass/fail targets and experiment suites live outside the package, in the
repository's ``benchmarks/`` (they add their lines through :func:`markdown`'s ``before`` and
``after`` and write through :func:`write_outputs`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from ensrm._optional import require


def _get(data: dict, *keys):
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def markdown(report: dict, before: Sequence[str] = (), after: Sequence[str] = ()) -> str:
    """The results as Markdown: the machine and model, then throughput and memory per configuration.

    ``before`` lines follow the first paragraph (a targets table, say) and ``after`` lines end it.
    """
    machine, model = report["machine"], report.get("model", {})
    lines = [f"Machine: {machine['cpu']}, {machine['cores']} cores ({', '.join(machine.get('isa', []))}); "
             f"onnxruntime {machine['onnxruntime']}"
             + (f", OpenVINO {machine['openvino']}" if machine.get("openvino") else "")
             + f"; load average {report['results'].get('load_average_start')} at start. Model: "
             f"{model.get('model_type')} {model.get('layers')} layers, hidden {model.get('hidden_size')}"
             + (f", K = {model['num_heads']}" if model.get("num_heads") else "")
             + f". Command: `{report.get('command')}`."]
    lines += list(before)
    cmp = report["results"].get("compare")
    if cmp:
        base = _get(cmp, "bundle/fp32", "seq_per_s")
        lines += ["", f"Batch {report['config']['target_batch']} x {report['config']['target_length']} tokens, "
                  f"{report['config']['threads']} threads, median of {report['config']['rounds']} rounds in fresh "
                  "processes:", "",
                  "| Configuration | what ran | seq/s | tokens/s | vs fp32 bundle | model memory (MiB) "
                  "| peak RSS (MiB) |",
                  "|---|---|---|---|---|---|---|"]
        for name, row in cmp.items():
            if "error" in row:
                lines.append(f"| {name} | error: {row['error']} | | | | | |")
                continue
            rel = f"{row['seq_per_s'] / base:.2f}x" if base else "n/a"
            lines.append(f"| {name} | {row.get('runtime', '')} | {row['seq_per_s']:.1f} | {row['tokens_per_s']:.0f} | "
                         f"{rel} | {row['rss_model_mb']:.0f} | {row['rss_peak_mb']:.0f} |")
    paired = report["results"].get("heads_sweep") or {}
    if paired.get("heads"):
        lines += ["", f"K sweep in one process, {paired['rounds']} rounds of back-to-back calls (time relative to "
                  f"K = {paired['heads'][0]}, median of the per-round ratios): " + ", ".join(
                      f"K = {k}: {r:.3f}" for k, r in zip(paired["heads"], paired["paired_ratio"]))]
    grid = report["results"].get("grid")
    if grid:
        lines += ["", "Throughput (seq/s) over batch size x length; latency at batch 1:", ""]
        for name, data in grid.items():
            if "error" in data:
                lines.append(f"- {name}: error: {data['error']}")
                continue
            lengths = sorted({r["length"] for r in data["shapes"]})
            batches = sorted({r["batch"] for r in data["shapes"]})
            cell = {(r["batch"], r["length"]): r["seq_per_s"] for r in data["shapes"]}
            lat = data["latency_batch1"]
            lines += [f"{name} (p50 {lat['p50_s'] * 1e3:.1f} ms, p99 {lat['p99_s'] * 1e3:.1f} ms "
                      f"at 1 x {lat['length']}):",
                      "", "| batch | " + " | ".join(f"{n} tokens" for n in lengths) + " |",
                      "|---|" + "---|" * len(lengths)]
            lines += [f"| {b} | " + " | ".join(f"{cell.get((b, n), float('nan')):.1f}" for n in lengths) + " |"
                      for b in batches]
            lines.append("")
    lines += latency_markdown(report["results"].get("latency"))
    ceiling = report["results"].get("ceiling")
    if ceiling and "error" not in ceiling:
        lines += ["", "Ceiling (fp32/int8: onnxruntime MatMul/MatMulInteger; torch_fp32: torch.mm, what eager runs "
                  "on; openvino_fp32: OpenVINO's MatMul; tokens x in x out): "
                  + "; ".join(f"{p} " + ", ".join(f"{s['m']}x{s['k']}x{s['n']} {s['gflops']:.0f}"
                                                  for s in ceiling[p]["shapes"])
                              + (" GOP/s" if p == "int8" else " GFLOP/s")
                              for p in ("fp32", "int8", "torch_fp32", "openvino_fp32") if p in ceiling)]
    lines += list(after)
    return "\n".join(lines).rstrip() + "\n"


def latency_markdown(latency: dict | None) -> list[str]:
    """The latency suite as one table per thread setting: p50/p99 ms per call, and eager's p50 over ours."""
    if not latency:
        return []
    if "error" in latency:
        return ["", f"Latency: error: {latency['error']}"]
    pairs = latency["pairs"]
    lines = ["", f"Latency per call (ms, p50 / p99; x = PyTorch eager's p50 over this p50): batches of "
             f"{pairs['count']} generated pairs of {pairs['length_min']}-{pairs['length_max']} tokens (mean "
             f"{pairs['length_mean']:.0f}), each padded to its own longest, {latency['rounds']} round(s) in fresh "
             "processes:"]
    for setting in latency["by_threads"]:
        runs = setting["runs"]
        names = list(runs)
        lines += ["", f"{setting['threads']} thread(s):", "", "| batch | " + " | ".join(names) + " |",
                  "|---|" + "---|" * len(names)]
        for i, batch in enumerate(latency["batches"]):
            cells = []
            for name in names:
                run = runs[name]
                if "absent" in run or "error" in run:
                    cells.append(run.get("absent") or f"error: {run['error']}")
                    continue
                row = run["rows"][i]
                ratio = "" if name.startswith("torch/") or row["eager_p50_ratio"] is None \
                    else f" ({row['eager_p50_ratio']:.2f}x)"
                cells.append(f"{row['p50_s'] * 1e3:.1f} / {row['p99_s'] * 1e3:.1f}{ratio}")
            lines.append(f"| {batch} | " + " | ".join(cells) + " |")
    return lines


def save_figure(fig, path: Path, plt) -> None:
    """Write the figure beside ``path`` and rename it into place: a reader never sees half a PNG."""
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def plot(report: dict, path: Path) -> None:
    """Throughput and memory against K (multi-head vs full ensemble), and throughput per configuration."""
    matplotlib = require("matplotlib", "bench")
    matplotlib.use("Agg")
    require("matplotlib.ticker", "bench")
    plt = require("matplotlib.pyplot", "bench")
    cmp = report["results"].get("compare", {})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    series = {"multi-head (one encoder, K heads)": "multihead", "full ensemble, K sessions": "full_sessions",
              "full ensemble, one graph": "full_graph"}
    for label, prefix in series.items():
        rows = sorted((int(n.split("/k")[1]), r) for n, r in cmp.items()
                      if n.startswith(prefix + "/k") and "error" not in r)
        if rows:
            ks = [k for k, _ in rows]
            axes[0].plot(ks, [r["seq_per_s"] for _, r in rows], "o-", label=label)
            axes[1].plot(ks, [r["rss_model_mb"] for _, r in rows], "o-", label=label)
    for ax, ylabel in ((axes[0], "sequences / s"), (axes[1], "model memory (MiB, peak RSS - runtime)")):
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())  # K = 1, 4, 16, 64, not 2^k
        ax.set_xlabel("K (ensemble members / heads)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("throughput vs K")
    axes[1].set_title("memory vs K")
    names = [n for n in cmp if n.startswith(("bundle/", "torch/", "plain/")) and "error" not in cmp[n]]
    axes[2].bar(range(len(names)), [cmp[n]["seq_per_s"] for n in names], color="tab:blue")
    axes[2].set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    axes[2].set_ylabel("sequences / s")
    axes[2].set_title("throughput per precision / runtime")
    cfg = report.get("config", {})
    fig.suptitle(f"{report['machine']['cpu']} ({report['machine']['cores']} cores), batch "
                 f"{cfg.get('target_batch')} x {cfg.get('target_length')} tokens", fontsize=10)
    save_figure(fig, path, plt)


def write_outputs(report: dict, output: str | Path, text: str | None = None, png: bool = True) -> dict[str, Path]:
    """Write ``bench.json``, ``bench.md`` (``text``, default :func:`markdown`) and ``bench.png`` (unless
    ``png`` is false) into ``output``, each via a temp file: a reader never sees half a file."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    paths = {"json": output / "bench.json", "markdown": output / "bench.md"}
    text = markdown(report) if text is None else text
    for key, content in (("json", json.dumps(report, indent=2, default=float) + "\n"), ("markdown", text)):
        tmp = paths[key].with_name("." + paths[key].name + ".tmp")
        tmp.write_text(content, encoding="utf-8")
        os.replace(tmp, paths[key])
    if png:
        paths["png"] = output / "bench.png"
        plot(report, paths["png"])
    return paths
