"""Precision benchmark: gate numbers and CPU throughput of fp32, fp16 and INT8 bundles.

Exports a reward model (default: the embedded MiniLM + 8 trained heads) with normalisation
on synthetic reference records, fp16 and static INT8 variants calibrated on synthetic
records, gated on held-out candidate pools; adds dynamic- and per-token-INT8 copies; then times batch 32 x
128 tokens on onnxruntime CPU, rounds interleaved so a busy machine slows all alike.

    python scripts/bench_precision.py --out /tmp/bench-prec            # ~5-10 min on 2 cores
    python scripts/bench_precision.py --checkpoint my-rm --out /tmp/b --threads 8
    # + static INT8 at other smoothing strengths:
    python scripts/bench_precision.py --out /tmp/b --smoothing-sweep off,0.5,0.7,0.9
    python scripts/bench_precision.py --out /tmp/b-mean --pooling mean --l2 0.1        # heads on mean-pooled states
    python scripts/bench_precision.py --out /tmp/b --rounding nearest                  # + INT8 without GPTQ
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _records(out: Path) -> dict[str, Path]:
    from ensrm.bench import precision_records
    from ensrm.data.synthetic import generate_references
    from ensrm.jsonl import write_records

    files = {"refs": out / "refs.jsonl", "calib": out / "calib.jsonl", "eval": out / "eval.jsonl"}
    write_records(files["refs"], generate_references(512, seed=11))
    calibration, evaluation = precision_records()  # evaluation: held-out best-of-16 pools
    write_records(files["calib"], calibration)
    write_records(files["eval"], evaluation)
    return files


def _time(backends: dict, feeds: dict, rounds: int) -> dict[str, float]:
    """Median seconds per batch of each backend, rounds interleaved."""
    times = {name: [] for name in backends}
    for backend in backends.values():
        backend.run(feeds)  # warm-up
    for _ in range(rounds):
        for name, backend in backends.items():
            start = time.perf_counter()
            backend.run(feeds)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _rejected_copy(bundle: Path, mode: str, calib: Path, target: Path, smoothing: float | None | str = "default",
                   rounding: str | None = None) -> Path:
    """Quantize again outside the bundle, so a rejected variant's speed can still be reported."""
    from ensrm.bundle import load_spec
    from ensrm.calibration.data import encoder_for, feed_batches, load_records, split_holdout
    from ensrm.calibration.int8 import DEFAULT_ROUNDING, quantize_int8

    spec = load_spec(bundle)
    batches = None
    if mode in ("static", "per-token"):
        records = split_holdout(load_records(calib, "calibration"))[0][:512]
        batches = [f for _, f in feed_batches(encoder_for(bundle, spec), records, 32)]
    options = {} if smoothing == "default" else {"smoothing": smoothing}  # None: no smoothing
    quantize_int8(bundle / "model.onnx", target, mode, batches, rounding=rounding or DEFAULT_ROUNDING, **options)
    return target


def _gate_file(bundle: Path, model: Path, eval_file: Path, threads: int) -> dict:
    """The INT8 gate's numbers for a graph outside the bundle, against the bundle's fp32."""
    from ensrm.bundle import load_spec
    from ensrm.calibration.data import encoder_for, load_records, score_records
    from ensrm.calibration.gate import DEFAULT_GATES
    from ensrm.calibration.variants import gate_variant
    from ensrm.runtime.onnxruntime_backend import OnnxRuntimeBackend

    spec, records = load_spec(bundle), load_records(eval_file, "evaluation")
    reference = score_records(OnnxRuntimeBackend(bundle / "model.onnx", threads=threads),
                              encoder_for(bundle, spec), records)
    return gate_variant(bundle, spec, model, records, reference, DEFAULT_GATES["int8"], threads)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="reward model checkpoint (default: build the embedded default)")
    parser.add_argument("--out", required=True, help="working directory (bundles, records, results)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--smoothing-sweep", default="",
                        help="comma-separated smoothing strengths (0-1, or 'off') to gate and time besides the default")
    parser.add_argument("--rounding", choices=["nearest"], help="also gate and time static INT8 with this rounding")
    parser.add_argument("--pooling", choices=["mean", "cls"],
                        help="build the default model with its heads on this pooling of MiniLM's states, "
                             "not BERT's pooler")
    parser.add_argument("--l2", type=float, default=1e-3, help="L2 of the default model's head fit (default 1e-3)")
    args = parser.parse_args(argv)

    from ensrm import Scorer
    from ensrm.calibration.gate import format_report
    from ensrm.calibration.variants import add_variants
    from ensrm.export.exporter import export_bundle

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.checkpoint and args.pooling:
        parser.error("--pooling and --l2 shape the default model; a --checkpoint is exported as it is")
    checkpoint = Path(args.checkpoint) if args.checkpoint else \
        out / f"default-rm-{args.pooling or 'pooler'}-l2{args.l2:g}"
    if not args.checkpoint and not (checkpoint / "ensrm_training.json").is_file():
        from ensrm.train.default import build_default_model

        build_default_model(checkpoint, pooling=args.pooling, l2=args.l2)
    heads = {"heads": checkpoint / "heads.safetensors", "pooling": args.pooling} if args.pooling else {}
    files = _records(out)
    bundle = out / "bundle"
    start = time.perf_counter()
    export_bundle([checkpoint], bundle, max_length=args.seq, overwrite=True, normalize_on=files["refs"],
                  precisions="fp16,int8", calibration=files["calib"], eval_on=files["eval"], threads=args.threads,
                  **heads)
    export_s = time.perf_counter() - start
    copies = {}
    for mode in ("dynamic", "per-token"):
        copies[mode] = out / f"bundle-{mode}"
        if copies[mode].exists():
            shutil.rmtree(copies[mode])
        shutil.copytree(bundle, copies[mode])
        add_variants(copies[mode], "int8", int8_mode=mode, eval_on=files["eval"], threads=args.threads,
                     calibration=files["calib"] if mode == "per-token" else None)

    from ensrm.bundle import load_spec
    from ensrm.runtime.onnxruntime_backend import OnnxRuntimeBackend

    results = {"machine": f"{os.cpu_count()} CPUs", "threads": args.threads, "pooling": args.pooling, "l2": args.l2,
               "batch": args.batch, "seq": args.seq, "export_seconds": export_s, "gates": {}, "accepted": {},
               "seconds_per_batch": {}}
    backends = {"fp32": Scorer(bundle, threads=args.threads, spinning=False).backend}
    for name, path in (("int8-static", bundle), ("int8-dynamic", copies["dynamic"]),
                       ("int8-per-token", copies["per-token"])):
        variant = load_spec(path).variants["int8"]
        results["gates"][name], results["accepted"][name] = variant.to_dict()["checks"], variant.accepted
        print(format_report(name, variant.checks))
        model = path / "model.int8.onnx" if variant.accepted else \
            _rejected_copy(bundle, name.split("-", 1)[1], files["calib"], out / f"{name}.rejected.onnx")
        backends[name] = OnnxRuntimeBackend(model, threads=args.threads, spinning=False)
    if args.rounding:
        name = f"int8-{args.rounding}"
        model = _rejected_copy(bundle, "static", files["calib"], out / f"{name}.onnx", rounding=args.rounding)
        results["gates"][name] = report = _gate_file(bundle, model, files["eval"], args.threads)
        results["accepted"][name] = report["passed"]
        print(format_report(name, report))
        backends[name] = OnnxRuntimeBackend(model, threads=args.threads, spinning=False)
    for text in (a.strip() for a in args.smoothing_sweep.split(",") if a.strip()):
        alpha = None if text == "off" else float(text)
        name = "int8-unsmoothed" if alpha is None else f"int8-a{alpha:g}"
        model = _rejected_copy(bundle, "static", files["calib"], out / f"{name}.onnx", smoothing=alpha)
        results["gates"][name] = report = _gate_file(bundle, model, files["eval"], args.threads)
        results["accepted"][name] = report["passed"]
        print(format_report(name, report))
        backends[name] = OnnxRuntimeBackend(model, threads=args.threads, spinning=False)
    fp16 = load_spec(bundle).variants["fp16"]
    results["gates"]["fp16"] = fp16.to_dict()["checks"]
    print(format_report("fp16", fp16.checks))

    spec = load_spec(bundle)
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, spec.vocab_size, size=(args.batch, args.seq))  # [batch, seq]
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if spec.uses_token_type_ids:
        feeds["token_type_ids"] = np.zeros_like(ids)
    seconds = _time(backends, feeds, args.rounds)
    results["seconds_per_batch"] = seconds
    print(f"\nonnxruntime CPU, {args.threads} threads, batch {args.batch} x {args.seq} tokens, "
          f"median of {args.rounds} interleaved rounds:")
    for name, s in seconds.items():
        verdict = "" if name == "fp32" else ("  gate passed" if results["accepted"][name] else "  gate FAILED")
        print(f"  {name:<13} {s * 1000:8.1f} ms/batch  {args.batch / s:7.1f} seq/s  "
              f"{seconds['fp32'] / s:4.2f}x fp32{verdict}")
    (out / "bench_precision.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
