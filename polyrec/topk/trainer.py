"""Training top-K models with the one training loop (polyrec.train.trainer.Trainer).

The generic Trainer iterates a table of (batch, labels), computes per-head losses, lets the balancer
combine them and handles early stopping, checkpoints and exact resume. Top-K training plugs into it
with three small pieces:

* a training table that draws fresh negatives at the start of every epoch (from a generator seeded by
  (seed, epoch), so a resumed run draws the same ones) and yields index-slice batches;
* `PairTrainable`, a TopKModel as a `polyrec.train.trainer.Trainable`: forward(batch) -> logits,
  extra_loss(logits, labels), heads, task_names, shared_parameters(), epoch_start();
* `ranking_evaluator`, the trainer's injected validation: full-ranking metrics on the validation split.

Pointwise models (waata, the CTR adapters) see every training interaction with its labels plus the
negatives with all labels 0, and learn one BCE loss per head. Pairwise models (mf, kgat) see
(user, positive, negative) triples of the target task and output s(u, pos) - s(u, neg) as one logit
with label 1, so the head's BCE-with-logits is exactly the BPR loss -ln sigmoid(s_pos - s_neg).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from polyrec.errors import PolyrecError
from polyrec.metrics.report import flatten
from polyrec.metrics.topk import interaction_matrix, topk_metrics
from polyrec.data.spec import Head
from polyrec.topk.models.base import TopKModel
from polyrec.topk.negatives import NegativeSampler
from polyrec.data.interactions import Interactions, TopKData


@dataclass
class TopKBatch:
    users: torch.Tensor  # int64 [B]
    items: torch.Tensor  # int64 [B]; the positive item for pairwise batches
    negatives: torch.Tensor | None = None  # int64 [B] for pairwise batches
    scenario: None = None  # top-K data have no scenarios (train.loss_reduction is task)

    def __len__(self) -> int:
        return int(self.users.shape[0])


def _rng(generator: torch.Generator | None) -> np.random.Generator:
    return np.random.default_rng(generator.initial_seed() if generator is not None else 0)


class PointwiseTable:
    """Every training interaction (its labels) plus `n_neg` negatives per interaction (labels 0)."""

    def __init__(self, train: Interactions, sampler: NegativeSampler, n_neg: int) -> None:
        self.train, self.sampler, self.n_neg = train, sampler, n_neg
        self.users = torch.from_numpy(train.user.astype(np.int64))
        self.items = torch.from_numpy(train.item.astype(np.int64))
        self.labels = torch.from_numpy(train.labels.astype(np.float32))

    def __len__(self) -> int:
        return len(self.train) * (1 + self.n_neg)

    def num_batches(self, batch_size: int) -> int:
        return (len(self) + batch_size - 1) // batch_size

    def batches(self, batch_size: int, shuffle: bool = True,
                generator: torch.Generator | None = None) -> Iterator[tuple[TopKBatch, torch.Tensor]]:
        neg_users = np.repeat(self.train.user, self.n_neg)
        neg_items = self.sampler.sample(self.train.user, self.n_neg, _rng(generator)).reshape(-1)
        users = torch.cat([self.users, torch.from_numpy(neg_users.astype(np.int64))])
        items = torch.cat([self.items, torch.from_numpy(neg_items.astype(np.int64))])
        labels = torch.cat([self.labels, torch.zeros(len(neg_users), self.labels.shape[1])])
        order = torch.randperm(len(users), generator=generator) if shuffle else torch.arange(len(users))
        for start in range(0, len(users), batch_size):
            idx = order[start:start + batch_size]
            yield TopKBatch(users[idx], items[idx]), labels[idx]


class PairwiseTable:
    """(user, positive, negative) triples: positives are the target task's training interactions."""

    def __init__(self, train: Interactions, sampler: NegativeSampler, n_neg: int) -> None:
        keep = train.labels[:, 0] == 1
        if not keep.any():
            raise PolyrecError("The training split has no positive of the target task; nothing to rank.")
        self.user, self.item = train.user[keep].astype(np.int64), train.item[keep].astype(np.int64)
        self.sampler, self.n_neg = sampler, n_neg

    def __len__(self) -> int:
        return len(self.user) * self.n_neg

    def num_batches(self, batch_size: int) -> int:
        return (len(self) + batch_size - 1) // batch_size

    def batches(self, batch_size: int, shuffle: bool = True,
                generator: torch.Generator | None = None) -> Iterator[tuple[TopKBatch, torch.Tensor]]:
        users = np.repeat(self.user, self.n_neg)
        pos = np.repeat(self.item, self.n_neg)
        neg = self.sampler.sample(self.user, self.n_neg, _rng(generator)).reshape(-1)
        u, p, n = (torch.from_numpy(a.astype(np.int64)) for a in (users, pos, neg))
        order = torch.randperm(len(u), generator=generator) if shuffle else torch.arange(len(u))
        ones = torch.ones(len(u), 1)
        for start in range(0, len(u), batch_size):
            idx = order[start:start + batch_size]
            yield TopKBatch(u[idx], p[idx], n[idx]), ones[idx]


class ModelTrainable(nn.Module):
    """What every top-K Trainable passes through to its model (state-dict keys model.*)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def shared_parameters(self) -> list[nn.Parameter]:
        return self.model.shared_parameters()

    def last_shared_layer(self) -> nn.Parameter | None:
        return self.model.last_shared_layer()

    def epoch_start(self) -> None:
        self.model.epoch_start()


class PairTrainable(ModelTrainable):
    """A TopKModel as the training loop's Trainable: pointwise batches score their pairs (one logit per
    head); pairwise batches give s(u, pos) - s(u, neg) of the ranking head as their one logit."""

    def __init__(self, model: TopKModel) -> None:
        super().__init__(model)
        self._cache: Any = None
        if model.pairwise:
            target = model.heads[model.ranking_head]
            self.heads = [Head(target.name, target.task, "binary")]
            self.task_names = [target.task]
        else:
            self.heads = list(model.heads)
            self.task_names = list(model.info.task_names)

    def forward(self, batch: TopKBatch) -> torch.Tensor:
        cache = self._cache = self.model.encode()
        if batch.negatives is None:
            return self.model.score(batch.users, batch.items, cache)
        r = self.model.ranking_head
        pos = self.model.score(batch.users, batch.items, cache)[:, r]
        neg = self.model.score(batch.users, batch.negatives, cache)[:, r]
        return (pos - neg).unsqueeze(1)

    def extra_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        return self.model.extra_loss(logits, labels, self._cache)


def ranking_evaluator(model: TopKModel, data: TopKData, ks: list[int], chunk: int,
                      users: np.ndarray | None = None) -> Callable[[], dict[str, float]]:
    """The trainer's validation for top-K runs: flat full-ranking metrics (monitor keys like 'like/ndcg@20')."""
    return lambda: flatten(evaluate_topk(model, data, "val", ks, chunk, users=users))


@torch.inference_mode()
def score_matrix(model: TopKModel, n_users: int, chunk: int, users: np.ndarray | None = None) -> torch.Tensor:
    """Ranking-head scores of every item for `users` (default: all n_users): [len(users), n_items] float32
    (ML-1M, all users: ~90 MB)."""
    model.eval()
    cache = model.encode()
    rows = torch.arange(n_users) if users is None else torch.as_tensor(users, dtype=torch.long)
    out = torch.empty(len(rows), model.n_items)
    for start in range(0, len(rows), chunk):
        out[start:start + chunk] = model.score_all(rows[start:start + chunk], cache).float()
    return out


def eval_users(data: TopKData, limit: int | None) -> np.ndarray | None:
    """The users top-K metrics are computed over: all (None), or a seeded sample of `limit` users, the same for
    every epoch, split and model of a run with this data (seeded by the split seed), so bench rows compare on
    the same users. Full ranking of every item is kept; only the set of users is cut."""
    if limit is None or limit >= data.n_users:
        return None
    rng = np.random.default_rng([int(data.meta.get("seed", 0)), 20_261_202])
    return np.sort(rng.choice(data.n_users, size=limit, replace=False))


def evaluate_topk(model: TopKModel, data: TopKData, split: str, ks: list[int], chunk: int = 512,
                  scores: torch.Tensor | None = None, users: np.ndarray | None = None) -> dict[str, Any]:
    """Full-ranking metrics of `split` for every task, items ranked by the target task's score.

    Excluded from the ranking: the user's training interactions, and validation ones when testing.
    Relevant items of task t: the split's interactions with label t = 1. `users`: evaluate only these users
    (see eval_users); `scores`, when given, holds their rows (all users' rows when `users` is None)."""
    if split not in ("val", "test"):
        raise PolyrecError(f"Top-K evaluation ranks items the user has not seen in training: split must be "
                           f"val or test, got {split!r}.")
    if scores is None and getattr(model, "sequential", False):
        model.set_history(split)  # a sequence model reads the items before the predicted split's item
    s = scores if scores is not None else score_matrix(model, data.n_users, chunk, users)
    row = None
    if users is not None:  # user index -> row of s
        row = torch.full((data.n_users,), -1, dtype=torch.long)
        row[torch.as_tensor(users, dtype=torch.long)] = torch.arange(len(users))
    seen = [data.splits["train"]] + ([data.splits["val"]] if split == "test" else [])
    exclude = sum(interaction_matrix(x, data.n_users, data.n_items, None) for x in seen)
    exclude.data[:] = 1
    heads: dict[str, dict[str, float]] = {}
    target = data.splits[split]
    for t, task in enumerate(data.task_names):
        relevant = interaction_matrix(target, data.n_users, data.n_items, t)
        with_items = np.flatnonzero(np.diff(relevant.indptr) > 0)
        if users is not None:
            with_items = np.intersect1d(with_items, users)
        score_fn = (lambda u: s[u]) if row is None else (lambda u: s[row[u]])
        heads[task] = topk_metrics(score_fn, with_items, relevant, exclude, ks=tuple(ks), chunk=chunk)
    ranking = {"by": data.target, "excluded": "train" + ("+val" if split == "test" else "")}
    if users is not None:
        ranking["users_sampled"] = int(len(users))
    return {"heads": heads, "ranking": ranking}
