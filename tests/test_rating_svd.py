"""The rating baselines (svd, svdpp) and the k-fold protocol they are compared under (issue 20, items 1-2):
the models compute the papers' equations, svd++'s implicit sets come from the training rows only, k-fold
splits are a seeded partition, and `polyrec bench --folds K` runs folds 0..K-1 on one fold assignment."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from helpers import make_batch, make_spec, quiet
from polyrec.config import DataConfig, load_config
from polyrec.data.spec import TaskInfo
from polyrec.data.split import fold_assignment, kfold_split
from polyrec.errors import PolyrecError
from polyrec.models import build_model, get_model_class
from polyrec.models.base import model_params
from polyrec.models.svdpp import implicit_sets

RATING = [TaskInfo("rating", "regression")]


def _built(name: str, tasks=None, params=None, rows: int = 64, embed: int = 4):
    spec = make_spec(tasks or RATING)
    train, labels = make_batch(spec, rows, seed=5)
    p = dict(params or {})
    spec = get_model_class(name).spec_from_training(spec, model_params(name, p), train.categorical.numpy(),
                                                    labels.numpy())
    torch.manual_seed(0)
    return build_model(name, spec, embed, p), train, labels


# --- svd ------------------------------------------------------------------------------------------
def test_svd_is_the_biased_mf_equation_with_per_rating_l2():
    model, batch, labels = _built("svd", params={"reg": 0.1, "reg_bias": 0.3})
    with torch.no_grad():
        model.user_bias.weight.normal_()
        model.item_bias.weight.normal_()
    stats = model.spec.extra["label_stats"]["rating"]
    assert stats["mean"] == pytest.approx(float(labels[:, 0].mean()), abs=1e-5)
    assert float(model.global_mean) == pytest.approx(stats["mean"])  # mu is the training mean
    u, i = batch.categorical[:, 0].long(), batch.categorical[:, 1].long()
    p, q = model.user_factors.weight[u], model.item_factors.weight[i]
    bu, bi = model.user_bias.weight[u, 0], model.item_bias.weight[i, 0]
    expected = model.global_mean[0] + bu + bi + (p * q).sum(1)
    model.train()
    out = model(batch)
    torch.testing.assert_close(out[:, 0], expected)
    reg = 0.1 * ((p ** 2).sum(1) + (q ** 2).sum(1)).mean() + 0.3 * (bu ** 2 + bi ** 2).mean()
    torch.testing.assert_close(model.extra_loss(out, labels), reg)
    # eval: the same score, clipped to the training labels' range; no regulariser
    model.eval()
    with torch.no_grad():
        clipped = model(batch)[:, 0]
    torch.testing.assert_close(clipped, expected.detach().clamp(stats["min"], stats["max"]))
    assert model.extra_loss(clipped, labels) is None
    assert (expected < stats["min"]).any() or (expected > stats["max"]).any()  # the clip was exercised


def test_svd_ignores_every_feature_but_the_ids_and_names_a_missing_id_field():
    model, batch, _ = _built("svd")
    model.eval()
    other = make_batch(model.spec, len(batch), seed=9)[0]
    other.categorical[:, :2] = batch.categorical[:, :2]  # same users and items, everything else different
    with torch.no_grad():
        torch.testing.assert_close(model(other), model(batch))
    with pytest.raises(PolyrecError, match="model.user_field"):
        build_model("svd", make_spec(RATING), 4, {"user_field": "customer"})


def test_svd_with_several_tasks_shares_only_the_factors():
    model, batch, labels = _built("svd", tasks=[TaskInfo("click", "binary"), TaskInfo("rating", "regression")])
    assert model(batch).shape == (len(batch), 2)
    shared = {id(p) for p in model.shared_parameters()}
    assert shared == {id(model.user_factors.weight), id(model.item_factors.weight)}
    rate = float(labels[:, 0].mean())
    assert float(model.global_mean[0]) == pytest.approx(np.log(rate / (1 - rate)), abs=1e-5)  # a logit start


# --- svd++ ----------------------------------------------------------------------------------------
def test_implicit_sets_are_each_users_distinct_items():
    cat = np.array([[2, 5, 0], [3, 7, 0], [2, 6, 0], [2, 5, 0], [4, 7, 0]])
    sets = implicit_sets(cat, 0, 1, n_users=6)
    offsets, items = sets["offsets"], sets["items"]
    assert len(offsets) == 7
    by_user = {u: items[offsets[u]:offsets[u + 1]] for u in range(6)}
    assert by_user == {0: [], 1: [], 2: [5, 6], 3: [7], 4: [7], 5: []}


def test_svdpp_vectorised_implicit_term_equals_the_equation():
    model, batch, labels = _built("svdpp", rows=80)
    sets = model.spec.extra["implicit"]
    model.eval()
    with torch.no_grad():
        out = model(batch)[:, 0]
    stats = model.spec.extra["label_stats"]["rating"]
    y = model.implicit_factors.weight
    for row in range(len(batch)):
        u, i = int(batch.categorical[row, 0]), int(batch.categorical[row, 1])
        n_u = sets["items"][sets["offsets"][u]:sets["offsets"][u + 1]]
        implicit = y[n_u].sum(0) / max(len(n_u), 1) ** 0.5 if n_u else torch.zeros(y.shape[1])
        score = (model.global_mean[0] + model.user_bias.weight[u, 0] + model.item_bias.weight[i, 0]
                 + model.item_factors.weight[i] @ (model.user_factors.weight[u] + implicit))
        assert float(out[row]) == pytest.approx(float(score.clamp(stats["min"], stats["max"])), abs=1e-5)
    model.train()
    out = model(batch)
    out.sum().backward()
    assert model.implicit_factors.weight.grad.abs().sum() > 0  # the implicit factors are trained


def test_svdpp_run_takes_implicit_sets_from_the_training_split_only(tiny_recipe, tmp_path):
    """No leakage: spec.json's N(u) are exactly the training rows' (user, item) pairs, never a val/test-only pair."""
    from polyrec.runs import train_run

    cfg = load_config(base={"data": {"dataset": tiny_recipe.name, "split": "kfold", "folds": 4, "fold": 1,
                                     "tasks": ["click"]},
                            "model": {"name": "svdpp", "embed_dim": 4},
                            "train": {"epochs": 1, "batch_size": 256, "oov_dropout": 0.0}})
    train_run(cfg, tmp_path / "run", log=quiet)
    sets = json.loads((tmp_path / "run" / "spec.json").read_text())["spec"]["extra"]["implicit"]
    from polyrec.data.prepare import prepare

    data = prepare(cfg.data, seed=cfg.train.seed, log=quiet)
    train = data.splits["train"].categorical
    expected = implicit_sets(train, 0, 1, data.model_spec().vocab_sizes[0])
    assert sets["offsets"] == expected["offsets"] and sets["items"] == expected["items"]
    pairs = {(u, i) for u in range(len(sets["offsets"]) - 1)
             for i in sets["items"][sets["offsets"][u]:sets["offsets"][u + 1]]}
    test = data.splits["test"].categorical
    test_only = {(int(u), int(i)) for u, i in test[:, :2]} - {(int(u), int(i)) for u, i in train[:, :2]}
    assert test_only and not (test_only & pairs)


# --- k folds --------------------------------------------------------------------------------------
def test_kfold_split_partitions_the_rows_and_validates_inside_the_training_folds():
    n, k = 1003, 5
    assigned = fold_assignment(n, k, seed=3)
    assert np.bincount(assigned).max() - np.bincount(assigned).min() <= 1
    tests = []
    for f in range(k):
        s = kfold_split(n, k, f, 0.1, seed=3)
        assert set(s["test"]) == set(np.flatnonzero(assigned == f))
        assert not set(s["val"]) & set(s["test"]) and not set(s["train"]) & set(s["val"])
        assert len(s["train"]) + len(s["val"]) + len(s["test"]) == n
        assert abs(len(s["val"]) - 0.1 * (n - len(s["test"]))) <= 1
        tests.append(s["test"])
        again = kfold_split(n, k, f, 0.1, seed=3)
        assert all(np.array_equal(s[x], again[x]) for x in s)  # seeded
    assert sorted(np.concatenate(tests).tolist()) == list(range(n))  # every row tests exactly once
    assert not np.array_equal(kfold_split(n, k, 0, 0.1, seed=4)["test"], tests[0])


@pytest.mark.parametrize("settings, match", [
    ({"split": "kfold"}, "go together"), ({"folds": 5}, "go together"),
    ({"split": "kfold", "folds": 5, "fold": 5}, "below data.folds"), ({"split": "kfold", "folds": 1}, "folds")])
def test_kfold_config_errors(settings, match):
    with pytest.raises(ValueError, match=match):
        DataConfig(**settings)


def test_kfold_through_prepare_gives_each_fold_its_own_cache_entry(tiny_recipe):
    from polyrec.data.prepare import prepare

    entries, tests = set(), []
    for f in range(3):
        data = prepare(DataConfig(dataset=tiny_recipe.name, split="kfold", folds=3, fold=f, split_seed=1), log=quiet)
        assert data.meta["split"] == "kfold"
        entries.add(data.entry)
        tests.append(pq.read_table(data.raw_split_path("test")).num_rows)
    assert len(entries) == 3 and sum(tests) == 3000


def test_bench_folds_runs_folds_on_one_assignment():
    from polyrec.bench.spec import build_experiment

    exp = build_experiment(datasets="movielens-100k", models="svd,mmoe", folds=5)
    assert exp.seeds == [0, 1, 2, 3, 4] and exp.to_dict()["folds"] == 5
    cfgs = [exp.config_for("movielens-100k", exp.rows[0], s) for s in exp.seeds]
    assert [c.data.fold for c in cfgs] == [0, 1, 2, 3, 4]
    assert {(c.data.split, c.data.folds, c.data.split_seed) for c in cfgs} == {("kfold", 5, 0)}
    with pytest.raises(PolyrecError, match="drop --seeds"):
        build_experiment(datasets="movielens-100k", models="svd", folds=5, seeds="3")
    with pytest.raises(PolyrecError, match=">= 2"):
        build_experiment(datasets="movielens-100k", models="svd", folds=1)


def test_svdpp_inference_table_equals_the_training_path():
    """Inference gathers from a per-user table (fixed shapes, exportable); it must equal the ragged per-batch sums,
    and follow the weights after an update."""
    model, batch, _ = _built("svdpp", rows=200)
    assert model.implicit_items.numel() > 0
    users = batch.categorical[:, model.user_col]
    for _ in range(2):
        p_u = model.user_factors(users).detach()
        model.train()
        ragged = model.user_vector(users, p_u)[0].detach()
        model.eval()
        table = model.user_vector(users, p_u)[0]
        torch.testing.assert_close(table, ragged, atol=1e-6, rtol=1e-6)
        with torch.no_grad():
            model.implicit_factors.weight.add_(0.5)  # the table must follow the weights
