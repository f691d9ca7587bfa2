"""The dense vector feature role: reading list / array / text columns, fills and errors, and every model using it."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import polyrec.models  # noqa: F401  (registers the CTR models)
from helpers import TinyRecipe, make_batch, make_spec, run_cli
from polyrec.data.encoders import Encoders
from polyrec.data.recipe import RECIPES
from polyrec.data.schema import Schema, VectorFeature
from polyrec.data.vectors import VectorEncoder, read_vectors
from polyrec.errors import PolyrecError
from polyrec.models import MODELS, build_model
from polyrec.models.base import model_params
from polyrec.train.losses import HeadLosses

VEC = [[0.5, -1.0, 2.0], [1.0, 0.0, 0.0], [-3.0, 0.25, 1.5]]


@pytest.mark.parametrize("column", [
    pa.array(VEC),
    pa.array(VEC, type=pa.list_(pa.float32(), 3)),  # fixed-size array column
    pa.array(["0.5,-1,2", "[1, 0, 0]", "-3 0.25 1.5"]),  # text, as a CSV carries it
    pa.chunked_array([pa.array(VEC[:1]), pa.array(VEC[1:])]),
])
def test_read_vectors_accepts_lists_arrays_and_text(column):
    x, missing = read_vectors(column, "emb", 3)
    assert not missing.any()
    np.testing.assert_allclose(x, np.array(VEC), rtol=1e-6)


@pytest.mark.parametrize("column, match", [
    (pa.array([[1.0, 2.0, 3.0], [1.0, 2.0]]), r"1 row\(s\) have another length \(first: row 1 has 2"),
    (pa.array([[1.0, float("nan"), 3.0]]), "NaN or infinite"),
    (pa.array(["1,2,x"]), "not a list of numbers"),
    (pa.array([1.0, 2.0]), "needs a list or fixed-size array column"),
])
def test_read_vectors_refuses_corrupt_rows(column, match):
    with pytest.raises(PolyrecError, match=match):
        read_vectors(column, "emb", 3)


def test_missing_rows_are_filled_with_the_training_mean_and_counted():
    spec = VectorFeature(name="emb", dim=3)
    enc = VectorEncoder.fit(pa.array(VEC + [None]), spec)
    np.testing.assert_allclose(enc.mean, np.mean(VEC, axis=0))
    x, filled = enc.transform(pa.array([None, VEC[0]]))
    assert filled == 1 and x.dtype == np.float32
    np.testing.assert_allclose(x, [np.mean(VEC, axis=0), VEC[0]], rtol=1e-6)
    assert VectorEncoder.from_dict(spec, enc.to_dict()).mean.tolist() == enc.mean.tolist()
    with pytest.raises(PolyrecError, match="entirely missing"):
        VectorEncoder.fit(pa.array([None, None], type=pa.list_(pa.float64())), spec)


def test_l2_normalisation_and_hashed_text():
    pytest.importorskip("sklearn")
    enc = VectorEncoder.fit(pa.array(VEC), VectorFeature(name="emb", dim=3, normalize="l2"))
    x, _ = enc.transform(pa.array(VEC))
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-6)
    text = VectorFeature(name="title_hash", column="title", dim=64, text={"method": "hashing"})
    enc = VectorEncoder.fit(pa.array(["Toy Story", "toy soldiers", None]), text)
    x, filled = enc.transform(pa.array(["Toy Story", "Heat", None]))
    assert x.shape == (3, 64) and filled == 1
    assert float(x[0] @ x[0]) == pytest.approx(1.0, rel=1e-5) and abs(float(x[0] @ x[1])) < 1e-6  # no shared word
    np.testing.assert_allclose(x[2], enc.mean, rtol=1e-6)


def _vector_model(name: str, params: dict):
    cls = MODELS.get(name)
    spec = make_spec(vector_dims={"title_emb": 4})
    train, labels = make_batch(spec, 64, seed=11)
    spec = cls.spec_from_training(spec, model_params(name, dict(params)), train.categorical.numpy(), labels.numpy())
    torch.manual_seed(0)
    return build_model(name, spec, 8, dict(params))


@pytest.mark.parametrize("name", sorted(n for n in MODELS if not getattr(MODELS.get(n), "id_only", False)))
def test_every_model_reads_the_vector_feature(name):
    """Each registered model's scores change with the vector's values, and its loss trains what reads them."""
    model = _vector_model(name, {})
    model.eval()
    batch, labels = make_batch(model.spec, 16, seed=2)
    base = model(batch)
    moved = batch.numeric.clone()
    moved[:, -4:] += 3.0  # the vector's columns only
    batch_moved = type(batch)(batch.categorical, moved, batch.sequences, batch.scenario)
    assert not torch.allclose(model(batch_moved), base), f"{name} ignores the vector feature"
    model.train()
    model.zero_grad()
    HeadLosses(model.heads, model.spec.task_names)(model(batch), labels).sum().backward()
    proj = model.embedding.vector_projections if hasattr(model, "embedding") else None
    if proj is not None and any(p.grad is not None for p in proj.parameters()):
        assert all(torch.isfinite(p.grad).all() for p in proj.parameters() if p.grad is not None)


def test_a_run_learns_from_a_vector_feature_end_to_end(tmp_path, monkeypatch):
    """The label depends only on the vector: with it the model ranks well; the run folder round-trips it."""
    rng = np.random.default_rng(0)
    n, d = 3000, 8
    emb = rng.normal(size=(n, d))
    w = rng.normal(size=d)
    click = (rng.random(n) < 1 / (1 + np.exp(-2 * emb @ w))).astype(np.int8)
    table = pa.table({"user_id": pa.array([f"u{i % 50}" for i in range(n)]), "emb": pa.array(list(emb)),
                      "click": pa.array(click)})
    path = tmp_path / "vec.parquet"
    pq.write_table(table, path)
    schema = {"features": [{"name": "user_id", "type": "categorical"}, {"name": "emb", "type": "vector", "dim": d}],
              "tasks": [{"name": "click", "type": "binary"}]}
    recipe = TinyRecipe(path, schema)
    recipe.name = "tiny-vector"
    monkeypatch.setitem(RECIPES, recipe.name, recipe)
    code, out, err = run_cli("train", "--dataset", "tiny-vector", "--model", "mmoe", "--epochs", "4", "--quiet",
                             "--set", "train.lr=0.01", "--out", str(tmp_path / "run"))
    assert code == 0, err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test"]["heads"]["click"]["auc"] > 0.8
    enc = Encoders.load(tmp_path / "run" / "encoders.json")
    assert enc.vectors["emb"].mean.shape == (d,)
    enc.encode(table.slice(0, 5))  # the saved encoders rebuild the same columns
    bad = table.set_column(1, "emb", pa.array([list(r[:3]) for r in emb]))
    with pytest.raises(PolyrecError, match=r"Vector feature 'emb' \(dim 8\)"):
        enc.encode(bad)


def test_schema_refuses_a_vector_without_dim():
    with pytest.raises(PolyrecError, match="dim"):
        Schema.from_dict({"features": [{"name": "emb", "type": "vector"}], "tasks": [{"name": "click"}]})
