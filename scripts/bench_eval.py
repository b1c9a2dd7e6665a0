"""``ensrm eval`` of N pairs against scoring its 2N texts alone, interleaved, same process and scorer settings.

Each round times, in alternating order:

- **score**: open a ``Scorer`` and ``score_texts`` the 2N (prompt, response) texts (chosen then rejected);
- **eval**: :func:`ensrm.evaluate.evaluate_file` on the N pairs: read the JSONL, open the scorer, score,
  every statistic with 1000 bootstrap resamples, a filter chosen to keep ``--keep`` of the pairs,
  the Markdown, the JSON and the four PNG plots (``ensrm eval ... --write-filter F --keep 0.9``).

The pairs are held-out synthetic pairs (``ensrm.data.synthetic``, seed distinct from the default
model's training seed 0 and reference seed 1). Writes a JSON of every round and prints the medians.

    python scripts/bench_eval.py --bundle bundles/default --pairs 2000 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from ensrm.data.synthetic import generate_preferences
from ensrm.evaluate import evaluate_file, read_pairs
from ensrm.jsonl import write_records
from ensrm.runtime.config import ScorerConfig
from ensrm.runtime.scorer import Scorer


def synthetic_pairs(path: Path, n: int, seed: int) -> Path:
    records = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"], "subset": r["aspect"]}
               for r in generate_preferences(n, seed=seed)]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_records(path, records)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=2026, help="synthetic pairs' seed (training used 0)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--keep", type=float, default=0.9, help="the eval also chooses a filter keeping this share")
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench_eval"))
    args = parser.parse_args()
    path = synthetic_pairs(args.out / "pairs.jsonl", args.pairs, args.seed)
    pairs = read_pairs(path)
    config = ScorerConfig(args.bundle, threads=args.threads)

    def score() -> float:
        t0 = time.perf_counter()
        Scorer.from_config(config).score_texts(pairs.prompts + pairs.prompts, pairs.chosen + pairs.rejected)
        return time.perf_counter() - t0

    def evaluate() -> float:
        t0 = time.perf_counter()
        evaluate_file(config, path, args.out / "report", write_filter=args.out / "filter.json", keep=args.keep)
        return time.perf_counter() - t0

    # warm the page cache (bundle, tokenizer) once, untimed
    Scorer.from_config(config).score_texts(pairs.prompts[:32], pairs.chosen[:32])
    rounds = []
    for r in range(args.rounds):
        order = [("score", score), ("eval", evaluate)] if r % 2 == 0 else [("eval", evaluate), ("score", score)]
        times = {name: run() for name, run in order}
        times["ratio"] = times["eval"] / times["score"]
        rounds.append(times)
        print(f"round {r + 1}: score {times['score']:.1f} s, eval {times['eval']:.1f} s, ratio {times['ratio']:.3f}",
              flush=True)
    summary = {name: statistics.median(t[name] for t in rounds) for name in ("score", "eval", "ratio")}
    result = {"bundle": str(args.bundle), "pairs": args.pairs, "texts": 2 * args.pairs, "threads": args.threads,
              "rounds": rounds, "median": summary}
    (args.out / "bench_eval.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"median: score {summary['score']:.1f} s, eval {summary['eval']:.1f} s, "
          f"eval / score {summary['ratio']:.3f} (per-round ratios {[round(t['ratio'], 3) for t in rounds]})")


if __name__ == "__main__":
    main()
