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

    Rows are ranked within their user by (time, row order), so ties keep file order. A user with c rows gets
    train = ranks [0, a), val = [a, b), test = [b, c) where a = round(c * r_train) and
    b = round(c * (r_train + r_val)), halves rounded up. Then, where possible, no split is left empty: c >= 3
    clamps a to [1, c-2] and b to [a+1, c-1]; c == 2 gives one train and one test row (test is what is
    reported); c == 1 is train only.
    """
    r = _check(ratios)
    n = len(users)
    order = np.lexsort((np.arange(n), times, users))
    u = users[order]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]]) if n else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, n])
    group = np.repeat(np.arange(len(starts)), sizes)
    rank = np.arange(n) - starts[group]
    c = sizes.astype(np.float64)
    a = np.floor(c * r[0] + 0.5 + 1e-9)
    b = np.floor(c * (r[0] + r[1]) + 0.5 + 1e-9)
    a = np.where(c >= 3, np.clip(a, 1, c - 2), 1)
    b = np.where(c >= 3, np.clip(b, a + 1, c - 1), 1)
    part = np.where(rank < a[group], 0, np.where(rank < b[group], 1, 2))
    return {name: np.sort(order[part == k]) for name, k in (("train", 0), ("val", 1), ("test", 2))}


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


def fold_assignment(n: int, folds: int, seed: int) -> np.ndarray:
    """Each row's fold in 0..folds-1 (int8 [n]): a seeded permutation dealt round-robin, so fold sizes differ by
    at most one. The same (n, folds, seed) gives the same folds whatever fold is tested (Surprise's KFold deals
    a shuffled list the same way)."""
    out = np.empty(n, dtype=np.int8)
    out[np.random.default_rng(seed).permutation(n)] = np.arange(n) % folds
    return out


def kfold_split(n: int, folds: int, fold: int, val_share: float, seed: int) -> dict[str, np.ndarray]:
    """Fold `fold` tests; of the other folds' rows a seeded `val_share` validates (early stopping), the rest trains.

    The validation rows are drawn per tested fold (seeded by (seed, fold)), from the training folds only, so
    the test fold never influences training or model selection."""
    if not 0 <= fold < folds:
        raise PolyrecError(f"fold {fold} is not in 0..{folds - 1}")
    assigned = fold_assignment(n, folds, seed)
    test = np.flatnonzero(assigned == fold)
    rest = np.flatnonzero(assigned != fold)
    n_val = int(round(len(rest) * val_share))
    val = np.sort(np.random.default_rng([seed, fold]).choice(rest, n_val, replace=False))
    return {"train": np.setdiff1d(rest, val, assume_unique=True), "val": val, "test": test}
