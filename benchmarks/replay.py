"""Continual re-training on MovieLens-1M, replayed slice by slice in time: frozen vs warm-started (vs retrained).

What is measured
----------------
The ratings (the movielens-1m recipe's joined rows: features, scenario = age bucket, tasks click/like) are
sorted by timestamp and cut into `--slices` consecutive slices of equal row counts (a day-by-day replay where
"a day" is 1/N of the log: ML-1M's ratings are so unevenly spread in time that calendar days would give empty
and huge slices alike). Each slice is written as a Parquet file and trained on as your own data (`data.files`
with the recipe's schema; a seeded random 85/10/5 split of the slice for early stopping).

- frozen: the run trained on slice 0 only;
- continual: slice k's run warm-starts from slice k-1's (`train.init_from`, polyrec.train.warmstart) and
  trains on slice k alone;
- full (with --full): a run from scratch on slices 0..k together.

Each model is then scored on the NEXT slice (k+1) as a whole, encoded by its own run's encoders (ids the
run never saw are its out-of-vocabulary rows). The table shows per evaluated slice the mean AUC over the
tasks (and per task with --per-task).

Usage:
  POLYREC_DATA=/path/to/data python benchmarks/replay.py [--slices 5] [--rows 200000] [--model mmoe]
      [--epochs 40] [--patience 3] [--threads 1] [--full] [--per-task] [--work DIR] [--json-out replay.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml


def slices(rows: int, n_slices: int, seed: int) -> tuple[list[pa.Table], dict[str, Any]]:
    """The recipe's joined ML-1M rows (a seeded sample of `rows`, 0 = all), in time order, cut into slices."""
    from polyrec.data.prepare import get_recipe
    from polyrec.settings import data_dir

    recipe = get_recipe("movielens-1m")
    table = recipe.load(recipe.locate(data_dir()), {}).table
    if rows and rows < table.num_rows:
        keep = np.sort(np.random.default_rng(seed).choice(table.num_rows, rows, replace=False))
        table = table.take(pa.array(keep))
    table = table.take(pc.sort_indices(table, [("timestamp", "ascending")]))
    cuts = np.linspace(0, table.num_rows, n_slices + 1).astype(int)
    return [table.slice(a, b - a) for a, b in zip(cuts[:-1], cuts[1:])], recipe.schema().model_dump(mode="json")


def config(path: Path, schema: Path, args: argparse.Namespace, init_from: Path | None = None):
    from polyrec.config import load_config

    return load_config(base={
        "data": {"files": {"path": str(path)}, "schema_file": str(schema), "split": "random",
                 "ratios": [0.85, 0.1, 0.05]},
        "model": {"name": args.model, "embed_dim": args.embed_dim},
        "train": {"epochs": args.epochs, "patience": args.patience, "batch_size": args.batch_size, "lr": args.lr,
                  "threads": args.threads, "seed": args.seed, "progress": False, "tensorboard": False,
                  "init_from": None if init_from is None else str(init_from)}})


def score(run_dir: Path, table: pa.Table) -> dict[str, float]:
    """Flat metrics of a finished run on a raw table, encoded by the run's own encoders."""
    from polyrec.data.batching import TensorTable
    from polyrec.metrics.report import flatten
    from polyrec.train.run import load_run
    from polyrec.train.trainer import evaluate_table

    run = load_run(run_dir)
    encoded = TensorTable(run.encoders.encode(table, what=f"slice for {run_dir.name}"))
    return flatten(evaluate_table(run.model, encoded, 16384, run.spec.scenario_names))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, default=5, help="consecutive time slices (>= 3)")
    ap.add_argument("--rows", type=int, default=200_000, help="seeded sample of the ratings (0 = all)")
    ap.add_argument("--model", default="mmoe")
    ap.add_argument("--embed-dim", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=40, help="epoch cap (early stopping on each slice's validation rows)")
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--full", action="store_true", help="also retrain from scratch on all slices so far")
    ap.add_argument("--per-task", action="store_true", help="AUC per task as well as the mean")
    ap.add_argument("--work", type=Path, default=None, help="folder for slices and runs (default: a temp dir)")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()
    if args.slices < 3:
        ap.error("--slices must be >= 3 (train on one, warm-start on at least one, evaluate on the next)")

    from polyrec.runs import train_run
    from polyrec.utils.io import atomic_write_text

    work = args.work or Path(tempfile.mkdtemp(prefix="polyrec-replay-"))
    if work.exists() and any(work.glob("run-*")):
        ap.error(f"--work {work} already holds replay runs: choose an empty folder")
    work.mkdir(parents=True, exist_ok=True)
    parts, schema = slices(args.rows, args.slices, args.seed)
    schema_path = work / "schema.yaml"
    schema_path.write_text(yaml.safe_dump(schema, sort_keys=False))
    paths = []
    for k, t in enumerate(parts):
        paths.append(work / f"slice{k}.parquet")
        pq.write_table(t, paths[-1])
    quiet = lambda *_: None  # noqa: E731
    tasks = [t["name"] for t in schema["tasks"]]
    keys = ["overall/mean_auc"] + ([f"{t}/auc" for t in tasks] if args.per_task else [])

    runs = {"frozen": work / "run-slice0"}
    train_run(config(paths[0], schema_path, args), runs["frozen"], log=quiet)
    previous = runs["frozen"]
    rows: list[dict[str, Any]] = []
    for k in range(1, args.slices - 1):
        warm = work / f"run-continual{k}"
        train_run(config(paths[k], schema_path, args, init_from=previous), warm, log=quiet)
        previous = warm
        compared = {"frozen": runs["frozen"], "continual": warm}
        if args.full:
            joined = work / f"slices0-{k}.parquet"
            pq.write_table(pa.concat_tables(parts[: k + 1]), joined)
            compared["full"] = work / f"run-full{k}"
            train_run(config(joined, schema_path, args), compared["full"], log=quiet)
        nxt = parts[k + 1]
        row: dict[str, Any] = {"trained_through": k, "evaluated_on": k + 1, "rows": nxt.num_rows}
        for name, run_dir in compared.items():
            m = score(run_dir, nxt)
            row.update({f"{name}:{key}": m.get(key, float("nan")) for key in keys})
        rows.append(row)
        print(json.dumps(row))

    names = ["frozen", "continual"] + (["full"] if args.full else [])
    header = ["slice"] + [f"{n} {key.replace('overall/', '')}" for n in names for key in keys]
    print("\n" + " | ".join(header))
    for row in rows:
        print(" | ".join([f"{row['evaluated_on']}"] + [f"{row[f'{n}:{key}']:.4f}" for n in names for key in keys]))
    mean = {n: float(np.mean([r[f"{n}:overall/mean_auc"] for r in rows])) for n in names}
    print("mean " + "  ".join(f"{n} {v:.4f}" for n, v in mean.items()))
    if args.json_out:
        atomic_write_text(args.json_out, json.dumps({"settings": vars(args) | {"work": str(work), "json_out": None},
                                                     "rows": rows, "mean": mean}, indent=1, default=str))


if __name__ == "__main__":
    main()
