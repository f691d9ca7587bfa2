"""torch-rechub side of the polyrec throughput benchmark.

Trains torch-rechub's own MMOE with torch-rechub's own MTLTrainer and data
path (DataGenerator -> TorchDataset -> torch DataLoader over a dict of
per-column numpy arrays, exactly as torch-rechub's examples/ranking/run_census.py
does) on an npz file produced by polyrec, then measures throughput, test AUC and
peak RSS and writes them as JSON.

Nothing in torch-rechub is patched. The only wrapper is an instance-level timer
around ``train_one_epoch`` so the report can split the ``fit`` wall time into
the training loop and the per-epoch validation pass that ``fit`` always runs.

Usage:
  python benchmarks/rechub_runner.py --data FILE.npz --batch-size 1024 --epochs 1 \
      --threads 2 --embed-dim 16 --n-expert 8 --expert-dims 64,32 --tower-dims 32 \
      --lr 1e-3 --json-out OUT.json

Imports only numpy, torch, sklearn, torch_rechub (and pandas, which
torch-rechub itself depends on) plus the standard library.
"""

import argparse
import contextlib
import json
import os
import resource
import sys
import tempfile
import time

# torch-rechub's trainer hard-codes tqdm progress bars with no switch; tqdm
# (>= 4.66) reads TQDM_* environment variables as constructor defaults, so
# this silences them without touching torch-rechub. Must precede the import.
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402  (torch-rechub dependency; its examples use it)
import torch  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import torch_rechub  # noqa: E402
from torch_rechub.basic.features import DenseFeature, SparseFeature  # noqa: E402
from torch_rechub.models.multi_task import MMOE  # noqa: E402
from torch_rechub.trainers import MTLTrainer  # noqa: E402
from torch_rechub.utils.data import DataGenerator, PredictDataset  # noqa: E402


def _dims(text):
    return [int(t) for t in str(text).split(",") if t.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="npz written by polyrec")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--embed-dim", type=int, default=16)
    p.add_argument("--n-expert", type=int, default=8)
    p.add_argument("--expert-dims", default="64,32")
    p.add_argument("--tower-dims", default="32")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0,
                   help="Adam weight_decay (coupled L2). torch-rechub's own default when "
                        "optimizer_params is omitted is 1e-5; we pass it explicitly (default 0).")
    p.add_argument("--dropout", type=float, default=0.0, help="MLP dropout (torch-rechub default 0)")
    p.add_argument("--seed", type=int, default=2022)
    p.add_argument("--json-out", required=True)
    p.add_argument("--quiet", action="store_true", help="discard torch-rechub's prints instead of sending them to stderr")
    return p.parse_args(argv)


def _str_list(arr):
    return [str(x) for x in np.asarray(arr).tolist()]


def load_npz(path):
    z = np.load(path, allow_pickle=False)
    cat_names = _str_list(z["cat_names"])
    num_names = _str_list(z["num_names"])
    task_names = _str_list(z["task_names"])
    vocab_sizes = np.asarray(z["vocab_sizes"], dtype=np.int64)
    splits = {}
    for s in ("train", "val", "test"):
        splits[s] = (
            np.asarray(z[f"{s}_cat"], dtype=np.int64),
            np.asarray(z[f"{s}_num"], dtype=np.float32),
            np.asarray(z[f"{s}_labels"], dtype=np.float32),
        )
    return cat_names, num_names, task_names, vocab_sizes, splits


def to_rechub_xy(cat, num, labels, cat_cols, num_cols):
    """Build the {column_name: 1-D numpy array} dict + label matrix the way
    torch-rechub's census example does (``data[name].values`` per column)."""
    df = pd.DataFrame({c: cat[:, j] for j, c in enumerate(cat_cols)})
    for j, c in enumerate(num_cols):
        df[c] = num[:, j]
    x = {name: df[name].values for name in cat_cols + num_cols}
    return x, labels


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    cat_names, num_names, task_names, vocab_sizes, splits = load_npz(args.data)
    if len(vocab_sizes) != len(cat_names):
        raise ValueError("vocab_sizes length does not match cat_names")

    # Feature names must be unique across sparse+dense (torch-rechub keys the
    # input dict and embedding ModuleDict by name); prefix to be safe.
    cat_cols = [f"c{j}_{n}" for j, n in enumerate(cat_names)]
    num_cols = [f"n{j}_{n}" for j, n in enumerate(num_names)]

    features = [SparseFeature(c, vocab_size=int(v), embed_dim=args.embed_dim) for c, v in zip(cat_cols, vocab_sizes)]
    features += [DenseFeature(c) for c in num_cols]

    (tr_cat, tr_num, tr_y), (va_cat, va_num, va_y), (te_cat, te_num, te_y) = (splits["train"], splits["val"], splits["test"])
    x_train, y_train = to_rechub_xy(tr_cat, tr_num, tr_y, cat_cols, num_cols)
    x_val, y_val = to_rechub_xy(va_cat, va_num, va_y, cat_cols, num_cols)
    x_test, y_test = to_rechub_xy(te_cat, te_num, te_y, cat_cols, num_cols)
    n_train, n_val, n_test = len(y_train), len(y_val), len(y_test)

    n_task = len(task_names)
    task_types = ["classification"] * n_task
    expert_params = {"dims": _dims(args.expert_dims), "dropout": args.dropout}
    tower_params_list = [{"dims": _dims(args.tower_dims), "dropout": args.dropout} for _ in range(n_task)]
    model = MMOE(features, task_types, args.n_expert, expert_params=expert_params, tower_params_list=tower_params_list)
    n_params = sum(p.numel() for p in model.parameters())

    dg = DataGenerator(x_train, y_train)
    train_dl, val_dl, test_dl = dg.generate_dataloader(x_val=x_val, y_val=y_val, x_test=x_test, y_test=y_test, batch_size=args.batch_size)

    out_stream = open(os.devnull, "w") if args.quiet else sys.stderr
    with tempfile.TemporaryDirectory(prefix="rechub_bench_") as model_dir, contextlib.redirect_stdout(out_stream):
        trainer = MTLTrainer(
            model,
            task_types=task_types,
            optimizer_fn=torch.optim.Adam,
            optimizer_params={"lr": args.lr, "weight_decay": args.weight_decay},
            n_epoch=args.epochs,
            # early stopping can never trigger within --epochs
            earlystop_patience=args.epochs + 1,
            device="cpu",
            model_path=model_dir,  # fit() always torch.save()s here
        )

        # Instance-level timer (does not change behaviour) to separate the
        # training loop from fit()'s per-epoch validation + checkpointing.
        epoch_times = []
        _orig_train_one_epoch = trainer.train_one_epoch

        def _timed_train_one_epoch(data_loader):
            t = time.perf_counter()
            r = _orig_train_one_epoch(data_loader)
            epoch_times.append(time.perf_counter() - t)
            return r

        trainer.train_one_epoch = _timed_train_one_epoch

        t0 = time.perf_counter()
        trainer.fit(train_dl, val_dl)
        fit_wall = time.perf_counter() - t0

        # Inference: torch-rechub's predict() over its PredictDataset, same batch size.
        predict_dl = DataLoader(PredictDataset(x_test), batch_size=args.batch_size, shuffle=False)
        t0 = time.perf_counter()
        preds = trainer.predict(trainer.model, predict_dl)
        predict_wall = time.perf_counter() - t0
        preds = np.asarray(preds, dtype=np.float64).reshape(n_test, n_task)

        # torch-rechub's evaluate() on the labelled test loader (cross-check).
        t0 = time.perf_counter()
        rechub_eval_scores = trainer.evaluate(trainer.model, test_dl)
        evaluate_wall = time.perf_counter() - t0

    if args.quiet:
        out_stream.close()

    test_auc = {}
    for i, t in enumerate(task_names):
        yt = y_test[:, i]
        test_auc[t] = float(roc_auc_score(yt, preds[:, i])) if 0 < yt.sum() < len(yt) else float("nan")

    train_loop_wall = float(sum(epoch_times))
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux

    result = {
        "framework": "torch-rechub",
        "version": torch_rechub.__version__,
        "torch_version": torch.__version__,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "threads": args.threads,
        "train_samples_per_s": n_train * args.epochs / fit_wall,
        "infer_samples_per_s": n_test / predict_wall,
        "test_auc": test_auc,
        "peak_rss_mb": peak_rss_mb,
        "n_train": n_train,
        "n_test": n_test,
        # extra detail
        "n_val": n_val,
        "fit_wall_s": fit_wall,
        "train_loop_wall_s": train_loop_wall,
        "train_loop_samples_per_s": n_train * args.epochs / train_loop_wall if train_loop_wall > 0 else None,
        "fit_note": "fit() = train epochs + per-epoch full val evaluate + state_dict deepcopy + torch.save; "
                    "train_loop_* excludes those",
        "predict_wall_s": predict_wall,
        "evaluate_wall_s": evaluate_wall,
        "evaluate_samples_per_s": n_test / evaluate_wall,
        "rechub_evaluate_test_auc": {t: float(s) for t, s in zip(task_names, rechub_eval_scores)},
        "n_params": n_params,
        "config": {
            "embed_dim": args.embed_dim,
            "n_expert": args.n_expert,
            "expert_dims": _dims(args.expert_dims),
            "tower_dims": _dims(args.tower_dims),
            "lr": args.lr,
            "weight_decay": args.weight_decay,
            "dropout": args.dropout,
            "seed": args.seed,
            "optimizer": "Adam",
            "input_dim": len(cat_cols) * args.embed_dim + len(num_cols),
        },
    }
    d = os.path.dirname(os.path.abspath(args.json_out))
    os.makedirs(d, exist_ok=True)
    with open(args.json_out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: result[k] for k in ("train_samples_per_s", "train_loop_samples_per_s", "infer_samples_per_s", "test_auc", "peak_rss_mb")}))
    return result


if __name__ == "__main__":
    main()
