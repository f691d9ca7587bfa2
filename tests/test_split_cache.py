"""Splits (random, per-user temporal) and the encoded columnar cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from helpers import TINY_SCHEMA, quiet
from polyrec.config import DataConfig
from polyrec.data.encoders import Encoders
from polyrec.data.split import random_split, temporal_split
from polyrec.errors import PolyrecError
from polyrec.data.prepare import prepare


# --- splits ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n,ratios", [(1000, (0.8, 0.1, 0.1)), (7, (0.5, 0.25, 0.25)), (101, (0.7, 0.0, 0.3))])
def test_random_split_disjoint_complete_and_seeded(n, ratios):
    s = random_split(n, ratios, seed=11)
    parts = [s["train"], s["val"], s["test"]]
    allidx = np.concatenate(parts)
    assert len(allidx) == n and np.array_equal(np.sort(allidx), np.arange(n))  # complete, no duplicates
    assert abs(len(s["train"]) - ratios[0] * n) <= 1
    assert abs(len(s["test"]) - ratios[2] * n) <= 1
    again = random_split(n, ratios, seed=11)
    assert all(np.array_equal(s[k], again[k]) for k in s)
    if n > 100:
        other = random_split(n, ratios, seed=12)
        assert not np.array_equal(s["test"], other["test"])


def test_random_split_rejects_bad_ratios():
    with pytest.raises(PolyrecError, match="ratios"):
        random_split(10, (0.8, 0.3, 0.1), 0)


def _check_temporal(users, times, split):
    n = len(users)
    allidx = np.concatenate([split["train"], split["val"], split["test"]])
    assert np.array_equal(np.sort(allidx), np.arange(n))
    part = np.empty(n, dtype=int)
    for k, name in enumerate(("train", "val", "test")):
        part[split[name]] = k
    for u in np.unique(users):
        rows = np.flatnonzero(users == u)
        # order of a user's history: time, then row order for ties
        order = rows[np.lexsort((rows, times[rows]))]
        parts = part[order]
        assert (np.diff(parts) >= 0).all(), f"user {u}: a later interaction precedes an earlier split"
        assert parts[0] == 0, f"user {u}: the earliest interaction must train"
        if len(rows) >= 10:  # (cut points are rounded per user: very short histories may have no test row)
            assert parts[-1] == 2, f"user {u}: the latest interaction must be in test"


def test_temporal_split_puts_each_users_latest_interactions_in_test():
    rng = np.random.default_rng(0)
    n = 3000
    users = rng.integers(0, 80, n)
    times = rng.integers(0, 40, n)  # many ties
    users[:1] = 999  # a user with a single interaction trains on it
    users[1:4] = 998  # a short history still keeps time order across splits
    times[1:4] = [30, 10, 20]
    split = temporal_split(users, times, (0.8, 0.1, 0.1))
    _check_temporal(users, times, split)
    assert 999 in users[split["train"]]
    frac = len(split["test"]) / n
    assert 0.05 < frac < 0.15


def test_temporal_split_through_prepare(tiny_recipe):
    data = prepare(DataConfig(dataset=tiny_recipe.name, split="temporal"), seed=0, log=quiet)
    assert data.meta["split"] == "temporal"
    tables = {k: pq.read_table(data.raw_split_path(k)) for k in ("train", "val", "test")}
    for k, t in tables.items():
        assert t.num_rows == len(data.splits[k]) > 0
    latest_test = {}
    for row in tables["test"].select(["user_id", "ts"]).to_pylist():
        latest_test[row["user_id"]] = min(latest_test.get(row["user_id"], 10**9), row["ts"])
    for name in ("train", "val"):
        for row in tables[name].select(["user_id", "ts"]).to_pylist():
            if row["user_id"] in latest_test:
                assert row["ts"] <= latest_test[row["user_id"]]


# --- cache ----------------------------------------------------------------------------------
def test_second_prepare_reuses_the_cache_entry(tiny_recipe, monkeypatch):
    fits = []
    real_fit = Encoders.fit.__func__

    def counting_fit(cls, schema, train):
        fits.append(1)
        return real_fit(cls, schema, train)

    monkeypatch.setattr(Encoders, "fit", classmethod(counting_fit))
    cfg = DataConfig(dataset=tiny_recipe.name, split_seed=101)
    logs: list[str] = []
    first = prepare(cfg, log=logs.append)
    assert (len(fits), tiny_recipe.load_calls) == (1, 1)
    assert any("encoding into" in line for line in logs)
    logs.clear()
    second = prepare(cfg, log=logs.append)
    assert (len(fits), tiny_recipe.load_calls) == (1, 1)  # no reload, no refit, no re-encode
    assert not any("encoding into" in line for line in logs)
    assert second.entry == first.entry
    for split in ("train", "val", "test"):
        a, b = first.splits[split].columns(), second.splits[split].columns()
        assert all(np.array_equal(a[k], b[k]) for k in a)
    assert second.encoders.to_dict() == first.encoders.to_dict()
    assert isinstance(second.splits["train"].categorical, np.memmap)  # columns are memory-mapped
    entries = [p for p in first.entry.parent.iterdir() if p.name.startswith(".")]
    assert entries == []  # no half-built temp directories left


def test_cache_key_changes_with_split_seed_ratios_and_schema(tiny_recipe, tmp_path):
    base = prepare(DataConfig(dataset=tiny_recipe.name, split_seed=5), log=quiet)
    same = prepare(DataConfig(dataset=tiny_recipe.name, split_seed=5), log=quiet)
    other_seed = prepare(DataConfig(dataset=tiny_recipe.name, split_seed=6), log=quiet)
    other_ratios = prepare(DataConfig(dataset=tiny_recipe.name, split_seed=5, ratios=(0.7, 0.1, 0.2)), log=quiet)
    schema = {**TINY_SCHEMA, "features": [
        {**f, "min_freq": 2} if f["name"] == "item_id" else f for f in TINY_SCHEMA["features"]]}
    schema_file = Path(tmp_path / "schema.yaml")
    schema_file.write_text(yaml.safe_dump(schema))
    other_schema = prepare(DataConfig(dataset=tiny_recipe.name, split_seed=5, schema_file=str(schema_file)), log=quiet)
    assert same.entry == base.entry
    entries = {base.entry, other_seed.entry, other_ratios.entry, other_schema.entry}
    assert len(entries) == 4
    # and the entries really hold what their key says
    assert not np.array_equal(base.splits["test"].labels, other_seed.splits["test"].labels)
    assert len(other_ratios.splits["test"]) > len(base.splits["test"])
    assert other_schema.encoders.vocabularies["item_id"].size < base.encoders.vocabularies["item_id"].size
    assert other_schema.meta["schema"]["features"][1]["min_freq"] == 2


def test_seed_defaults_to_the_run_seed(tiny_recipe):
    a = prepare(DataConfig(dataset=tiny_recipe.name), seed=21, log=quiet)
    b = prepare(DataConfig(dataset=tiny_recipe.name, split_seed=21), seed=99, log=quiet)
    assert a.entry == b.entry and a.meta["split_seed"] == 21
