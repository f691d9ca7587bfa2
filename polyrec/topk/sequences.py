"""Time-ordered per-user item sequences for the sequential top-K models (gru4rec, sasrec, sasrec-mt).

Built once from a leave-last-out TopKData, vectorised (one lexsort, CSR offsets, no per-user Python):
each user's interactions in the order train (by time, ties by row order, as the split orders them),
then the validation item, then the test item. The model's input for a user depends on what is being
predicted (the SASRec protocol):

* training: the training items; the target at position t is the training item t + 1;
* validation (`split="val"`): the training items, predicting the validation item;
* test (`split="test"`): the training items plus the validation item, predicting the test item;
* `split="all"` (polyrec recommend): every item of the user, predicting the next one.

Each is truncated to its last `max_len` items and left-padded with the id `n_items`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from polyrec.data.interactions import TopKData
from polyrec.errors import PolyrecError

CUTS = ("train", "val", "test", "all")


@dataclass
class UserSequences:
    """CSR layout: user u's items are items[offsets[u]:offsets[u + 1]], oldest first."""

    offsets: np.ndarray  # int64 [n_users + 1]
    items: np.ndarray  # int64 [M]
    labels: np.ndarray  # float32 [M, T], the interaction's task labels
    n_train: np.ndarray  # int64 [n_users], training items per user (a prefix of its row)
    n_val: np.ndarray  # int64 [n_users], validation items per user (after the training ones)

    @property
    def n_users(self) -> int:
        return int(self.offsets.shape[0] - 1)

    def ends(self, split: str) -> np.ndarray:
        """Per user, the exclusive end (into `items`) of the input used to predict `split` (module docstring)."""
        start = self.offsets[:-1]
        if split in ("train", "val"):
            return start + self.n_train
        if split == "test":
            return start + self.n_train + self.n_val
        if split == "all":
            return self.offsets[1:].copy()
        raise PolyrecError(f"Sequence input split must be one of {', '.join(CUTS)}, got {split!r}.")

    def windows(self, users: np.ndarray, ends: np.ndarray, max_len: int, pad: int) -> np.ndarray:
        """[len(users), max_len] int64: the last max_len items before `ends[u]` of each user, left-padded."""
        users = np.asarray(users, dtype=np.int64)
        pos = ends[users][:, None] - max_len + np.arange(max_len)[None, :]
        valid = pos >= self.offsets[users][:, None]
        return np.where(valid, self.items[np.clip(pos, 0, max(len(self.items) - 1, 0))], pad) if len(self.items) \
            else np.full((len(users), max_len), pad, dtype=np.int64)


def build_sequences(user: np.ndarray, item: np.ndarray, labels: np.ndarray, part: np.ndarray, time: np.ndarray,
                    n_users: int) -> UserSequences:
    """Sequences from parallel arrays; `part` is 0 train / 1 val / 2 test; order = (user, part, time, row)."""
    order = np.lexsort((np.arange(len(user)), time, part, user))
    u, p = user[order], part[order]
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(u, minlength=n_users), out=offsets[1:])
    return UserSequences(offsets, item[order].astype(np.int64), labels[order].astype(np.float32),
                         np.bincount(u[p == 0], minlength=n_users).astype(np.int64),
                         np.bincount(u[p == 1], minlength=n_users).astype(np.int64))


def check_sequential(data: TopKData, model: str) -> None:
    """Sequential models need the leave-last-out protocol and the time order of the training items."""
    split = data.meta.get("split")
    if split != "leave_last_out":
        raise PolyrecError(f"Model {model!r} predicts each user's next item and is evaluated leave-last-out: "
                           f"set data.split=leave_last_out (this run's split is {split!r}).")
    if any(s.timestamp is None for s in data.splits.values()):
        raise PolyrecError(f"Model {model!r} orders each user's items by time, and {data.dataset} has no time "
                           "column: set `time:` in the schema.")


def user_sequences(data: TopKData) -> UserSequences:
    """The time-ordered sequences of a leave-last-out TopKData (see check_sequential)."""
    parts = [data.splits[s] for s in ("train", "val", "test")]
    cat = lambda f: np.concatenate([f(x) for x in parts])  # noqa: E731
    part = np.concatenate([np.full(len(x), k, dtype=np.int64) for k, x in enumerate(parts)])
    time = cat(lambda x: x.timestamp if x.timestamp is not None else np.zeros(len(x), dtype=np.int64))
    return build_sequences(cat(lambda x: x.user).astype(np.int64), cat(lambda x: x.item).astype(np.int64),
                           cat(lambda x: x.labels), part, time, data.n_users)
