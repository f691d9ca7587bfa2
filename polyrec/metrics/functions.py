"""Metrics over whole splits (never averaged over batches), exact and vectorised.

AUC uses mid-ranks for ties (the Mann-Whitney statistic), so it equals scikit-learn's
roc_auc_score; gAUC computes every user's AUC in one sort, without a Python loop over users.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-7


def _scores(scores: np.ndarray) -> np.ndarray:
    """Float scores as they are (sorting float32 is exact; a float64 copy would only cost memory), others as float64."""
    s = np.asarray(scores)
    return s if s.dtype in (np.float32, np.float64) else s.astype(np.float64)


def _midranks(sorted_scores: np.ndarray, starts: np.ndarray | None = None) -> np.ndarray:
    """1-based mid-ranks of already sorted scores; `starts` marks group starts (ranks restart there).

    Per-row temporaries are kept few: whole-split metrics of a 2M-row validation split are a training run's peak
    memory on the larger-than-memory path (benchmarks/scale.py)."""
    n = len(sorted_scores)
    new_value = np.empty(n, dtype=bool)
    new_value[:1] = True
    np.not_equal(sorted_scores[1:], sorted_scores[:-1], out=new_value[1:])
    if starts is not None:
        new_value |= starts
    first = np.flatnonzero(new_value)
    del new_value
    counts = np.diff(first, append=n)
    ranks = np.repeat(first + (counts + 1) / 2.0, counts)  # each tie group's 1-based global mid-rank, per row
    if starts is not None:
        group_first = np.flatnonzero(starts)
        ranks -= np.repeat(group_first, np.diff(group_first, append=n))
    return ranks


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC; NaN when only one class is present."""
    y = np.asarray(labels) == 1
    s = _scores(scores)
    pos = int(y.sum())
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = _midranks(s[order])
    return float((ranks[y[order]].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def grouped_auc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """gAUC: per-group AUC weighted by group size, over groups that have both classes."""
    y = np.asarray(labels) == 1
    s = _scores(scores)
    g = np.asarray(groups)
    if len(y) == 0:
        return float("nan")
    order = np.lexsort((s, g))
    y, s, g = y[order], s[order], g[order]
    del order
    starts = np.empty(len(g), dtype=bool)
    starts[:1] = True
    np.not_equal(g[1:], g[:-1], out=starts[1:])
    del g
    ranks = _midranks(s, starts)
    del s
    gid = np.cumsum(starts) - 1
    n_groups = int(gid[-1]) + 1
    size = np.bincount(gid, minlength=n_groups).astype(np.float64)
    pos = np.bincount(gid, weights=y, minlength=n_groups)
    neg = size - pos
    ranks[~y] = 0.0
    pos_rank = np.bincount(gid, weights=ranks, minlength=n_groups)
    valid = (pos > 0) & (neg > 0)
    if not valid.any():
        return float("nan")
    per_group = (pos_rank[valid] - pos[valid] * (pos[valid] + 1) / 2.0) / (pos[valid] * neg[valid])
    return float(np.average(per_group, weights=size[valid]))


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
    y = np.asarray(labels, dtype=np.float64)
    if len(y) == 0:
        return float("nan")
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    ll = np.log(p)
    ll *= y
    np.log1p(-p, out=p)
    p *= 1 - y
    ll += p
    return float(-np.mean(ll))


def regression_metrics(targets: np.ndarray, preds: np.ndarray) -> dict[str, float]:
    err = np.asarray(preds, dtype=np.float64) - np.asarray(targets, dtype=np.float64)
    if len(err) == 0:
        return {"mse": float("nan"), "mae": float("nan"), "rmse": float("nan")}
    mse = float(np.mean(err**2))
    return {"mse": mse, "mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(mse))}
