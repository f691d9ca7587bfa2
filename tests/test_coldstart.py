"""Cold start as a first-class slice: which rows are cold, the cold-start split, and the sliced metrics."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import roc_auc_score

from helpers import TINY_SCHEMA, run_cli

from polyrec.config import RunConfig
from polyrec.data.coldstart import cold_columns, cold_start_split
from polyrec.data.prepare import prepare
from polyrec.data.schema import Schema
from polyrec.data.spec import Head
from polyrec.errors import PolyrecError
from polyrec.metrics.report import evaluate, flatten


def test_cold_start_split_holds_entities_out_of_training():
    rng = np.random.default_rng(0)
    entity = rng.integers(0, 200, 5000)
    idx = cold_start_split([entity], (0.8, 0.1, 0.1), 0.2, seed=3)
    assert np.array_equal(np.sort(np.concatenate(list(idx.values()))), np.arange(5000))  # each row once
    train_e = set(entity[idx["train"]])
    val_only = set(entity[idx["val"]]) - train_e
    test_only = set(entity[idx["test"]]) - train_e
    assert len(val_only) + len(test_only) == 40 and len(val_only) == 20  # 20% of 200, half validate
    assert not val_only & set(entity[idx["test"]]) and not test_only & set(entity[idx["val"]])
    # warm rows are in val/test too (both slices measurable)
    assert set(entity[idx["test"]]) & train_e and set(entity[idx["val"]]) & train_e
    again = cold_start_split([entity], (0.8, 0.1, 0.1), 0.2, seed=3)
    assert all(np.array_equal(idx[k], again[k]) for k in idx)
    other = cold_start_split([entity], (0.8, 0.1, 0.1), 0.2, seed=4)
    assert not np.array_equal(idx["test"], other["test"])


def test_cold_start_split_by_users_and_items_keeps_both_out_of_training():
    rng = np.random.default_rng(1)
    user, item = rng.integers(0, 100, 8000), rng.integers(0, 300, 8000)
    idx = cold_start_split([user, item], (0.8, 0.1, 0.1), 0.1, seed=0)
    assert np.array_equal(np.sort(np.concatenate(list(idx.values()))), np.arange(8000))
    for ent, n_cold in ((user, 10), (item, 30)):
        seen = set(ent[idx["train"]])
        held = (set(ent[idx["val"]]) | set(ent[idx["test"]])) - seen
        assert len(held) == n_cold  # every held-out entity is absent from training, and only those
    test_cold_user = ~np.isin(user[idx["test"]], user[idx["train"]])
    test_cold_item = ~np.isin(item[idx["test"]], item[idx["train"]])
    assert test_cold_user.any() and test_cold_item.any() and (~test_cold_user & ~test_cold_item).any()


@pytest.mark.parametrize("fraction", [0.001, 0.9999])
def test_cold_start_split_refuses_degenerate_fractions(fraction):
    with pytest.raises(PolyrecError, match="cold_fraction"):
        cold_start_split([np.arange(100)], (0.8, 0.1, 0.1), fraction, seed=0)


def test_cold_columns_use_raw_ids_not_the_oov_row():
    schema = Schema.from_dict({
        "features": [{"name": "user_id", "type": "categorical", "min_freq": 2},
                     {"name": "item_id", "type": "categorical"}],
        "tasks": [{"name": "click", "type": "binary"}], "user": "user_id", "item": "item_id"})
    train = pa.table({"user_id": ["a", "a", "b"], "item_id": [1, 2, 3], "click": [1, 0, 1]})
    test = pa.table({"user_id": ["b", "c", "a", "c"], "item_id": [1, 9, 3, 1], "click": [0, 1, 1, 0]})
    cold = cold_columns(schema, train, test)
    assert cold["user"].tolist() == [False, True, False, True]  # "b" is rare (OOV-encoded) but seen: warm
    assert cold["item"].tolist() == [False, True, False, False]  # ints and their strings agree


def test_slices_equal_metrics_on_the_subsets():
    rng = np.random.default_rng(1)
    n = 400
    labels = (rng.random((n, 2)) < 0.4).astype(np.float32)
    scores = np.clip(labels * 0.3 + rng.random((n, 2)) * 0.7, 1e-4, 1 - 1e-4)
    cold_user = rng.random(n) < 0.25
    cold_item = np.zeros(n, dtype=bool)
    heads = [Head("click", "click", "binary"), Head("like", "like", "binary")]
    m = evaluate(scores, labels, heads, ["click", "like"], np.zeros(n, np.int64), ["all"],
                 cold={"item": cold_item, "user": cold_user})
    assert list(m["slices"]) == ["warm", "cold_user", "cold_item"]
    for name, rows in (("warm", ~cold_user), ("cold_user", cold_user)):
        for j, h in enumerate(("click", "like")):
            cell = m["slices"][name][h]
            assert cell["n"] == rows.sum()
            assert cell["auc"] == pytest.approx(roc_auc_score(labels[rows, j], scores[rows, j]), abs=1e-12)
    assert m["slices"]["cold_item"]["click"] == {"n": 0}
    flat = flatten(m)
    assert flat["slice/cold_user/like/n"] == cold_user.sum() and "slice/warm/click/auc" in flat
    assert "slices" not in evaluate(scores, labels, heads, ["click", "like"], np.zeros(n, np.int64), ["all"])


def tiny_cfg(tiny_recipe, **data):
    return RunConfig.model_validate({"data": {"dataset": tiny_recipe.name, **data}})


def test_prepare_marks_cold_rows_and_caches_them(tiny_recipe):
    schema = {**TINY_SCHEMA, "item": "item_id"}
    tiny_recipe._schema = schema
    cfg = tiny_cfg(tiny_recipe, split="cold_start", cold_fraction=0.2)
    data = prepare(cfg.data, seed=0, log=lambda _: None)
    raw = {k: __import__("pyarrow.parquet").parquet.read_table(data.raw_split_path(k)) for k in data.splits}
    train_users = set(raw["train"]["user_id"].to_pylist())
    for split in ("val", "test"):
        users = np.array(raw[split]["user_id"].to_pylist())
        expect = ~np.isin(users, list(train_users))
        assert expect.any() and (~expect).any()
        assert np.array_equal(np.asarray(data.splits[split].cold["user"]), expect)
        assert "item" in data.splits[split].cold
    assert not np.asarray(data.splits["train"].cold["user"]).any()
    again = prepare(cfg.data, seed=0, log=lambda _: None)  # from the cache: the columns come back
    assert np.array_equal(np.asarray(again.splits["test"].cold["user"]), np.asarray(data.splits["test"].cold["user"]))


def test_cold_start_split_needs_the_role_column(tiny_recipe):
    cfg = tiny_cfg(tiny_recipe, split="cold_start", cold_by="item")  # TINY_SCHEMA declares no `item:`
    with pytest.raises(PolyrecError, match="cold_by=item needs the schema's `item:`"):
        prepare(cfg.data, seed=0, log=lambda _: None)


def test_train_reports_cold_slices_end_to_end(tiny_recipe, tmp_path):
    tiny_recipe._schema = {**TINY_SCHEMA, "item": "item_id"}
    code, out, err = run_cli("train", "--dataset", tiny_recipe.name, "--model", "mmoe", "--epochs", "1", "--quiet",
                             "--set", "data.split=cold_start", "--set", "data.cold_fraction=0.2",
                             "--set", "data.cold_by=[user, item]",
                             "--out", str(tmp_path / "run"))
    assert code == 0, err
    test = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    cold = test["slices"]["cold_user"]["click"]
    warm = test["slices"]["warm"]["click"]
    item = test["slices"]["cold_item"]["click"]
    assert cold["n"] > 0 and warm["n"] > 0 and item["n"] > 0
    assert warm["n"] + cold["n"] + item["n"] >= test["heads"]["click"]["n"] > warm["n"] + max(cold["n"], item["n"])
    assert "cold-user" in out and "cold-item" in out
