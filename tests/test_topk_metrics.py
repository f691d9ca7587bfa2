"""Full-ranking top-K metrics against a naive per-user reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from polyrec.errors import PolyrecError
from polyrec.metrics.topk import interaction_matrix, topk_metrics
from polyrec.data.interactions import Interactions


def reference(scores: np.ndarray, users, relevant: sp.csr_matrix, exclude: sp.csr_matrix, ks) -> dict[str, float]:
    """Per user: drop excluded items, sort by score, walk the top K (pure Python)."""
    sums: dict[str, float] = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg", "hit", "mrr")}
    n = 0
    for u in users:
        ex = set(exclude[u].indices.tolist())
        rel = set(relevant[u].indices.tolist()) - ex
        if not rel:
            continue
        n += 1
        ranked = [i for i in sorted(range(scores.shape[1]), key=lambda i: -scores[u, i]) if i not in ex]
        for k in ks:
            top = ranked[:k]
            hits = [i in rel for i in top]
            sums[f"recall@{k}"] += sum(hits) / len(rel)
            dcg = sum(1 / math.log2(r + 2) for r, h in enumerate(hits) if h)
            idcg = sum(1 / math.log2(r + 2) for r in range(min(len(rel), k)))
            sums[f"ndcg@{k}"] += dcg / idcg
            sums[f"hit@{k}"] += float(any(hits))
            sums[f"mrr@{k}"] += next((1 / (r + 1) for r, h in enumerate(hits) if h), 0.0)
    return {**{key: v / n for key, v in sums.items()}, "users": float(n)}


def random_case(seed: int, n_users: int = 37, n_items: int = 25):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n_users, n_items)).astype(np.float32)  # continuous: no ties
    relevant = rng.random((n_users, n_items)) < 0.15
    exclude = rng.random((n_users, n_items)) < 0.2
    relevant[:4] = False  # users with no relevant item
    exclude[5] |= relevant[5]  # a user whose every relevant item is excluded
    exclude[6, np.flatnonzero(relevant[6])[:1]] = True  # partly excluded relevance
    return scores, sp.csr_matrix(relevant.astype(np.float32)), sp.csr_matrix(exclude.astype(np.float32))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference(seed):
    scores, relevant, exclude = random_case(seed)
    users = np.arange(scores.shape[0])
    ks = (1, 3, 5, 10, 40)  # 40 > n_items
    fn = lambda u: torch.from_numpy(scores)[u]  # noqa: E731
    got = topk_metrics(fn, users, relevant, exclude, ks=ks, chunk=6)
    want = reference(scores, users, relevant, exclude, ks)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-6), key
    # fewer relevant items than K for some users, and users that are not evaluated
    rel_counts = np.diff(relevant.indptr)
    assert (rel_counts[rel_counts > 0] < 3).any() and got["users"] < scores.shape[0] - 4


def test_excluded_relevant_items_are_dropped():
    relevant = sp.csr_matrix(np.array([[0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float32))
    exclude = sp.csr_matrix(np.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=np.float32))
    scores = torch.tensor([[0.0, 1.0, 9.0, 0.5], [9.0, 0.0, 0.0, 0.0], [4.0, 3.0, 2.0, 1.0]])
    got = topk_metrics(lambda u: scores[u], np.arange(3), relevant, exclude, ks=(1, 4))
    # user 1's only relevant item is excluded -> not evaluated; user 0 has item 1 as its only relevant
    assert got["users"] == 2.0
    assert got["recall@1"] == pytest.approx(0.5)  # user 0 hits at rank 1, user 2's item is ranked 4th
    assert got["mrr@4"] == pytest.approx((1.0 + 0.25) / 2)
    assert got["ndcg@4"] == pytest.approx((1.0 + 1 / math.log2(5)) / 2)


def test_perfect_scorer_and_scores_left_untouched():
    scores, relevant, exclude = random_case(3)
    rel = relevant.toarray() > 0
    perfect = torch.from_numpy(np.where(rel, 10.0, 0.0) + scores).float()
    before = perfect.clone()
    got = topk_metrics(lambda u: perfect[u], np.arange(rel.shape[0]), relevant, sp.csr_matrix(rel.shape), ks=(10,))
    assert got["ndcg@10"] == pytest.approx(1.0) and got["mrr@10"] == pytest.approx(1.0) and got["hit@10"] == 1.0
    assert torch.equal(perfect, before)  # the -inf masking works on a copy


def test_no_evaluable_users_and_bad_inputs():
    rel = sp.csr_matrix((3, 5), dtype=np.float32)
    got = topk_metrics(lambda u: torch.zeros(len(u), 5), np.arange(3), rel, rel, ks=(2,))
    assert got["users"] == 0.0 and math.isnan(got["recall@2"])
    rel = sp.csr_matrix(([1.0], ([0], [1])), shape=(3, 5))
    with pytest.raises(PolyrecError, match="shape"):
        topk_metrics(lambda u: torch.zeros(len(u), 4), np.arange(3), rel, rel * 0, ks=(2,))
    with pytest.raises(PolyrecError, match="NaN"):
        topk_metrics(lambda u: torch.full((len(u), 5), float("nan")), np.arange(3), rel, rel * 0, ks=(2,))
    with pytest.raises(PolyrecError, match="ks"):
        topk_metrics(lambda u: torch.zeros(len(u), 5), np.arange(3), rel, rel * 0, ks=(0,))


def test_interaction_matrix_dedups_and_filters_by_task():
    inter = Interactions(user=np.array([0, 0, 1, 2, 2]), item=np.array([1, 1, 0, 3, 2]),
                         labels=np.array([[1, 1], [1, 1], [0, 1], [1, 1], [0, 1]], dtype=np.float32))
    every = interaction_matrix(inter, 4, 5, None)
    assert every.shape == (4, 5) and every.nnz == 4 and set(every.data.tolist()) == {1.0}
    like = interaction_matrix(inter, 4, 5, 0)
    assert [r.tolist() for r in like.toarray().nonzero()] == [[0, 2], [1, 3]]
