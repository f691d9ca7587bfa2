"""Metrics over whole splits (never averaged over batches), exact and vectorised.

AUC uses mid-ranks for ties (the Mann-Whitney statistic), so it equals scikit-learn's
roc_auc_score; gAUC computes every user's AUC in one sort, without a Python loop over users.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-7


def _midranks(sorted_scores: np.ndarray, starts: np.ndarray | None = None) -> np.ndarray:
    """1-based mid-ranks of already sorted scores; `starts` marks group starts (ranks restart there)."""
    n = len(sorted_scores)
    new_value = np.empty(n, dtype=bool)
    new_value[:1] = True
    new_value[1:] = sorted_scores[1:] != sorted_scores[:-1]
    if starts is not None:
        new_value |= starts
    first = np.flatnonzero(new_value)
    counts = np.diff(np.append(first, n))
    tie_group = np.cumsum(new_value) - 1
    if starts is None:
        group_start = np.zeros(n, dtype=np.int64)
    else:
        group_start = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    mid = first + (counts + 1) / 2.0  # 1-based global mid-rank of each tie group
    return mid[tie_group] - group_start


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC; NaN when only one class is present."""
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    pos = int((y == 1).sum())
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = _midranks(s[order])
    return float((ranks[y[order] == 1].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def grouped_auc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """gAUC: per-group AUC weighted by group size, over groups that have both classes."""
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    g = np.asarray(groups)
    if len(y) == 0:
        return float("nan")
    order = np.lexsort((s, g))
    y, s, g = y[order], s[order], g[order]
    starts = np.empty(len(g), dtype=bool)
    starts[:1] = True
    starts[1:] = g[1:] != g[:-1]
    ranks = _midranks(s, starts)
    gid = np.cumsum(starts) - 1
    n_groups = int(gid[-1]) + 1
    size = np.bincount(gid, minlength=n_groups).astype(np.float64)
    pos = np.bincount(gid, weights=y, minlength=n_groups)
    neg = size - pos
    pos_rank = np.bincount(gid, weights=ranks * y, minlength=n_groups)
    valid = (pos > 0) & (neg > 0)
    if not valid.any():
        return float("nan")
    per_group = (pos_rank[valid] - pos[valid] * (pos[valid] + 1) / 2.0) / (pos[valid] * neg[valid])
    return float(np.average(per_group, weights=size[valid]))


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    if len(y) == 0:
        return float("nan")
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def regression_metrics(targets: np.ndarray, preds: np.ndarray) -> dict[str, float]:
    err = np.asarray(preds, dtype=np.float64) - np.asarray(targets, dtype=np.float64)
    if len(err) == 0:
        return {"mse": float("nan"), "mae": float("nan"), "rmse": float("nan")}
    mse = float(np.mean(err**2))
    return {"mse": mse, "mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(mse))}
