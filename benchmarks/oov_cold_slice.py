"""How should the out-of-vocabulary row be trained? min_freq for the id fields, measured on cold rows.

With min_freq 1 every training id gets its own row and the OOV row is never trained: a test row whose
user or item never occurred in training is scored through an untrained (random) embedding. With
min_freq k, ids seen fewer than k times in training share the OOV row, which then learns what a rare
id looks like; `train.oov_dropout` p instead replaces a random share p of the training ids by the OOV id,
which trains the OOV rows of every field (users included, where no id is rare). This script trains one model
per (min_freq, oov_dropout) variant on MovieLens-1M (the recipe's split and
schema, min_freq changed on user_id and item_id only) and reports, on the test split:

  * all rows: AUC and LogLoss per task;
  * the cold slice (test rows whose item_id or user_id does not occur in the training split): the row
    count, AUC, LogLoss, and the mean predicted probability against the observed positive rate;
  * simulated cold start: every test row again with its user id (new_user), or its user and item ids
    (new_user_item), replaced by ids never seen, so the OOV rows score them. A trained OOV row keeps the
    mean prediction near the positive rate and some AUC from the other features; an untrained one does not.

Usage:
  POLYREC_DATA=/path/to/data python benchmarks/oov_cold_slice.py [--variants 1/0,2/0,3/0,1/0.02] [--model mmoe]
      [--seed 0] [--lr 0.003] [--out DIR] [--json-out FILE]
Trainings stop early on validation (patience 2, epoch cap 30). Run it alone on the machine: it is CPU heavy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from polyrec.config import load_config
from polyrec.metrics.functions import auc, logloss
from polyrec.data.prepare import get_recipe, prepare
from polyrec.serve.predict import predict_table
from polyrec.runs import train_run

ID_FIELDS = ("user_id", "item_id")


def schema_with_min_freq(dataset: str, k: int, folder: Path) -> Path:
    raw = get_recipe(dataset).schema().model_dump(mode="json")
    for f in raw["features"]:
        if f["name"] in ID_FIELDS:
            f["min_freq"] = k
    path = folder / f"schema-min{k}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def slice_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    return {"rows": int(len(labels)), "auc": auc(labels, probs), "logloss": logloss(labels, probs),
            "mean_p": float(probs.mean()) if len(probs) else float("nan"),
            "positive_rate": float(labels.mean()) if len(labels) else float("nan")}


def run(dataset: str, k: int, rate: float, args: argparse.Namespace, folder: Path) -> dict[str, object]:
    overrides = [f"train.oov_dropout={rate}", f"data.dataset={dataset}", f"data.schema_file={schema_with_min_freq(dataset, k, folder)}",
                 f"model.name={args.model}", f"train.lr={args.lr}", f"train.seed={args.seed}", "train.epochs=30",
                 "train.patience=2", "train.batch_size=2048", "train.progress=false", "train.tensorboard=false",
                 "train.threads=1"]
    cfg = load_config(None, overrides)
    run_dir = Path(args.out) / (f"min_freq-{k}" + (f"-oov_dropout-{rate:g}" if rate else ""))
    result = train_run(cfg, run_dir, resume=(run_dir / "checkpoint.pt").exists() and not (run_dir / "metrics.json").exists(),
                       log=lambda m: None) if not (run_dir / "metrics.json").exists() else None
    metrics = json.loads((run_dir / "metrics.json").read_text()) if result is None else result.metrics
    data = prepare(cfg.data, seed=args.seed, download=False, log=lambda m: None)
    train = pq.read_table(data.raw_split_path("train"), columns=list(ID_FIELDS))
    test = pq.read_table(data.raw_split_path("test"))
    cold = np.zeros(test.num_rows, dtype=bool)
    for f in ID_FIELDS:
        seen = pc.unique(pc.cast(train[f], "string"))
        cold |= ~pc.is_in(pc.cast(test[f], "string"), value_set=seen).to_numpy(zero_copy_only=False)
    scores = predict_table(run_dir, test)
    # simulated cold start: the same test rows with the user id, or both ids, replaced by ids never seen
    unseen = pa.array([f"unseen-{i}" for i in range(test.num_rows)])  # (building the test input only)
    new_user = predict_table(run_dir, test.set_column(test.schema.get_field_index("user_id"), "user_id", unseen))
    both = test.set_column(test.schema.get_field_index("user_id"), "user_id", unseen)
    both = predict_table(run_dir, both.set_column(both.schema.get_field_index("item_id"), "item_id", unseen))
    out: dict[str, object] = {"min_freq": k, "oov_dropout": rate, "best_epoch": metrics["best_epoch"], "epochs_run": metrics["epochs_run"],
                              "vocab_rows": {f: None for f in ID_FIELDS}, "tasks": {}}
    for task in ("click", "like"):
        y = test[task].to_numpy(zero_copy_only=False).astype(np.float64)
        p = scores[task].to_numpy().astype(np.float64)
        out["tasks"][task] = {"all": slice_metrics(y, p), "cold": slice_metrics(y[cold], p[cold]),
                              "new_user": slice_metrics(y, new_user[task].to_numpy().astype(np.float64)),
                              "new_user_item": slice_metrics(y, both[task].to_numpy().astype(np.float64))}
    enc = json.loads((run_dir / "encoders.json").read_text())
    out["vocab_rows"] = {f: len(enc["vocabularies"][f]["tokens"]) + 2 for f in ID_FIELDS}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="movielens-1m")
    ap.add_argument("--variants", default="1/0,2/0,3/0,1/0.02",
                    help="min_freq/oov_dropout pairs: min_freq of user_id and item_id, train.oov_dropout")
    ap.add_argument("--model", default="mmoe")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=0.003)
    ap.add_argument("--out", default="runs/oov-cold-slice")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    rows = []
    schemas = Path(args.out) / "schemas"  # a stable path: an interrupted run resumes with the same config
    schemas.mkdir(parents=True, exist_ok=True)
    if True:
        for k, rate in ((int(a), float(b)) for a, b in (v.split("/") for v in args.variants.split(","))):
            rows.append(run(args.dataset, k, rate, args, schemas))
            r = rows[-1]
            print(f"min_freq {k}, oov_dropout {rate:g}: best epoch {r['best_epoch']} of {r['epochs_run']}, vocab rows {r['vocab_rows']}")
            for task, m in r["tasks"].items():
                for name, c in m.items():
                    print(f"  {task:6s} {name:14s} rows {c['rows']:7d}  AUC {c['auc']:.4f}  LogLoss {c['logloss']:.4f}  "
                          f"mean p {c['mean_p']:.3f} vs rate {c['positive_rate']:.3f}", flush=True)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps({"dataset": args.dataset, "model": args.model, "seed": args.seed,
                                                   "lr": args.lr, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
