"""Most-popular reference for the top-K benches: every user gets the items with the most training likes.

A trained top-K model that does not beat this has learned item popularity and nothing personal, so the
WAA-TA bench README reads its tables against it. Same data, split seeds, exclusions and metrics as the bench
(polyrec.topk.trainer.evaluate_topk with a precomputed score matrix); nothing is trained.

Usage:
  POLYREC_DATA=/path/to/data python benchmarks/topk_popularity.py [--dataset movielens-100k]
      [--splits random,temporal] [--seeds 0,1,2,3,4] [--ks 10,20,50] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch

from polyrec.config import load_config
from polyrec.topk.data import load_topk
from polyrec.topk.trainer import evaluate_topk


def popularity_scores(train_items: np.ndarray, train_likes: np.ndarray, n_users: int, n_items: int) -> torch.Tensor:
    """[n_users, n_items]: each item's training like count (+ a tie-break by interaction count), same for all."""
    likes = np.bincount(train_items, weights=train_likes, minlength=n_items)
    interactions = np.bincount(train_items, minlength=n_items)
    score = likes + interactions / (interactions.max() + 1.0)  # likes first, then interactions
    return torch.as_tensor(score, dtype=torch.float32).expand(n_users, n_items)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="movielens-100k")
    ap.add_argument("--splits", default="random,temporal")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--ks", default="10,20,50")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    results: dict[str, dict[str, list[float]]] = {}
    for split in args.splits.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            cfg = load_config(None, [f"data.dataset={args.dataset}", "data.tasks=[like,click]", f"data.split={split}",
                                     f"train.seed={seed}", "topk.kg=false"], base={"topk": {}})
            data = load_topk(cfg, log=lambda *_: None)
            train = data.splits["train"]
            scores = popularity_scores(train.item, train.labels[:, 0], data.n_users, data.n_items)
            out = evaluate_topk(None, data, "test", ks, scores=scores)  # type: ignore[arg-type]
            for task, metrics in out["heads"].items():
                for name, value in metrics.items():
                    results.setdefault(split, {}).setdefault(f"{task}/{name}", []).append(float(value))
    cols = [f"{t}/{m}@{k}" for t in ("like", "click") for m in ("recall", "ndcg") for k in ks]
    print(f"most-popular on {args.dataset} (test, mean ± std (ddof=1) over split seeds {args.seeds})")
    print("| split | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for split, metrics in results.items():
        cells = []
        for c in cols:
            v = metrics.get(c, [])
            cells.append(f"{statistics.fmean(v):.4f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.4f}" if v else "-")
        print(f"| {split} | " + " | ".join(cells) + " |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"args": vars(args), "test": results}, indent=1))


if __name__ == "__main__":
    main()
