"""Does the heads' disagreement on a comparison add to the margin itself? AUROC of ``margin_std`` within margin strata.

``ensrm eval`` reports the AUROC of ``margin_std`` (the std over heads of the heads' margins) and of a
small margin alone. The two are correlated (large margins come with large head spreads), so this
splits the pairs into quintiles of ``|objective margin|`` and reports, within each, how well
``margin_std`` tells the wrong pairs from the right ones. An AUROC above 0.5 inside every quintile
means the disagreement carries information the margin does not.

    python scripts/eval_strata.py --bundle bundles/default --pairs artifacts/bench_eval/pairs.jsonl
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from ensrm.evaluate import read_pairs, stats
from ensrm.evaluate.run import score_pairs
from ensrm.runtime.scorer import Scorer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="bundles/default")
    parser.add_argument("--pairs", default="artifacts/bench_eval/pairs.jsonl")
    parser.add_argument("--objective", default="uwo")
    parser.add_argument("--strata", type=int, default=5)
    args = parser.parse_args()
    chosen, rejected = score_pairs(Scorer(args.bundle), read_pairs(args.pairs))
    margin = chosen.objective(args.objective).astype(np.float64) - rejected.objective(args.objective)  # [n]
    spread = (chosen.heads.astype(np.float64) - rejected.heads).std(axis=1)  # [n] margin_std
    size = np.abs(margin)
    edges = np.quantile(size, np.linspace(0, 1, args.strata + 1)[1:-1])
    stratum = np.searchsorted(edges, size)
    rows = []
    for s in range(args.strata):
        members = stratum == s
        rows.append({"stratum": s + 1, "pairs": int(members.sum()), "wrong": int((margin[members] < 0).sum()),
                     "margin": [float(size[members].min()), float(size[members].max())],
                     "auroc_margin_std": stats.auroc_from_ranks(spread[members], margin[members])})
    result = {"objective": args.objective, "strata": rows,
              "corr_abs_margin_margin_std": float(np.corrcoef(size, spread)[0, 1]),
              "auroc_margin_std_overall": stats.auroc_from_ranks(spread, margin)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
