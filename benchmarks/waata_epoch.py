"""Seconds per training epoch of WAA-TA on MovieLens-100K with its knowledge graph (issue target: < 60 s
on 2 CPU cores), split into training and the full-ranking validation that follows each epoch.

Runs the real training loop (polyrec.topk) for `--epochs` epochs on the random 60/20/20 split, with the
spec's MetaBalance, and prints per epoch: train seconds, samples/s, validation seconds, and the load
average (a shared machine slows every figure; the load tells how much). Also times kgat and mf for scale.

Usage:
  POLYREC_DATA=/path/to/data python benchmarks/waata_epoch.py [--threads 2] [--epochs 2]
      [--batch-size 1024] [--models waata,kgat,mf] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from polyrec.config import load_config
from polyrec.runs import train_run

TARGET_S = 60.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1024)  # the article's
    ap.add_argument("--models", default="waata,kgat,mf")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print(f"MovieLens-100K + KG, random 60/20/20, batch {args.batch_size}, {args.threads} threads, torch "
          f"{torch.__version__}, {os.cpu_count()} CPUs; target for waata: train epoch < {TARGET_S:g} s")
    print(f"{'model':<6} {'epoch':>5} {'train s':>8} {'samples/s':>10} {'val s':>6} {'load avg':>8}")
    for model in args.models.split(","):
        cfg = load_config(base={"topk": {}}, overrides=[
            "data.dataset=movielens-100k", f"model.name={model}", f"train.epochs={args.epochs}",
            f"train.batch_size={args.batch_size}", f"train.threads={args.threads}", "train.patience=0",
            "train.tensorboard=false", "train.progress=false"])
        with tempfile.TemporaryDirectory() as tmp:
            stamps: list[float] = []

            def on_epoch(record, steps, stamps=stamps):
                stamps.append(time.perf_counter())

            t0 = time.perf_counter()
            train_run(cfg, Path(tmp) / "run", log=lambda *_: None, epoch_callback=on_epoch)
            history = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        starts = [t0] + stamps[:-1]
        for rec, start, end in zip(history, starts, stamps):
            # the rest of the epoch: validation + checkpoint (epoch 1 also: data loading, initial validation)
            val_s = (end - start) - rec["train_seconds"]
            row = {"model": model, "epoch": rec["epoch"], "train_seconds": rec["train_seconds"],
                   "samples_per_s": rec["train_samples_per_s"], "validation_seconds": val_s,
                   "load_average": os.getloadavg()[0]}
            rows.append(row)
            print(f"{model:<6} {row['epoch']:>5} {row['train_seconds']:>8.1f} {row['samples_per_s']:>10,.0f} "
                  f"{val_s:>6.1f} {row['load_average']:>8.2f}")
    waata = [r["train_seconds"] for r in rows if r["model"] == "waata"]
    if waata:
        verdict = "met" if min(waata) < TARGET_S else "MISSED"
        print(f"waata: fastest training epoch {min(waata):.1f} s (target < {TARGET_S:g} s: {verdict})")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
