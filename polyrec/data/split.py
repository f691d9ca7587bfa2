"""Train/validation/test splits as index arrays (seeded, vectorised)."""

from __future__ import annotations

import numpy as np

from polyrec.errors import PolyrecError


def _check(ratios: tuple[float, float, float]) -> np.ndarray:
    r = np.asarray(ratios, dtype=np.float64)
    if len(r) != 3 or (r < 0).any() or abs(r.sum() - 1) > 1e-6 or r[0] <= 0:
        raise PolyrecError(f"split ratios must be three non-negative numbers summing to 1, got {ratios}")
    return r


def random_split(n: int, ratios: tuple[float, float, float], seed: int) -> dict[str, np.ndarray]:
    r = _check(ratios)
    perm = np.random.default_rng(seed).permutation(n)
    a, b = int(round(n * r[0])), int(round(n * (r[0] + r[1])))
    return {"train": np.sort(perm[:a]), "val": np.sort(perm[a:b]), "test": np.sort(perm[b:])}


def temporal_split(users: np.ndarray, times: np.ndarray, ratios: tuple[float, float, float]) -> dict[str, np.ndarray]:
    """Per user: the earliest interactions train, the next ones validate, the latest test.

    Ties in time are broken by row order, so the split is deterministic.
    """
    r = _check(ratios)
    n = len(users)
    order = np.lexsort((np.arange(n), times, users))
    u = users[order]
    starts = np.r_[True, u[1:] != u[:-1]]
    first = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    count = np.diff(np.r_[np.flatnonzero(starts), n])[np.cumsum(starts) - 1]
    rank = np.arange(n) - first
    # position of the row within its user's history; cut points rounded per user
    n_train = np.floor(count * r[0] + 0.5).clip(min=1)
    n_val = np.floor(count * (r[0] + r[1]) + 0.5)
    part = np.where(rank < n_train, 0, np.where(rank < n_val, 1, 2))
    out = {}
    for name, k in (("train", 0), ("val", 1), ("test", 2)):
        out[name] = np.sort(order[part == k])
    return out


def global_temporal_split(times: np.ndarray, ratios: tuple[float, float, float]) -> dict[str, np.ndarray]:
    """One time cut for everyone: the earliest rows train, the next validate, the latest test (ties by row order)."""
    r = _check(ratios)
    n = len(times)
    order = np.lexsort((np.arange(n), times))
    a, b = int(round(n * r[0])), int(round(n * (r[0] + r[1])))
    return {"train": np.sort(order[:a]), "val": np.sort(order[a:b]), "test": np.sort(order[b:])}


def leave_last_out_split(users: np.ndarray, times: np.ndarray) -> dict[str, np.ndarray]:
    """Per user: the last interaction tests, the second-to-last validates, the rest trains.

    Users with fewer than 3 interactions keep them all in train (nothing left to learn from otherwise).
    """
    n = len(users)
    order = np.lexsort((np.arange(n), times, users))
    u = users[order]
    starts = np.r_[True, u[1:] != u[:-1]]
    ends = np.r_[u[1:] != u[:-1], True]
    count = np.diff(np.r_[np.flatnonzero(starts), n])[np.cumsum(starts) - 1]
    # rank from the end of the user's history: 0 = last
    last_pos = np.flatnonzero(ends)[np.cumsum(starts) - 1]
    from_end = last_pos - np.arange(n)
    part = np.where((count >= 3) & (from_end == 0), 2, np.where((count >= 3) & (from_end == 1), 1, 0))
    return {name: np.sort(order[part == k]) for name, k in (("train", 0), ("val", 1), ("test", 2))}
