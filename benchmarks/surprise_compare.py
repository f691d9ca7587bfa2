"""polyrec's svd / svdpp against scikit-surprise's SVD / SVDpp on the same k folds: RMSE, MAE and fit time.

What is compared
----------------
For every fold f of `--folds` (default 5), both libraries see exactly the same rows:

* polyrec prepares the dataset with ``data.split=kfold, data.folds=K, data.fold=f, data.split_seed=S``
  (polyrec.data.split.kfold_split: a seeded round-robin fold assignment; fold f tests; a seeded
  ``data.ratios[1]`` = 10% of the other folds validates, for early stopping; the rest trains) and trains
  ``svd`` / ``svdpp`` with the one Trainer (``train_run``), the rating as a regression task (MSE).
* Surprise reads the raw rows polyrec wrote for that fold (the cache entry's ``raw-train.parquet`` and
  ``raw-test.parquet``: user_id, item_id, rating) and fits on the *same training rows* (the validation rows
  are left out on both sides, so neither sees more data; ``--surprise-train train+val`` gives Surprise the
  whole k-1 folds, its own benchmark's protocol, for reference).
  Its test predictions are clipped to the rating scale, as ``algo.test`` does by default.
* The fold assignment actually used (user_id, item_id, fold: each fold's test rows) is written to
  ``OUT/folds.csv`` with its sha256 in the JSON, so anyone can rerun Surprise (or anything else) on it.

Fit time: seconds inside ``algo.fit(trainset)`` for Surprise (trainset built beforehand, not counted);
polyrec's ``train_seconds`` (the training loop *including* its per-epoch validation pass and best-weights
copy; data preparation and test evaluation not counted). Both single-threaded (Surprise is; polyrec runs
with ``train.threads=1``). RMSE / MAE over the test fold's rows (polyrec's metrics.json ``test/rating``;
Surprise's ``accuracy.rmse/mae``).

Usage (the command of docs/results/rating-surprise)::

    POLYREC_DATA=... python benchmarks/surprise_compare.py --dataset movielens-100k --models svd,svdpp \\
        --out /tmp/rating-surprise/ml-100k --set train.optimizer=sgd --set train.lr=0.5 --set train.batch_size=256

Needs ``pip install -e ".[bench]"`` (scikit-surprise 1.1.5).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

SURPRISE = {"svd": "SVD", "svdpp": "SVDpp"}
# Surprise's defaults, written out (SVD and SVDpp share them except n_factors / n_epochs for SVDpp)
SURPRISE_PARAMS = {"svd": {"n_factors": 100, "n_epochs": 20, "lr_all": 0.005, "reg_all": 0.02, "init_std_dev": 0.1},
                   "svdpp": {"n_factors": 20, "n_epochs": 20, "lr_all": 0.007, "reg_all": 0.02, "init_std_dev": 0.1}}
# polyrec's settings that mirror Surprise's model (the optimiser settings come from --set, chosen on validation)
POLYREC_MODEL = {"svd": {"embed_dim": 100, "reg": 0.02, "init_std": 0.1},
                 "svdpp": {"embed_dim": 20, "reg": 0.02, "init_std": 0.1}}


def fold_config(dataset: str, model: str, folds: int, fold: int, split_seed: int, sets: list[str]) -> Any:
    from polyrec.config import load_config

    base = {"data": {"dataset": dataset, "tasks": [{"name": "rating", "type": "regression"}], "split": "kfold",
                     "folds": folds, "fold": fold, "split_seed": split_seed},
            "model": {"name": model, **POLYREC_MODEL[model]},
            "train": {"monitor": "rating/rmse", "oov_dropout": 0.0, "threads": 1, "seed": fold,
                      "epochs": 40, "patience": 4}}
    return load_config(base=base, overrides=sets)


def run_polyrec(cfg: Any, run_dir: Path) -> dict[str, Any]:
    from polyrec.runs import train_run

    result = train_run(cfg, run_dir, log=lambda s: None)
    m = result.metrics
    rating = m["test"]["heads"]["rating"]  # the whole test fold (not a scenario cell)
    return {"rmse": rating["rmse"], "mae": rating["mae"], "fit_s": m["train_seconds"],
            "best_epoch": m["best_epoch"], "epochs_run": m["epochs_run"]}


def run_surprise(model: str, train: Any, test: Any, seed: int) -> dict[str, Any]:
    import surprise

    lo, hi = float(train["rating"].min()), float(train["rating"].max())
    data = surprise.Dataset.load_from_df(train[["user_id", "item_id", "rating"]], surprise.Reader(rating_scale=(lo, hi)))
    trainset = data.build_full_trainset()
    algo = getattr(surprise, SURPRISE[model])(random_state=seed, **SURPRISE_PARAMS[model])
    t0 = time.perf_counter()
    algo.fit(trainset)
    fit_s = time.perf_counter() - t0
    preds = algo.test(list(zip(test["user_id"], test["item_id"], test["rating"].astype(float))))
    return {"rmse": surprise.accuracy.rmse(preds, verbose=False), "mae": surprise.accuracy.mae(preds, verbose=False),
            "fit_s": fit_s}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="movielens-100k")
    ap.add_argument("--models", default="svd", help="comma list of svd, svdpp")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--only-folds", default=None, help="comma list: run only these folds (for a quick look)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="polyrec config override, e.g. train.lr=0.5")
    ap.add_argument("--surprise-train", choices=["train", "train+val"], default="train")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import pandas as pd

    from polyrec.data.prepare import prepare

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in SURPRISE]
    if bad:
        print(f"error: unknown model {bad[0]!r}; use {', '.join(SURPRISE)}", file=sys.stderr)
        return 2
    folds = [int(f) for f in args.only_folds.split(",")] if args.only_folds else list(range(args.folds))
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"dataset": args.dataset, "folds": args.folds, "split_seed": args.split_seed,
                               "polyrec_set": args.sets, "surprise_train": args.surprise_train,
                               "surprise_params": {m: SURPRISE_PARAMS[m] for m in models},
                               "polyrec_model": {m: POLYREC_MODEL[m] for m in models}, "per_fold": []}
    assignment = []
    for f in folds:
        cfg = fold_config(args.dataset, models[0], args.folds, f, args.split_seed, args.sets)
        prepared = prepare(cfg.data, seed=cfg.train.seed, log=lambda s: None)
        cols = ["user_id", "item_id", "rating"]
        raw = {s: pd.read_parquet(prepared.raw_split_path(s), columns=cols) for s in ("train", "val", "test")}
        assignment.append(raw["test"][["user_id", "item_id"]].assign(fold=f))
        s_train = pd.concat([raw["train"], raw["val"]]) if args.surprise_train == "train+val" else raw["train"]
        for model in models:
            cfg = fold_config(args.dataset, model, args.folds, f, args.split_seed, args.sets)
            ours = run_polyrec(cfg, args.out / "runs" / f"{model}-fold{f}")
            theirs = run_surprise(model, s_train, raw["test"], seed=f)
            row = {"fold": f, "model": model, "n_train": len(raw["train"]), "n_val": len(raw["val"]),
                   "n_test": len(raw["test"]), "polyrec": ours, "surprise": theirs}
            results["per_fold"].append(row)
            print(f"fold {f} {model:6s} polyrec RMSE {ours['rmse']:.4f} MAE {ours['mae']:.4f} fit {ours['fit_s']:6.1f}s "
                  f"(best epoch {ours['best_epoch']}) | surprise RMSE {theirs['rmse']:.4f} MAE {theirs['mae']:.4f} "
                  f"fit {theirs['fit_s']:6.1f}s", flush=True)
    folds_csv = args.out / "folds.csv"
    pd.concat(assignment).sort_values(["fold", "user_id", "item_id"]).to_csv(folds_csv, index=False)
    results["folds_csv_sha256"] = hashlib.sha256(folds_csv.read_bytes()).hexdigest()
    summary = {}
    for model in models:
        rows = [r for r in results["per_fold"] if r["model"] == model]
        s = {side: {k: statistics.mean(r[side][k] for r in rows) for k in ("rmse", "mae", "fit_s")}
             for side in ("polyrec", "surprise")}
        s["rmse_gap"] = s["polyrec"]["rmse"] - s["surprise"]["rmse"]
        s["fit_ratio_surprise_over_polyrec"] = s["surprise"]["fit_s"] / s["polyrec"]["fit_s"]
        summary[model] = s
        print(f"mean over {len(rows)} folds, {model}: polyrec RMSE {s['polyrec']['rmse']:.4f} MAE "
              f"{s['polyrec']['mae']:.4f} fit {s['polyrec']['fit_s']:.1f}s | surprise RMSE {s['surprise']['rmse']:.4f} "
              f"MAE {s['surprise']['mae']:.4f} fit {s['surprise']['fit_s']:.1f}s | RMSE gap {s['rmse_gap']:+.4f}, "
              f"fit time surprise/polyrec {s['fit_ratio_surprise_over_polyrec']:.2f}x")
    results["mean"] = summary
    results["load_average_at_end"] = os.getloadavg()
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out / 'results.json'} and {folds_csv} (sha256 {results['folds_csv_sha256'][:16]}...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
