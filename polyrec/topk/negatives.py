"""Negative sampling for implicit feedback: items a user has not interacted with in train, vectorised.

Training pairs each observed (user, item) with sampled unobserved items (BPR / sampled softmax). With
sparse data most random items are negatives, so rejection sampling is cheap: draw, test membership
with one `searchsorted` on the sorted keys user * n_items + item, redraw only the collisions. Users so
dense that collisions survive the rounds get an exact draw over their allowed items instead.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from polyrec.errors import PolyrecError

ROUNDS = 20  # rejection rounds before the exact fallback
EXACT_CELLS = 1 << 22  # rows x n_items cells per chunk of the exact fallback (~4M)
UNSEEN_COUNT = 0.5  # popularity sampling: an item never seen in train counts as seen half a time


class NegativeSampler:
    """Draws items each user has NOT interacted with in train (`strategy` uniform or popularity-weighted).

    popularity: p(item) ∝ count(item in train) ** popularity_power (0.75 as in word2vec); items never seen
    in train get the weight of half an interaction (UNSEEN_COUNT ** power), so every item can be drawn but
    unseen ones are rarer than any seen one. Either way the distribution is restricted to each user's
    non-interacted items (rejection keeps the relative weights of the allowed items).
    """

    def __init__(
        self,
        n_items: int,
        train_user: np.ndarray,
        train_item: np.ndarray,
        strategy: Literal["uniform", "popularity"] = "uniform",
        popularity_power: float = 0.75,
    ) -> None:
        if strategy not in ("uniform", "popularity"):
            raise PolyrecError(f"Unknown negative sampling strategy {strategy!r}: use 'uniform' or 'popularity'.")
        if n_items < 1:
            raise PolyrecError("NegativeSampler needs at least one item")
        user = np.asarray(train_user, dtype=np.int64)
        item = np.asarray(train_item, dtype=np.int64)
        if user.shape != item.shape:
            raise PolyrecError(f"train_user and train_item differ in length ({user.shape} vs {item.shape})")
        if item.size and (item.min() < 0 or item.max() >= n_items):
            raise PolyrecError(f"train items must be in [0, {n_items}), got [{item.min()}, {item.max()}]")
        self.n_items = int(n_items)
        self.strategy = strategy
        self.keys = np.unique(user * self.n_items + item)  # sorted, one per distinct (user, item)
        users_of_keys = self.keys // self.n_items
        self.seen_users, self.seen_counts = np.unique(users_of_keys, return_counts=True)
        self.weights: np.ndarray | None = None
        self.cdf: np.ndarray | None = None
        if strategy == "popularity":
            count = np.bincount(item, minlength=self.n_items).astype(np.float64)
            w = np.where(count > 0, count, UNSEEN_COUNT) ** float(popularity_power)
            self.weights = w / w.sum()
            self.cdf = np.cumsum(self.weights)

    def n_seen(self, users: np.ndarray) -> np.ndarray:
        """Distinct train items per user."""
        if not len(self.seen_users):
            return np.zeros(len(users), dtype=np.int64)
        pos = np.searchsorted(self.seen_users, users).clip(max=len(self.seen_users) - 1)
        return np.where(self.seen_users[pos] == users, self.seen_counts[pos], 0)

    def is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Whether each (user, item) is a train interaction (broadcasting shapes)."""
        keys = np.asarray(users, dtype=np.int64) * self.n_items + np.asarray(items, dtype=np.int64)
        if not len(self.keys):
            return np.zeros(keys.shape, dtype=bool)
        pos = np.searchsorted(self.keys, keys).clip(max=len(self.keys) - 1)
        return self.keys[pos] == keys

    def _draw(self, size: tuple[int, ...] | int, rng: np.random.Generator) -> np.ndarray:
        if self.cdf is None:
            return rng.integers(0, self.n_items, size=size, dtype=np.int64)
        idx = np.searchsorted(self.cdf, rng.random(size) * self.cdf[-1], side="right")
        return np.minimum(idx, self.n_items - 1).astype(np.int64)

    def sample(self, users: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """int64 [len(users), n]: for each user, n items (with replacement) it has not interacted with."""
        users = np.asarray(users, dtype=np.int64).ravel()
        full = users[self.n_seen(users) >= self.n_items]
        if full.size:
            raise PolyrecError(f"Cannot sample negatives: user(s) {np.unique(full)[:5].tolist()} interacted with "
                               f"every one of the {self.n_items} items in train.")
        out = self._draw((len(users), n), rng)
        bad = np.flatnonzero(self.is_positive(users[:, None], out).ravel())
        for _ in range(ROUNDS):
            if not bad.size:
                return out
            rows = bad // max(n, 1)
            out.reshape(-1)[bad] = self._draw(bad.size, rng)
            bad = bad[self.is_positive(users[rows], out.reshape(-1)[bad])]
        if bad.size:
            out.reshape(-1)[bad] = self._exact(users[bad // n], rng)
        return out

    def _exact(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One draw per entry of `users` from its allowed items, by inverse CDF over a dense chunk mask."""
        base = np.ones(self.n_items) if self.weights is None else self.weights
        out = np.empty(len(users), dtype=np.int64)
        step = max(1, EXACT_CELLS // self.n_items)
        for s in range(0, len(users), step):
            u = users[s: s + step]
            w = np.broadcast_to(base, (len(u), self.n_items)) * ~self.is_positive(u[:, None], np.arange(self.n_items))
            cum = np.cumsum(w, axis=1)
            target = rng.random(len(u)) * cum[:, -1]
            idx = (cum <= target[:, None]).sum(axis=1)
            # guard the float edge target == total: fall back to the row's last allowed item
            last = self.n_items - 1 - np.argmax(w[:, ::-1] > 0, axis=1)
            out[s: s + step] = np.minimum(idx, last)
        return out
