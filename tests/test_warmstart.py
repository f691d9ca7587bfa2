"""Continual re-training (`polyrec train --init-from RUN_DIR`, polyrec.train.warmstart / polyrec.data.grow).

Old data: users u0..u19, items i0..i29, genres g0..g5. New data: the old training rows again plus rows of new
users (u20..u29) on old and new items (i30..i39) with a new genre token, so every old user's rows (and svdpp's
N(u) of old users) are the same in both training files, and rows made of old ids must score identically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv  # noqa: F401 (pa.csv)
import pytest
import torch
import yaml
from typer.testing import CliRunner

from polyrec.cli import app
from polyrec.config import load_config
from polyrec.data.batching import TensorTable
from polyrec.data.encoders import Encoders
from polyrec.data.grow import grow_encoders, grow_vocabulary
from polyrec.data.prepare import prepare
from polyrec.data.schema import Schema
from polyrec.errors import PolyrecError
from polyrec.models import MODELS
from polyrec.train.run import model_for
from polyrec.train.trainer import predict_scores
from polyrec.train.warmstart import load_init_run, transfer_weights

runner = CliRunner()

SCHEMA = {
    "features": [{"name": "user_id", "type": "categorical"}, {"name": "item_id", "type": "categorical"},
                 {"name": "price", "type": "numeric"},
                 {"name": "genres", "type": "sequence", "max_len": 3}],
    "scenario": {"name": "region"},
    "tasks": [{"name": "click", "type": "binary"}, {"name": "like", "type": "binary"}],
    "user": "user_id",
}


def rows(n: int, seed: int, users: tuple[int, int], items: tuple[int, int], genres: int = 6) -> str:
    """CSV rows (no header) drawn from the given id ranges; `like` implies `click`."""
    rng = np.random.default_rng(seed)
    u = rng.integers(*users, n)
    i = rng.integers(*items, n)
    g = rng.integers(0, genres, (n, 2))
    click = (rng.random(n) < 0.5).astype(int)
    click[:2] = [0, 1]
    like = click * (rng.random(n) < 0.5)
    like[:2] = [0, 1]
    return "".join(f"u{a},i{b},{rng.random() * 10:.3f},g{x}|g{y},{['north', 'south'][k % 2]},{c},{lk}\n"
                   for k, (a, b, (x, y), c, lk) in enumerate(zip(u, i, g, click, like)))


HEADER = "user_id,item_id,price,genres,region,click,like\n"


@pytest.fixture
def data(tmp_path: Path):
    """schema.yaml; old train/val/test; new train (old rows + new ids) with the same val/test."""
    (tmp_path / "schema.yaml").write_text(yaml.safe_dump(SCHEMA))
    old_train = rows(240, 0, (0, 20), (0, 30))
    for name, text in {"old.csv": old_train, "val.csv": rows(80, 1, (0, 20), (0, 30)),
                       "test.csv": rows(80, 2, (0, 20), (0, 30)),
                       # new users on old and new items, with a new genre token g6
                       "new.csv": old_train + rows(120, 3, (20, 30), (0, 40), genres=7)}.items():
        (tmp_path / name).write_text(HEADER + text)

    class D:
        dir = tmp_path
        schema = str(tmp_path / "schema.yaml")

        @staticmethod
        def config(train: str, model: str = "mmoe", **train_cfg) -> object:
            return load_config(base={
                "data": {"files": {"train": str(tmp_path / train), "val": str(tmp_path / "val.csv"),
                                   "test": str(tmp_path / "test.csv")}, "schema_file": D.schema},
                "model": {"name": model, "embed_dim": 8},
                "train": {"epochs": 1, "batch_size": 64, "threads": 1, "progress": False, "tensorboard": False,
                          **train_cfg}})
    return D


def _train(cfg, out: Path):
    from polyrec.runs import train_run

    return train_run(cfg, out, log=lambda *_: None)


def _old_rows(prepared, base: Encoders) -> np.ndarray:
    """Rows of the test split whose categorical ids and sequence tokens all exist in the old encoders."""
    split = prepared.splits["test"]
    old_sizes = np.array(base.vocab_sizes())
    ok = (split.categorical < old_sizes).all(1)
    for name, ids in split.sequences.items():
        ok &= (ids < base.sequences[name].vocab.size).all(1)
    return ok


def _table_rows(split, keep: np.ndarray) -> TensorTable:
    from polyrec.data.encoders import EncodedSplit

    cols = {k: v[keep] for k, v in split.columns().items()}
    return TensorTable(EncodedSplit.from_columns(cols))


# --- (b) vocabularies grow; old ids unchanged -------------------------------------------------
def test_grow_vocabulary_keeps_old_ids_and_respects_min_freq():
    from polyrec.data.encoders import Vocabulary

    old = Vocabulary.fit(pa.array(["a", "b", "b", "c"]))
    grown = grow_vocabulary(old, pa.array(["z", "y", "y", "b", "x", "x", "x", "w"]), min_freq=2)
    assert grown.tokens[: len(old.tokens)] == old.tokens  # old tokens keep their ids
    assert grown.tokens[len(old.tokens):] == ["x", "y"]  # frequent first; w and z (seen once) stay OOV
    ids = grown.transform(pa.array(["b", "x", "w"]))
    assert ids.tolist() == [old.transform(pa.array(["b"]))[0], old.size, grown.oov_id]


def test_warm_encoders_grow_and_old_ids_keep_their_ids(data, tmp_path):
    run = tmp_path / "old"
    _train(data.config("old.csv"), run)
    base = load_init_run(run).encoders
    new = prepare(data.config("new.csv").data, log=lambda *_: None, base_encoders=base)
    enc = new.encoders
    for f in ("user_id", "item_id"):
        old_v, new_v = base.vocabularies[f], enc.vocabularies[f]
        assert new_v.tokens[: len(old_v.tokens)] == old_v.tokens
        assert new_v.size > old_v.size
    assert enc.vocabularies["user_id"].size == base.vocabularies["user_id"].size + 10
    assert enc.sequences["genres"].vocab.tokens[-1] == "g6"
    assert enc.scalers["price"] == base.scalers["price"]  # the old statistics, not refitted
    # the same raw rows encode to the same ids with both encoders
    table = pa.csv.read_csv(data.dir / "test.csv")
    a, b = base.encode(table), enc.encode(table)
    np.testing.assert_array_equal(a.categorical, b.categorical)
    np.testing.assert_array_equal(a.numeric, b.numeric)
    # a fresh fit of the same data orders ids differently: the base is part of the cache key
    fresh = prepare(data.config("new.csv").data, log=lambda *_: None)
    assert fresh.entry != new.entry


# --- (a) old ids' scores unchanged before the first step; the CLI end to end ---------------------
def test_cli_init_from_scores_old_rows_as_the_old_run(data, tmp_path, monkeypatch):
    monkeypatch.chdir(data.dir)
    base_args = ["--val", "val.csv", "--test", "test.csv", "--epochs", "1", "--quiet",
                 "--set", "train.tensorboard=false", "--set", "train.threads=1", "--set", "train.batch_size=64"]
    r = runner.invoke(app, ["train", "--data", "old.csv", "--schema", "schema.yaml", "--model", "ple",
                            "--out", "old", *base_args])
    assert r.exit_code == 0, (r.output, r.exception)
    # new data, no --schema and no --model: the old run's schema.yaml and model settings
    r = runner.invoke(app, ["train", "--init-from", "old", "--data", "new.csv", "--out", "new", *base_args])
    assert r.exit_code == 0, (r.output, r.exception)
    assert "warm start from" in r.output
    saved = yaml.safe_load((data.dir / "new" / "config.yaml").read_text())
    assert saved["train"]["init_from"] == str(data.dir / "old") and saved["model"]["name"] == "ple"
    ev = runner.invoke(app, ["evaluate", "new", "--json"])  # re-reads its data with the grown encoders
    assert ev.exit_code == 0, (ev.output, ev.exception)

    # before the first step: the warm-started model scores old-id rows exactly as the old run
    old = load_init_run(data.dir / "old")
    cfg = load_config(data.dir / "new" / "config.yaml")
    prepared = prepare(cfg.data, log=lambda *_: None, base_encoders=old.encoders)
    torch.manual_seed(0)
    model = model_for(cfg, prepared)
    transfer_weights(old.model, model)
    keep = _old_rows(prepared, old.encoders)
    assert keep.sum() >= 20
    table = _table_rows(prepared.splits["test"], keep)
    np.testing.assert_allclose(predict_scores(model, table, 256), predict_scores(old.model, table, 256), atol=1e-6)
    # and the new ids' rows are fresh rows, not the old OOV row
    emb = model.embedding.embedding
    user_block = slice(int(emb.offsets[0]) + old.encoders.vocabularies["user_id"].size,
                       int(emb.offsets[1]))
    assert emb.table.weight[user_block].shape[0] == 10
    assert not torch.equal(emb.table.weight[user_block][0], emb.table.weight[int(emb.offsets[0]) + 1])


def test_cli_bad_init_from_is_one_line(data, tmp_path):
    cases = {str(tmp_path / "missing"): "no such run folder"}
    (tmp_path / "empty").mkdir()
    cases[str(tmp_path / "empty")] = "is not a finished polyrec run"
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "config.yaml").write_text("{}\n")
    cases[str(tmp_path / "unfinished")] = "has not finished"
    for folder, words in cases.items():
        r = runner.invoke(app, ["train", "--init-from", folder, "--data", str(data.dir / "new.csv"), "--quiet"])
        assert r.exit_code != 0 and isinstance(r.exception, (PolyrecError, SystemExit))
        assert words in str(r.exception), r.exception
    r = runner.invoke(app, ["train", "--resume", "--out", str(tmp_path / "empty"), "--init-from", str(tmp_path)])
    assert isinstance(r.exception, PolyrecError) and "drop --init-from" in str(r.exception)


def test_corrupt_weights_and_topk_are_refused(data, tmp_path):
    run = tmp_path / "old"
    _train(data.config("old.csv"), run)
    from polyrec.runs import validate_config

    with pytest.raises(PolyrecError, match="CTR-style runs only"):
        validate_config(load_config(base={"topk": {}, "train": {"init_from": str(run)}}))
    (run / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(PolyrecError, match=r"--init-from .*corrupt or truncated"):
        _train(data.config("new.csv", init_from=str(run)), tmp_path / "new")
    assert not (tmp_path / "new").exists()  # a failed start leaves no folder


# --- (c) incompatible schema / model ----------------------------------------------------------
def test_incompatible_schema_and_model_are_refused(data, tmp_path):
    run = tmp_path / "old"
    _train(data.config("old.csv"), run)
    base = load_init_run(run).encoders
    other = Schema.from_dict({**SCHEMA, "tasks": SCHEMA["tasks"][:1]})
    table = pa.csv.read_csv(data.dir / "new.csv")
    with pytest.raises(PolyrecError, match="schema differs .* in tasks"):
        grow_encoders(base, other, table)
    with pytest.raises(PolyrecError, match=r"model differs .*model.name: 'mmoe' -> 'ple'"):
        _train(data.config("new.csv", model="ple", init_from=str(run)), tmp_path / "new")
    # a new scenario in the new training data: per-scenario parameters cannot grow
    (data.dir / "east.csv").write_text(HEADER + rows(40, 5, (0, 20), (0, 30)).replace(",north,", ",east,"))
    with pytest.raises(PolyrecError, match="scenario.*'east'"):
        grow_encoders(base, base.schema, pa.csv.read_csv(data.dir / "east.csv"))


# --- (e) every CTR model warm-starts with identical scores before the first step ------------------
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_warm_starts_with_identical_scores(data, name):
    old_cfg = data.config("old.csv", model=name)
    old_data = prepare(old_cfg.data, log=lambda *_: None)
    torch.manual_seed(1)
    old_model = model_for(old_cfg, old_data)
    with torch.no_grad():  # random, non-default weights everywhere (biases and scales too)
        for p in old_model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    new_cfg = data.config("new.csv", model=name)
    new_data = prepare(new_cfg.data, log=lambda *_: None, base_encoders=old_data.encoders)
    torch.manual_seed(2)
    new_model = model_for(new_cfg, new_data)
    assert sum(new_model.spec.vocab_sizes) > sum(old_model.spec.vocab_sizes)
    transfer_weights(old_model, new_model)
    keep = _old_rows(new_data, old_data.encoders)
    table = _table_rows(new_data.splits["test"], keep)
    old_table = _table_rows(old_data.splits["test"], keep)  # the same rows, encoded by the old encoders
    np.testing.assert_array_equal(table.categorical.numpy(), old_table.categorical.numpy())
    np.testing.assert_allclose(predict_scores(new_model, table, 256), predict_scores(old_model, old_table, 256),
                               atol=1e-6)


# --- a replay: warm-started on the new slice beats the frozen model on the next one ----------------------------
def test_replay_continual_beats_frozen_on_the_next_slice(tmp_path):
    """Clicks driven by a strong per-user taste. Slice A has users 0-29, B users 30-59, C (evaluated) all of them:
    the frozen model (A) scores B's users through the OOV row, a model trained from scratch on B scores A's users
    so, and only the warm-started one (A, then B) knows both."""
    from polyrec.metrics.report import flatten
    from polyrec.runs import train_run
    from polyrec.train.run import load_run
    from polyrec.train.trainer import evaluate_table

    rng = np.random.default_rng(7)
    taste = rng.normal(0, 2.5, 60)
    appeal = rng.normal(0, 0.5, 30)

    def slice_csv(name: str, users: tuple[int, int], n: int) -> Path:
        u, i = rng.integers(*users, n), rng.integers(0, 30, n)
        click = (taste[u] + appeal[i] + rng.logistic(0, 1, n) > 0).astype(int)
        path = tmp_path / name
        path.write_text("user_id,item_id,click\n" + "".join(f"u{a},i{b},{c}\n" for a, b, c in zip(u, i, click)))
        return path

    (tmp_path / "schema.yaml").write_text(yaml.safe_dump({
        "features": [{"name": "user_id", "type": "categorical"}, {"name": "item_id", "type": "categorical"}],
        "tasks": [{"name": "click", "type": "binary"}]}))
    a, b, c = slice_csv("a.csv", (0, 30), 1500), slice_csv("b.csv", (30, 60), 1500), slice_csv("c.csv", (0, 60), 1200)

    def run(path: Path, out: str, init_from: Path | None = None) -> Path:
        cfg = load_config(base={
            "data": {"files": {"path": str(path)}, "schema_file": str(tmp_path / "schema.yaml")},
            "model": {"name": "sharedbottom", "embed_dim": 8},
            "train": {"epochs": 6, "patience": 0, "lr": 0.01, "batch_size": 64, "threads": 1, "progress": False,
                      "tensorboard": False, "init_from": None if init_from is None else str(init_from)}})
        train_run(cfg, tmp_path / out, log=lambda *_: None)
        return tmp_path / out

    frozen = run(a, "frozen")
    continual = run(b, "continual", init_from=frozen)
    scratch = run(b, "scratch")

    def auc(run_dir: Path) -> float:
        r = load_run(run_dir)
        table = TensorTable(r.encoders.encode(pa.csv.read_csv(c)))
        return flatten(evaluate_table(r.model, table, 4096, r.spec.scenario_names))["click/auc"]

    frozen_auc, scratch_auc, continual_auc = auc(frozen), auc(scratch), auc(continual)
    assert max(frozen_auc, scratch_auc) + 0.05 < continual_auc, (frozen_auc, scratch_auc, continual_auc)
