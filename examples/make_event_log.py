"""A synthetic multi-behaviour e-commerce event log (user, item, category, behavior, timestamp).

Shaped like Taobao's UserBehavior log: one row per event, behaviours pv / cart / fav / buy. The labels
carry signal: a user favours a few categories, items differ in appeal, evenings convert better, and
cart / fav / buy all follow from the same (user, item) affinity, so AUC > 0.5 means something.

    python examples/make_event_log.py events.csv [--users 400] [--items 600] [--seed 0] [--candidates pairs.csv]

`--candidates` also writes (user, item) pairs to score, in the aggregated form the example schema trains
on (user_id, item_id, category_id, first_ts, n_pv): the input of `polyrec predict`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

T0 = 1_700_000_000  # 2023-11-14 22:13 UTC


def _ids(prefix: str, values: np.ndarray, width: int) -> pa.Array:
    """Zero-padded string ids, vectorised."""
    return pa.array(np.char.add(prefix, np.char.zfill(values.astype(str), width)).astype(object), pa.string())


def make_event_log(n_users: int = 400, n_items: int = 600, n_categories: int = 12, views_per_user: int = 40,
                   seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    item_cat = rng.integers(0, n_categories, n_items)
    item_appeal = rng.normal(0, 1, n_items)
    user_taste = rng.normal(0, 1, (n_users, n_categories))
    n = n_users * views_per_user
    user = np.repeat(np.arange(n_users), views_per_user)
    # views lean towards the user's favourite categories and popular items
    item = np.minimum(rng.zipf(1.2, n) - 1, n_items - 1)
    item = np.where(rng.random(n) < 0.5, item, rng.integers(0, n_items, n))
    ts = T0 + rng.integers(0, 30 * 86400, n)
    hour = (ts // 3600) % 24
    evening = ((hour >= 18) | (hour < 1)).astype(float)
    z = 1.2 * user_taste[user, item_cat[item]] + 0.8 * item_appeal[item] + 0.7 * evening - 2.0
    p = 1 / (1 + np.exp(-z))
    cart = rng.random(n) < p
    fav = rng.random(n) < 0.6 * p
    buy = rng.random(n) < np.where(cart, 0.5, 0.05) * (0.5 + p)
    rows = [(user, item, ts, np.full(n, "pv"))]
    for flag, name, lag in ((cart, "cart", 60), (fav, "fav", 90), (buy, "buy", 600)):
        rows.append((user[flag], item[flag], ts[flag] + lag, np.full(int(flag.sum()), name)))
    u, i, t, b = (np.concatenate(c) for c in zip(*rows))
    order = np.argsort(t, kind="stable")
    return pa.table({
        "user_id": _ids("u", u[order], 5),
        "item_id": _ids("", i[order], 6),  # leading zeros: ids must stay strings
        "category_id": pa.array((item_cat[i[order]] + 100).astype(np.int64)),
        "behavior": pa.array(b[order]),
        "timestamp": pa.array(t[order].astype(np.int64)),
    })


def make_candidates(n_users: int = 400, n_items: int = 600, n_categories: int = 12, n: int = 1000,
                    seed: int = 0) -> pa.Table:
    """Pairs to score one day after the log ends (same item categories as the log with the same seed)."""
    item_cat = np.random.default_rng(seed).integers(0, n_categories, n_items)
    rng = np.random.default_rng(seed + 1)
    user, item = rng.integers(0, n_users, n), rng.integers(0, n_items, n)
    return pa.table({
        "user_id": _ids("u", user, 5), "item_id": _ids("", item, 6),
        "category_id": pa.array((item_cat[item] + 100).astype(np.int64)),
        "first_ts": pa.array(T0 + 31 * 86400 + rng.integers(0, 86400, n)), "n_pv": pa.array(rng.integers(1, 4, n)),
    })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--users", type=int, default=400)
    ap.add_argument("--items", type=int, default=600)
    ap.add_argument("--views", type=int, default=40, help="page views per user")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--candidates", type=Path, help="also write pairs to score here (CSV)")
    args = ap.parse_args()
    table = make_event_log(args.users, args.items, views_per_user=args.views, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pacsv.write_csv(table, args.out, pacsv.WriteOptions(quoting_style="none"))
    print(f"wrote {table.num_rows} events to {args.out}")
    if args.candidates:
        pairs = make_candidates(args.users, args.items, seed=args.seed)
        pacsv.write_csv(pairs, args.candidates, pacsv.WriteOptions(quoting_style="none"))
        print(f"wrote {pairs.num_rows} candidate pairs to {args.candidates}")


if __name__ == "__main__":
    main()
