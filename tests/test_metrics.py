"""Metrics agree with scikit-learn / naive references; the report counts every (scenario, head) cell."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import log_loss, mean_absolute_error, mean_squared_error, roc_auc_score

from polyrec.metrics.functions import auc, grouped_auc, logloss, regression_metrics
from polyrec.metrics.report import evaluate, flatten
from polyrec.data.spec import Head


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.random(500) + 0.3 * y, 1)  # coarse scores: many ties, some across classes
    assert len(np.unique(s)) < 30
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auc_edge_cases():
    assert auc([0, 0, 1, 1], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.5)
    assert auc([0, 1], [0.9, 0.1]) == pytest.approx(0.0)
    assert math.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))


def test_logloss_matches_sklearn():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    p = np.clip(rng.random(400), 0.01, 0.99)
    assert logloss(y, p) == pytest.approx(log_loss(y, p), rel=1e-9)
    # saturated probabilities stay finite
    assert math.isfinite(logloss([1, 0], [0.0, 1.0]))


def _naive_gauc(y, s, g):
    total, weight = 0.0, 0
    for u in np.unique(g):
        m = g == u
        if 0 < y[m].sum() < m.sum():
            total += roc_auc_score(y[m], s[m]) * m.sum()
            weight += m.sum()
    return total / weight


@pytest.mark.parametrize("seed", [0, 1])
def test_gauc_matches_naive_loop_weighted_by_group_size(seed):
    rng = np.random.default_rng(seed)
    n = 2000
    g = rng.integers(0, 120, n)
    y = (rng.random(n) < 0.2 + 0.5 * (g % 3 == 0)).astype(int)
    s = np.round(rng.random(n) + 0.2 * y, 2)  # ties inside groups
    g[:7] = 999  # a one-class group is ignored
    y[:7] = 1
    expected = _naive_gauc(y, s, g)
    assert grouped_auc(y, s, g) == pytest.approx(expected, abs=1e-12)
    # weighting matters: the unweighted mean differs, so the check can fail
    per = [roc_auc_score(y[g == u], s[g == u]) for u in np.unique(g) if 0 < y[g == u].sum() < (g == u).sum()]
    assert abs(np.mean(per) - expected) > 1e-6
    assert math.isnan(grouped_auc([1, 1, 0], [0.1, 0.2, 0.3], [1, 1, 2]))


def test_regression_metrics_match_sklearn():
    rng = np.random.default_rng(4)
    t = rng.normal(3, 1, 300)
    p = t + rng.normal(0, 0.5, 300)
    m = regression_metrics(t, p)
    assert m["mse"] == pytest.approx(mean_squared_error(t, p), rel=1e-12)
    assert m["mae"] == pytest.approx(mean_absolute_error(t, p), rel=1e-12)
    assert m["rmse"] == pytest.approx(math.sqrt(mean_squared_error(t, p)), rel=1e-12)


def test_report_evaluate_cells_counts_and_values():
    rng = np.random.default_rng(5)
    n = 900
    scenario_names = ["<unknown>", "north", "south", "east"]
    scenario = rng.choice([1, 2, 3], n, p=[0.5, 0.3, 0.2])
    scenario[:4] = 0  # a few unknown-scenario rows form their own cell
    click = (rng.random(n) < 0.5).astype(np.float32)
    like = click * (rng.random(n) < 0.4)
    rating = rng.normal(3, 1, n)
    labels = np.stack([click, like, rating], 1).astype(np.float32)
    task_names = ["click", "like", "rating"]
    heads = [Head("click", "click", "binary"), Head("like", "like", "binary"),
             Head("rating", "rating", "regression"),
             Head("like_on_click", "like", "binary", space="click", train=False)]
    scores = np.stack([rng.random(n), rng.random(n), rating + rng.normal(0, 1, n), rng.random(n)], 1)
    user = rng.integers(0, 50, n)
    res = evaluate(scores, labels, heads, task_names, scenario, scenario_names, user)

    assert set(res["cells"]) == {"<unknown>", "north", "south", "east"}
    for sid, name in enumerate(scenario_names):
        rows = scenario == sid
        cell = res["cells"][name]
        assert cell["click"]["n"] == rows.sum() and cell["click"]["positives"] == click[rows].sum()
        assert cell["like"]["n"] == rows.sum() and cell["like"]["positives"] == like[rows].sum()
        assert cell["rating"]["n"] == rows.sum()
        in_space = rows & (click == 1)
        assert cell["like_on_click"]["n"] == in_space.sum()
        if sid:
            assert cell["click"]["auc"] == pytest.approx(roc_auc_score(click[rows], scores[rows, 0]))
            assert cell["like_on_click"]["auc"] == pytest.approx(roc_auc_score(like[in_space], scores[in_space, 3]))
            assert cell["rating"]["rmse"] == pytest.approx(
                math.sqrt(mean_squared_error(rating[rows], scores[rows, 2])), rel=1e-6)
    heads_m = res["heads"]
    assert heads_m["click"]["n"] == n and heads_m["like_on_click"]["n"] == click.sum()
    assert heads_m["like_on_click"]["positives"] == like.sum()  # like implies click
    assert heads_m["click"]["gauc"] == pytest.approx(_naive_gauc(click, scores[:, 0], user))
    assert "auc" not in heads_m["rating"] and heads_m["rating"]["n"] == n
    # overall: pooled binary heads, and the unweighted mean of their AUCs
    binary = [0, 1, 3]
    mask = [np.ones(n, bool), np.ones(n, bool), click == 1]
    pooled_y = np.concatenate([labels[m, [0, 1, 1][i]] for i, m in enumerate(mask)])
    pooled_p = np.concatenate([scores[m, h] for h, m in zip(binary, mask)])
    assert res["overall"]["auc"] == pytest.approx(roc_auc_score(pooled_y, pooled_p))
    assert res["overall"]["mean_auc"] == pytest.approx(np.mean([heads_m[h]["auc"] for h in
                                                                 ("click", "like", "like_on_click")]))
    flat = flatten(res)
    assert flat["cell/north/click/n"] == (scenario == 1).sum()
    assert flat["overall/mean_auc"] == res["overall"]["mean_auc"]
