"""The ``trunk`` experiment suite: the partially shared trunk against its member layers m.

A :class:`TrunkBench` is an :class:`ensrm.bench.Bench` with one more suite, ``trunk``, which needs no
bundle (it exports its own trunks of the checkpoint); :class:`TrunkConfig` adds its settings to
:class:`ensrm.bench.BenchConfig`. Run it with ``python -m benchmarks --suite trunk``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.targets import or_na
from ensrm.bench import (
    Bench,
    BenchConfig,
    ModelCache,
    dir_size_mb,
    interleave,
    model_max_length,
    onnx_size_mb,
    pooled_shape,
    run_job,
    save_figure,
)
from ensrm.bundle import load_spec
from ensrm.errors import EnsrmError

#: The worker module that runs this suite's ``stacked_matmul`` job (and every job of ``ensrm.bench``).
WORKER = "benchmarks.worker"


@dataclass
class TrunkConfig(BenchConfig):
    """:class:`ensrm.bench.BenchConfig` with the trunk suite's settings."""

    trunk_members: int = 4
    trunk_member_layers: tuple[int, ...] | None = None  # None: 0, 1, 2, L/2 and L of the base's L layers
    trunk_pooling: str = "mean"
    stacked_matmul_min_time: float = 1.0  # timed seconds per case and shape, spread over the rounds


def trunk_member_layers(num_layers: int, given: tuple[int, ...] | None = None) -> list[int]:
    """The member-layer counts m the trunk suite measures: ``given``, else 0, 1, 2, L/2 and L.

    >>> trunk_member_layers(6)
    [0, 1, 2, 3, 6]
    >>> trunk_member_layers(2)
    [0, 1, 2]
    """
    values = given if given is not None else (0, 1, 2, num_layers // 2, num_layers)
    bad = [m for m in values if not 0 <= m <= num_layers]
    if bad:
        raise EnsrmError(f"member layers {bad} outside 0..{num_layers} (the base model's layers)")
    return sorted(set(values))


def linear_fit(xs, ys) -> dict:
    """Least-squares ``y = slope * x + intercept`` with R² (1 where the points have no spread at all).

    >>> fit = linear_fit([0, 1, 2], [1.0, 3.0, 5.0])
    >>> round(fit["slope"], 6), round(fit["intercept"], 6), round(fit["r2"], 6)
    (2.0, 1.0, 1.0)
    """
    x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    if x.size < 2 or np.ptp(x) == 0:
        return {"slope": None, "intercept": None, "r2": None, "points": int(x.size)}
    slope, intercept = np.polyfit(x, y, 1)
    residual = float(np.sum((y - (slope * x + intercept)) ** 2))
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - residual / total if total > 0 else 1.0
    return {"slope": float(slope), "intercept": float(intercept), "r2": float(r2), "points": int(x.size),
            "max_abs_residual": float(np.max(np.abs(y - (slope * x + intercept))))}



def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


@contextlib.contextmanager
def _quiet_transformers():
    """No "newly initialised weights" warnings or progress bars while the trunks are built."""
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        logging.enable_progress_bar()


class TrunkModelCache(ModelCache):
    """:class:`ensrm.bench.ModelCache` that also builds partially shared trunks of the base encoder."""

    def trunk_checkpoint(self, members: int, member_layers: int, pooling: str = "mean", seed: int = 0,
                         perturb: float = 1e-3) -> Path:
        """A partially shared trunk (:mod:`ensrm.models.trunk`) of the base encoder: ``members`` members, each with
        its own copy of the last ``member_layers`` layers (the base's, plus ``perturb`` weight noise, so no
        two towers hold identical weights) and a random head. Trained values would cost the same."""
        out = self.root / f"trunk-{_key(self.base, members, member_layers, pooling, seed, perturb)}"
        if (out / "config.json").is_file():
            return out
        import torch
        import transformers

        from ensrm.models.trunk import PartialTrunk, save_trunk

        generator = torch.Generator().manual_seed(seed)
        with _quiet_transformers():  # a classifier checkpoint loads as its encoder: the head is left out
            base = transformers.AutoModel.from_pretrained(self.checkpoint, dtype=torch.float32)
        hidden = base.config.hidden_size
        trunk = PartialTrunk.from_base(base, members=members, member_layers=member_layers, pooling=pooling,
                                       weight=0.05 * torch.randn(members, hidden, generator=generator),
                                       bias=torch.zeros(members))
        with torch.no_grad():
            for param in trunk.towers.parameters():
                param.add_(perturb * torch.randn(param.shape, generator=generator))
        tmp = out.with_name(out.name + ".tmp")
        with _quiet_transformers():
            save_trunk(trunk, transformers.AutoTokenizer.from_pretrained(self.checkpoint), tmp)
        tmp.rename(out)
        return out

    def trunk_bundle(self, members: int, member_layers: int, pooling: str = "mean") -> Path:
        return self.bundle([self.trunk_checkpoint(members, member_layers, pooling)],
                           f"trunk-k{members}-m{member_layers}")



class TrunkBench(Bench):
    """:class:`ensrm.bench.Bench` with the ``trunk`` suite (not in the default run; needs no bundle)."""

    SUITES = Bench.SUITES + ("trunk",)
    BUNDLE_FREE_SUITES = ("trunk",)

    def __init__(self, bundle, checkpoint, cache_dir, config: TrunkConfig, progress=None):
        super().__init__(bundle, checkpoint, cache_dir, config, progress=progress)
        self.models = TrunkModelCache(self.checkpoint, cache_dir, max_length=max(config.target_length, 8),
                                      progress=progress)

    def suite_trunk(self) -> None:
        """The partially shared trunk (:mod:`ensrm.models.trunk`) against its member layers m, at the target shape.

        ``trunk_members`` members of the checkpoint's encoder for each m (default 0, 1, 2, L/2, L),
        each exported once (cached) and timed through the Scorer in fresh processes interleaved over
        rounds, then all in one process back to back; weights are the ONNX files' sizes, memory the
        process's peak RSS. Cost (seconds per 1000 sequences, weights, memory) is fitted linearly
        against m. Then, once, stacked ``[K, ...]`` weights as one batched product against K copies
        at the layers' matrix shapes (torch and onnxruntime), which is what the K-copies export form
        gives up.
        """
        import transformers

        c = self.config
        base = transformers.AutoConfig.from_pretrained(self.checkpoint)
        layers, members = base.num_hidden_layers, c.trunk_members
        values = trunk_member_layers(layers, c.trunk_member_layers)
        length = min(c.target_length, model_max_length(self.checkpoint))
        shape = [[c.target_batch, length]]
        self.say(f"trunk: K = {members}, m = {', '.join(map(str, values))} (exported once, cached)")
        bundles, errors = {}, {}
        for m in values:
            try:
                bundles[m] = self.models.trunk_bundle(members, m, c.trunk_pooling)
            except Exception as exc:  # noqa: BLE001 - one m that fails to export must not lose the others
                errors[m] = f"export failed: {type(exc).__name__}: {exc}"
        jobs = {f"trunk/m{m}": self.job_spec("ort", mode="scorer", bundle=str(b), shapes=shape)
                for m, b in bundles.items()}
        self.say(f"timing {len(jobs)} trunk bundles x {c.rounds} rounds")
        raw = interleave(jobs, c.rounds, progress=self.say) if jobs else {}
        paired = {}
        if len(bundles) > 1:
            self.say(f"trunk: m = {', '.join(map(str, bundles))} in one process, calls alternated")
            paired = run_job(self.job_spec("paired", bundles=[str(b) for b in bundles.values()], shape=shape[0],
                                       rounds=c.paired_rounds))
        ratios = dict(zip(bundles, paired.get("paired_ratio", []))) if "error" not in paired else {}
        rows = []
        for m in values:
            row = {"member_layers": m, "layers_run": layers + (members - 1) * m}
            if m in errors:
                rows.append({**row, "error": errors[m]})
                continue
            bundle = bundles[m]
            timed = pooled_shape(raw[f"trunk/m{m}"])
            spec = load_spec(bundle, verify="size")
            row.update(timed)
            row.update(bundle=str(bundle), spec_member_layers=spec.member_layers, num_heads=spec.num_heads,
                       onnx_mb=onnx_size_mb(bundle, "model.onnx"), cpu_onnx_mb=onnx_size_mb(bundle, "model.cpu.onnx"),
                       bundle_mb=dir_size_mb([bundle]), paired_ratio=ratios.get(m))
            if "seq_per_s" in timed:
                row["s_per_1000_seq"] = 1000.0 / timed["seq_per_s"]
            rows.append(row)
        ok = [r for r in rows if "error" not in r and "s_per_1000_seq" in r]
        fit = {key: linear_fit([r["member_layers"] for r in ok if r.get(key) is not None],
                               [r[key] for r in ok if r.get(key) is not None])
               for key in ("s_per_1000_seq", "onnx_mb", "cpu_onnx_mb", "rss_model_mb")}
        time_fit = fit["s_per_1000_seq"]
        if time_fit["slope"] is not None and time_fit["intercept"]:
            # one member layer adds K - 1 layers to every forward; with all cost in the layers, slope
            # / (intercept / L) would be K - 1 (embeddings, pooling and heads make it a little less)
            time_fit["slope_in_layers"] = time_fit["slope"] * layers / time_fit["intercept"]
            time_fit["slope_in_layers_if_only_layers_cost"] = members - 1
        tokens = c.target_batch * length
        hidden, inner = base.hidden_size, getattr(base, "intermediate_size", 4 * base.hidden_size)
        self.say(f"trunk: stacked [K, ...] weights as batched products vs K copies, {members} x {tokens} tokens")
        stacked = run_job(self.job_spec("stacked_matmul", members=members, tokens=tokens,
                                        shapes=[[hidden, hidden], [hidden, inner], [inner, hidden]],
                                        rounds=max(c.rounds, 2), repeats=1,
                                        min_time=c.stacked_matmul_min_time / max(c.rounds, 2)), worker=WORKER)
        self.results["trunk"] = {
            "checkpoint": str(self.checkpoint), "model_type": base.model_type, "layers": layers,
            "hidden_size": hidden, "intermediate_size": inner, "members": members, "pooling": c.trunk_pooling,
            "batch": c.target_batch, "length": length, "rounds": c.rounds, "paired_rounds": c.paired_rounds,
            "member_layer_values": values, "rows": rows, "fit": fit,
            "paired": {k: v for k, v in paired.items() if k != "times"} if paired else None,
            "stacked_matmul": stacked,
            "note": (f"members: the base model's own last m layers (member 0) and copies of them with 1e-3 weight "
                     f"noise (members 1..{members - 1}), random heads, {c.trunk_pooling} pooling; trained values "
                     "cost the same. The fp32 Scorer runs the bundle's model.cpu.onnx (onnxruntime's fused CPU "
                     "graph) where there is one; onnx_mb is model.onnx (+ .data), the weights essentially.")}



def _fit_text(fit: dict | None, unit: str, digits: int = 3) -> str:
    if not fit or fit.get("slope") is None:
        return "n/a (fewer than two points)"
    return (f"{fit['slope']:.{digits}g} {unit} per member layer, intercept {fit['intercept']:.{digits}g} {unit}, "
            f"R^2 = {fit['r2']:.4f}")


def trunk_markdown(trunk: dict | None) -> list[str]:
    """The trunk suite: cost per member-layer count m, the linear fits, and stacked weights vs K copies."""
    if not trunk:
        return []
    k = trunk["members"]
    lines = ["", f"Partially shared trunk, K = {k} members of {trunk['model_type']} ({trunk['layers']} layers, hidden "
             f"{trunk['hidden_size']}), {trunk['pooling']} pooling, batch {trunk['batch']} x {trunk['length']} "
             f"tokens, fp32 Scorer, median of {trunk['rounds']} round(s) in fresh processes; paired: time over "
             f"m = {trunk['member_layer_values'][0]}'s, {trunk['paired_rounds']} back-to-back rounds in one process. "
             f"{trunk['note']}", "",
             "| m | layers run | seq/s | s / 1000 seq | paired time ratio | model.onnx (MiB) | model.cpu.onnx (MiB) "
             "| model memory (MiB) | peak RSS (MiB) |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    for row in trunk["rows"]:
        if "error" in row:
            lines.append(f"| {row['member_layers']} | {row['layers_run']} | error: {row['error']} | | | | | | |")
            continue
        lines.append(f"| {row['member_layers']} | {row['layers_run']} | {or_na(row.get('seq_per_s'), '.1f')} | "
                     f"{or_na(row.get('s_per_1000_seq'), '.2f')} | {or_na(row.get('paired_ratio'), '.3f')} | "
                     f"{or_na(row.get('onnx_mb'), '.1f')} | {or_na(row.get('cpu_onnx_mb'), '.1f')} | "
                     f"{or_na(row.get('rss_model_mb'), '.0f')} | {or_na(row.get('rss_peak_mb'), '.0f')} |")
    fit = trunk["fit"]
    time_fit = fit.get("s_per_1000_seq") or {}
    layers = ""
    if time_fit.get("slope_in_layers") is not None:
        layers = (f" (one member layer costs {time_fit['slope_in_layers']:.2f} of the m = 0 model's per-layer "
                  f"time; {k - 1} if all time were in the layers)")
    lines += ["", "Linear fit against m (least squares):", "",
              f"- time: {_fit_text(time_fit, 's / 1000 seq')}{layers}",
              f"- weights (model.onnx): {_fit_text(fit.get('onnx_mb'), 'MiB')}",
              f"- model memory (peak RSS - runtime): {_fit_text(fit.get('rss_model_mb'), 'MiB')}"]
    stacked = trunk.get("stacked_matmul") or {}
    if "error" in stacked:
        lines += ["", f"Stacked weights vs K copies: error: {stacked['error']}"]
    elif stacked.get("shapes"):
        lines += ["", f"Stacked [K, ...] weights as one batched product vs K copies, K = {stacked['members']}, "
                  f"{stacked['tokens']} tokens per member (ms per K products, median; ratio > 1: batched is faster):",
                  "", "| k -> n | torch.bmm | K x torch.mm | copies / bmm | ORT 3-D MatMul | K x ORT MatMul "
                  "| copies / batched |", "|---|---:|---:|---:|---:|---:|---:|"]
        for row in stacked["shapes"]:
            cases = row["cases"]
            lines.append(f"| {row['k']} -> {row['n']} | {cases['torch_bmm']['median_s'] * 1e3:.2f} | "
                         f"{cases['torch_mm_copies']['median_s'] * 1e3:.2f} | {row['torch_copies_over_bmm']:.3f} | "
                         f"{cases['ort_batched_matmul']['median_s'] * 1e3:.2f} | "
                         f"{cases['ort_matmul_copies']['median_s'] * 1e3:.2f} | {row['ort_copies_over_batched']:.3f} |")
    return lines


def plot_trunk(report: dict, path: Path) -> None:
    """Time and memory against member layers m with their fits, and batched products against K copies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trunk = report["results"]["trunk"]
    rows = [r for r in trunk["rows"] if "error" not in r and r.get("s_per_1000_seq") is not None]
    ms = np.array([r["member_layers"] for r in rows], dtype=float)
    line = np.linspace(0, max(trunk["member_layer_values"]), 50)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))

    def with_fit(ax, key, label, style):
        fit = trunk["fit"].get(key) or {}
        values = [r.get(key) for r in rows]
        if not rows or any(v is None for v in values):
            return
        ax.plot(ms, values, style, label=label)
        if fit.get("slope") is not None:
            ax.plot(line, fit["slope"] * line + fit["intercept"], "--", color="gray", linewidth=1,
                    label=f"fit: {fit['slope']:.3g} m + {fit['intercept']:.3g}, R^2 {fit['r2']:.3f}")

    with_fit(axes[0], "s_per_1000_seq", "measured", "o")
    axes[0].set_ylabel("seconds per 1000 sequences")
    axes[0].set_title(f"time vs member layers (K = {trunk['members']})")
    with_fit(axes[1], "onnx_mb", "weights (model.onnx)", "o")
    with_fit(axes[1], "rss_model_mb", "model memory (peak RSS - runtime)", "s")
    axes[1].set_ylabel("MiB")
    axes[1].set_title("memory vs member layers")
    for ax in axes[:2]:
        ax.set_xlabel(f"member layers m (0 = multi-head, {trunk['layers']} = full ensemble)")
        ax.set_xticks(trunk["member_layer_values"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    stacked = trunk.get("stacked_matmul") or {}
    if stacked.get("shapes"):
        labels = [f"{r['k']}->{r['n']}" for r in stacked["shapes"]]
        x = np.arange(len(labels))
        axes[2].bar(x - 0.2, [r["torch_copies_over_bmm"] for r in stacked["shapes"]], 0.4,
                    label="torch: K x mm / bmm")
        axes[2].bar(x + 0.2, [r["ort_copies_over_batched"] for r in stacked["shapes"]], 0.4,
                    label="onnxruntime: K x MatMul / 3-D MatMul")
        axes[2].axhline(1.0, color="gray", linewidth=1)
        axes[2].set_xticks(x, labels)
        axes[2].legend(fontsize=8)
    axes[2].set_ylabel("time of K copies / batched (> 1: batched faster)")
    axes[2].set_title(f"stacked weights vs K copies, {stacked.get('tokens')} tokens")
    cfg = report.get("config", {})
    fig.suptitle(f"partial trunk: {trunk['model_type']} {trunk['layers']} layers, K = {trunk['members']}, random "
                 f"heads; {report['machine']['cpu']} ({report['machine']['cores']} cores), batch "
                 f"{cfg.get('target_batch')} x {trunk['length']} tokens", fontsize=10)
    save_figure(fig, path, plt)


