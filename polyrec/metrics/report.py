"""Per-head, per-(scenario, head) and overall metrics for a whole split's predictions."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from polyrec.metrics.functions import auc, grouped_auc, logloss, regression_metrics
from polyrec.data.spec import Head

COLD_ROLES = ("user", "item")  # the slices' order (polyrec.data.coldstart.ROLES)


def head_rows(heads: Sequence[Head], task_names: Sequence[str], labels: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """For each head: its label column index and the boolean mask of rows in its sample space."""
    out = []
    for h in heads:
        mask = np.ones(len(labels), dtype=bool)
        if h.space is not None:
            mask = labels[:, task_names.index(h.space)] == 1
        out.append((task_names.index(h.task), mask))
    return out


def _cell(kind: str, y: np.ndarray, p: np.ndarray, user: np.ndarray | None) -> dict[str, float]:
    if kind == "binary":
        m = {"auc": auc(y, p), "logloss": logloss(y, p), "n": int(len(y)), "positives": int(y.sum())}
        if user is not None:
            m["gauc"] = grouped_auc(y, p, user)
        return m
    return {**regression_metrics(y, p), "n": int(len(y))}


def evaluate(
    scores: np.ndarray,
    labels: np.ndarray,
    heads: Sequence[Head],
    task_names: Sequence[str],
    scenario: np.ndarray,
    scenario_names: Sequence[str],
    user: np.ndarray | None = None,
    cold: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Nested metrics: {"heads": {h: m}, "cells": {scenario: {h: m}}, "overall": {...}, "slices": {...}}.

    `overall.auc`/`overall.logloss` pool every binary head's predictions (all cells together);
    `overall.mean_auc` is the unweighted mean of binary heads' AUCs. Cells with no rows are omitted.
    `cold` (role -> bool [N], polyrec.data.coldstart) adds the cold-start view: "slices" holds, per head,
    the metrics of warm rows (no role cold), of cold-user rows and of cold-item rows, always with their
    count `n` (an empty slice is {"n": 0}, so a table can say there was nothing to measure).
    """
    result: dict[str, Any] = {"heads": {}, "cells": {}, "overall": {}}
    pooled_y, pooled_p, head_aucs = [], [], []
    for h, (col, mask) in zip(heads, head_rows(heads, task_names, labels)):
        y, p = labels[mask, col], scores[mask, heads.index(h)]
        u = user[mask] if user is not None else None
        result["heads"][h.name] = _cell(h.kind, y, p, u)
        if h.kind == "binary":
            pooled_y.append(y)
            pooled_p.append(p)
            head_aucs.append(result["heads"][h.name]["auc"])
        sc = scenario[mask]
        for sid in np.unique(sc):
            rows = sc == sid
            cell = result["cells"].setdefault(scenario_names[sid], {})
            cell[h.name] = _cell(h.kind, y[rows], p[rows], u[rows] if u is not None else None)
    if pooled_y:
        y, p = np.concatenate(pooled_y), np.concatenate(pooled_p)
        finite = [a for a in head_aucs if not math.isnan(a)]
        result["overall"] = {"auc": auc(y, p), "logloss": logloss(y, p),
                             "mean_auc": float(np.mean(finite)) if finite else float("nan")}
    if cold:
        result["slices"] = _slices(scores, labels, heads, task_names, user, cold)
    return result


def slice_masks(cold: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Slice name -> row mask: "warm" (no role cold), then "cold_<role>" for each role present."""
    order = sorted(cold, key=lambda r: (COLD_ROLES.index(r) if r in COLD_ROLES else len(COLD_ROLES), r))
    masks = {f"cold_{role}": np.asarray(cold[role], dtype=bool) for role in order}
    masks = {"warm": ~np.logical_or.reduce(list(masks.values())), **masks}
    return masks


def _slices(scores: np.ndarray, labels: np.ndarray, heads: Sequence[Head], task_names: Sequence[str],
            user: np.ndarray | None, cold: Mapping[str, np.ndarray]) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    spaces = head_rows(heads, task_names, labels)
    for name, rows in slice_masks(cold).items():
        out[name] = {}
        for h, (col, mask) in zip(heads, spaces):
            m = mask & rows
            if not m.any():
                out[name][h.name] = {"n": 0}
                continue
            out[name][h.name] = _cell(h.kind, labels[m, col], scores[m, heads.index(h)],
                                      user[m] if user is not None else None)
    return out


def flatten(metrics: dict[str, Any]) -> dict[str, float]:
    """Flat keys for monitoring and tables: 'click/auc', 'overall/auc', 'cell/<25/click/auc'."""
    flat = {f"overall/{k}": v for k, v in metrics.get("overall", {}).items()}
    for h, m in metrics.get("heads", {}).items():
        flat.update({f"{h}/{k}": v for k, v in m.items()})
    for sc, cell in metrics.get("cells", {}).items():
        for h, m in cell.items():
            flat.update({f"cell/{sc}/{h}/{k}": v for k, v in m.items()})
    for name, per_head in metrics.get("slices", {}).items():
        for h, m in per_head.items():
            flat.update({f"slice/{name}/{h}/{k}": v for k, v in m.items()})
    return flat
