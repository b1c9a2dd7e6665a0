"""Ray Data scoring vs in-process scoring, in one run: pairs/s and the overhead Ray adds.

Configurations, each over the same N pairs (the synthetic candidates of ``ensrm.data``):

- in-process ``Scorer.score_texts`` with 1 and with 2 intra-op threads;
- ``score_dataset`` on a local Ray with 2 CPUs, 1 actor and 2 actors, 1 thread each.

Ray's times are wall time from submitting the job to the last row, so they include
starting the actors and each actor's one-time bundle load. ``overhead`` is
``1 - ray_rate / in_process_rate`` at the same total threads (1 actor vs 1 thread,
2 actors vs 2 threads). Writes a JSON file and prints a Markdown table.

    python scripts/bench_ray.py --pairs 2000 --bundle bundles/default -o artifacts/bench_ray.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20_000)
    parser.add_argument("--bundle", type=Path, help="bundle to score with (default: ensrm demo's bundles/default, "
                                                    "built if absent)")
    parser.add_argument("--batch-size", type=int, default=32, help="pairs per model call")
    parser.add_argument("--ray-batch", type=int, default=512, help="rows per Ray batch (per actor call)")
    parser.add_argument("-o", "--output", type=Path, default=Path("artifacts/bench_ray.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import ray

    import ensrm
    from ensrm.data.synthetic import generate_candidates
    from ensrm.integrations.ray_data import score_dataset

    if args.bundle is None:
        from ensrm.demo import ensure_default_bundle

        args.bundle = ensure_default_bundle()
    per_prompt = 8
    rows = generate_candidates(-(-args.pairs // per_prompt), per_prompt, seed=3)[:args.pairs]
    prompts, responses = [r["prompt"] for r in rows], [r["response"] for r in rows]
    results = []

    for threads in (1, 2):
        scorer = ensrm.Scorer(args.bundle, threads=threads, verify="size")
        scorer.score_texts(prompts[:args.batch_size], responses[:args.batch_size])  # warm-up
        start = time.perf_counter()
        scorer.score_texts(prompts, responses, batch_size=args.batch_size)
        seconds = time.perf_counter() - start
        results.append({"config": f"in-process, {threads} thread{'s' * (threads > 1)}", "threads": threads,
                        "seconds": seconds, "pairs_per_s": len(rows) / seconds})
        print(results[-1], flush=True)
        del scorer

    temp = tempfile.mkdtemp(prefix="ensrm-bench-ray-", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        ds = ray.data.from_items(rows, override_num_blocks=16).materialize()  # in the object store beforehand
        for actors in (1, 2):
            start = time.perf_counter()
            scored = score_dataset(ds, args.bundle, concurrency=actors, num_cpus=1, threads=1,
                                   batch_size=args.ray_batch, model_batch_size=args.batch_size, verify="size")
            n = sum(batch.num_rows for batch in scored.iter_batches(batch_format="pyarrow", batch_size=None))
            seconds = time.perf_counter() - start
            assert n == len(rows), (n, len(rows))
            results.append({"config": f"Ray Data, {actors} actor{'s' * (actors > 1)} x 1 thread",
                            "threads": actors, "seconds": seconds, "pairs_per_s": n / seconds})
            print(results[-1], flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)

    in_process = {r["threads"]: r["pairs_per_s"] for r in results if r["config"].startswith("in-process")}
    for r in results:
        r["vs_in_process_same_threads"] = r["pairs_per_s"] / in_process[r["threads"]]
        r["overhead"] = 1 - r["vs_in_process_same_threads"]
    two_actors = results[-1]["pairs_per_s"] / in_process[2]
    report = {"pairs": len(rows), "bundle": str(args.bundle), "batch_size": args.batch_size,
              "ray_batch": args.ray_batch, "ray": ray.__version__, "cpus": os.cpu_count(),
              "machine": platform.processor() or platform.machine(), "load_average_at_end": os.getloadavg(),
              "results": results, "two_actors_vs_in_process_2_threads": two_actors,
              "target": ">= 0.85", "passed": two_actors >= 0.85}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\n{len(rows):,} pairs, {args.bundle}, load average at end {os.getloadavg()[0]:.1f}\n")
    print("| configuration | s | pairs/s | vs in-process, same threads |")
    print("| --- | --- | --- | --- |")
    for r in results:
        ratio = r["vs_in_process_same_threads"]
        print(f"| {r['config']} | {r['seconds']:.1f} | {r['pairs_per_s']:.1f} | {ratio:.2f} |")
    print(f"\n2 actors x 1 thread vs in-process 2 threads: {two_actors:.2f} (target >= 0.85: "
          f"{'pass' if two_actors >= 0.85 else 'FAIL'}); wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
