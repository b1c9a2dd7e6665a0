"""Portable ``model.onnx`` against the fused ``model.cpu.onnx`` through ``Scorer``, with ``ensrm bench``'s machinery.

Each configuration is an ``ort`` worker job (:mod:`ensrm.bench.worker`: a fresh process, a
``Scorer`` on the bundle, random ids) run round-robin with rotating order
(:func:`ensrm.bench.harness.interleave`); the portable side is the same bundle with the fused
graph taken out of its manifest (``--portable``, made here when absent), so both sides load
through ``Scorer`` the way a user's does.

    python scripts/bench_fused.py --bundle bundles/default --rounds 6 --threads 1,2
    python scripts/bench_fused.py --realistic --rounds 4 --threads 1   # the latency suite's pairs

``--realistic`` times the latency suite's calls instead (:func:`ensrm.bench.suites.latency_calls`:
batches of 1, 2, 4, 8 generated pairs of 20-200 tokens, each padded to its own longest pair).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from ensrm.bench import interleave, load_average
from ensrm.bundle import load_spec, write_manifest


def portable_copy(bundle: Path, target: Path) -> Path:
    """``bundle`` without its fused graphs (files and manifest entries)."""
    if target.exists():
        return target
    spec = load_spec(bundle)
    shutil.copytree(bundle, target)
    for graph in spec.fused.values():
        for name in (graph.file, graph.file + ".data"):
            (target / name).unlink(missing_ok=True)
    write_manifest(target, spec.replace(fused={}))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    parser.add_argument("--portable", type=Path, default=None, help="default: BUNDLE-portable")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--latency-repeats", type=int, default=60)
    parser.add_argument("--realistic", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench_fused.json"))
    args = parser.parse_args()
    if args.realistic:
        return realistic(args)
    if not load_spec(args.bundle, verify="size").fused:
        raise SystemExit(f"{args.bundle} has no fused graph (export it with cpu_graph=True)")
    portable = portable_copy(args.bundle, args.portable or args.bundle.with_name(args.bundle.name + "-portable"))
    jobs = {}
    for t in [int(x) for x in args.threads.split(",")]:
        for name, bundle in (("portable", portable), ("fused", args.bundle)):
            jobs[f"t{t}/{name}"] = {"kind": "ort", "mode": "scorer", "bundle": str(bundle), "threads": t,
                                    "warmup": 1, "repeats": args.repeats, "shapes": [[args.batch, args.length]],
                                    "latency": {"length": args.length, "repeats": args.latency_repeats}}
    before = load_average()
    raw = interleave(jobs, args.rounds, progress=print)
    after = load_average()
    out = {"load_average_start": before, "load_average_end": after, "rounds": args.rounds, "results": {}}
    for name, runs in raw.items():
        bad = [r["error"] for r in runs if "error" in r]
        if bad:
            raise SystemExit(f"{name}: {bad[0]}")
        batch = [t for r in runs for t in r["shapes"][0]["times"]]
        lat = [t for r in runs for t in r["latency"]["times"]]
        out["results"][name] = {"batch_median_s": float(np.median(batch)), "batch1_p50_s": float(np.median(lat)),
                                "batch1_p99_s": float(np.percentile(lat, 99)),
                                "per_round_batch_median_s": [float(np.median(r["shapes"][0]["times"])) for r in runs]}
    for t in sorted({k.split("/")[0] for k in out["results"]}):
        p, f = out["results"][f"{t}/portable"], out["results"][f"{t}/fused"]
        ratios = np.array(f["per_round_batch_median_s"]) / np.array(p["per_round_batch_median_s"])
        print(f"{t}: {args.batch}x{args.length} portable {p['batch_median_s'] * 1e3:.0f} ms, fused "
              f"{f['batch_median_s'] * 1e3:.0f} ms (per-round ratio median {np.median(ratios):.3f}); batch 1 x "
              f"{args.length} p50/p99 portable {p['batch1_p50_s'] * 1e3:.1f}/{p['batch1_p99_s'] * 1e3:.1f} ms, "
              f"fused {f['batch1_p50_s'] * 1e3:.1f}/{f['batch1_p99_s'] * 1e3:.1f} ms")
        out["results"][f"{t}/ratio"] = float(np.median(ratios))
    print("load average", before, "->", after)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))


def realistic(args) -> None:
    from ensrm.bench import BenchConfig, latency_calls

    spec = load_spec(args.bundle, verify="size")
    portable = portable_copy(args.bundle, args.portable or args.bundle.with_name(args.bundle.name + "-portable"))
    calls, pairs = latency_calls(args.bundle, spec, BenchConfig())
    jobs = {f"t{t}/{name}": {"kind": "ort", "mode": "scorer", "bundle": str(bundle), "threads": t,
                             "latency_calls": {"calls": calls, "repeats": 50, "max_s": 5.0}}
            for t in [int(x) for x in args.threads.split(",")]
            for name, bundle in (("portable", portable), ("fused", args.bundle))}
    before = load_average()
    raw = interleave(jobs, args.rounds, progress=print)
    print("pairs:", pairs, "load average", before, "->", load_average())
    for name, runs in raw.items():
        rows = []
        for i, group in enumerate(calls):
            wall = [t for r in runs for t in r["latency_calls"][i]["times"]]
            cpu = [t for r in runs for t in r["latency_calls"][i]["cpu_times"]]
            rows.append(f"b{group['batch']} p50 {np.median(wall) * 1e3:.1f} ms p99 {np.percentile(wall, 99) * 1e3:.1f} "
                        f"cpu {np.median(cpu) * 1e3:.1f} ms")
        print(f"{name}: " + "; ".join(rows))


if __name__ == "__main__":
    main()
