"""Full-ranking top-K evaluation: every item is scored for every user (no sampled candidate sets).

Sampled-candidate metrics are known to mis-rank models (Krichene & Rendle, 2020), so each evaluated user
ranks the whole catalogue, minus the items excluded for it (typically its train interactions).

Conventions:
* relevant items that are also excluded are dropped from the relevance set: they can never be
  recommended, so counting them would only lower every model's recall equally;
* only users with at least one (remaining) relevant item are evaluated; "users" says how many;
* ties are ordered as torch.topk orders them (no guarantee among equal scores), so a constant-score
  model gets an arbitrary, not a pessimistic, ranking; excluded items score -inf and rank last;
* recall@K = hits / |rel| (not / min(|rel|, K)); ndcg@K uses binary gains, 1/log2(rank + 1) discounts
  and the ideal DCG of min(|rel|, K) hits; hit@K = any hit; mrr@K = 1 / rank of the first hit, 0 if none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from polyrec.errors import PolyrecError
from polyrec.data.interactions import Interactions

METRICS = ("recall", "ndcg", "hit", "mrr")


def headline_key(metrics: dict[str, float]) -> str | None:
    """The one number a top-K head is summarised by (progress lines, report figures): NDCG@20, else the
    first NDCG@K, else the first metric@K."""
    if "ndcg@20" in metrics:
        return "ndcg@20"
    return next((k for k in metrics if k.startswith("ndcg@")), None) or next((k for k in metrics if "@" in k), None)


def interaction_matrix(inter: Interactions, n_users: int, n_items: int, task: int | None = None) -> sp.csr_matrix:
    """Binary float32 CSR [n_users, n_items] of the rows positive for `task` (all rows when None), deduplicated."""
    keep = np.ones(len(inter), dtype=bool) if task is None else inter.labels[:, task] == 1
    user, item = inter.user[keep].astype(np.int64), inter.item[keep].astype(np.int64)
    m = sp.csr_matrix((np.ones(len(user), dtype=np.float32), (user, item)), shape=(n_users, n_items))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def _binary(m: sp.spmatrix, shape: tuple[int, int], what: str) -> sp.csr_matrix:
    if m.shape != shape:
        raise PolyrecError(f"topk_metrics: {what} has shape {m.shape}, expected {shape}")
    m = sp.csr_matrix(m, dtype=np.float32, copy=True)
    m.sum_duplicates()
    m.data = (m.data != 0).astype(np.float32)
    m.eliminate_zeros()
    return m


def topk_metrics(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    users: np.ndarray,
    relevant: sp.csr_matrix,
    exclude: sp.csr_matrix,
    ks: Sequence[int] = (10, 20, 50),
    chunk: int = 512,
) -> dict[str, float]:
    """Recall/NDCG/Hit/MRR@K averaged over the evaluated users (see the module docstring for conventions).

    score_fn maps a CPU LongTensor of user indices [b] to scores [b, n_items] (higher = better; any device).
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise PolyrecError(f"topk_metrics: ks must be positive integers, got {ks}")
    n_users, n_items = relevant.shape
    rel = _binary(relevant, (n_users, n_items), "relevant")
    exclude = _binary(exclude, (n_users, n_items), "exclude")
    rel = sp.csr_matrix(rel - rel.multiply(exclude))
    rel.eliminate_zeros()

    users = np.asarray(users, dtype=np.int64).ravel()
    if users.size and (users.min() < 0 or users.max() >= n_users):
        raise PolyrecError(f"topk_metrics: user indices must be in [0, {n_users}), got [{users.min()}, {users.max()}]")
    n_rel_all = np.diff(rel.indptr)
    users = users[n_rel_all[users] > 0]
    out = {f"{m}@{k}": 0.0 for k in ks for m in METRICS}
    if not users.size:
        return {**{key: float("nan") for key in out}, "users": 0.0}

    kmax = min(ks[-1], n_items)
    discount = 1.0 / np.log2(np.arange(2, kmax + 2))
    ideal = np.cumsum(discount)
    for s in range(0, len(users), chunk):
        u = users[s: s + chunk]
        with torch.no_grad():
            scores = score_fn(torch.as_tensor(u, dtype=torch.long))
            if scores.shape != (len(u), n_items):
                raise PolyrecError(f"score_fn returned shape {tuple(scores.shape)}, expected ({len(u)}, {n_items})")
            scores = scores.detach().float().clone()
            ex = exclude[u]
            rows = np.repeat(np.arange(len(u)), np.diff(ex.indptr))
            scores[torch.as_tensor(rows, device=scores.device), torch.as_tensor(ex.indices, device=scores.device,
                                                                                   dtype=torch.long)] = -np.inf
            if torch.isnan(scores).any():
                raise PolyrecError("score_fn returned NaN scores; the model diverged or is broken.")
            top = torch.topk(scores, kmax, dim=1).indices.cpu().numpy()
        dense = rel[u].toarray() > 0
        hits = np.take_along_axis(dense, top, axis=1)  # [b, kmax] bool
        n_rel = n_rel_all[u]
        for k in ks:
            h = hits[:, :k]
            kk = h.shape[1]
            n_hit = h.sum(1)
            any_hit = n_hit > 0
            out[f"recall@{k}"] += float((n_hit / n_rel).sum())
            dcg = (h * discount[:kk]).sum(1)
            out[f"ndcg@{k}"] += float((dcg / ideal[np.minimum(n_rel, kk) - 1]).sum())
            out[f"hit@{k}"] += float(any_hit.sum())
            out[f"mrr@{k}"] += float(np.where(any_hit, 1.0 / (h.argmax(1) + 1), 0.0).sum())
    return {**{key: v / len(users) for key, v in out.items()}, "users": float(len(users))}
