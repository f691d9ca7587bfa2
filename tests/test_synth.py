"""`polyrec datasets synth` (a seeded, chunked synthetic log with a planted signal) and hashed ids
(`hash_buckets`: a stable FNV-1a hash instead of a stored vocabulary)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from typer.testing import CliRunner

from polyrec.cli import app
from polyrec.data.encoders import Encoders, HashedVocabulary, Vocabulary, fnv1a64
from polyrec.data.grow import grow_vocabulary
from polyrec.data.schema import Schema
from polyrec.data.synth import AucHistogram, Streams, schema_dict, synthesize, zipf_ranks
from polyrec.errors import PolyrecError

runner = CliRunner()


@pytest.fixture(autouse=True)
def one_thread():
    """The machine is shared: train on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def content_hash(folder: Path) -> str:
    """A hash of the shards' data (all rows, in order), not of the file bytes."""
    table = pa.concat_tables([pq.read_table(p) for p in sorted(folder.glob("part-*.parquet"))])
    h = hashlib.sha256(str(table.schema).encode())
    for name in table.column_names:
        col = table[name].combine_chunks()
        h.update(np.asarray(col.to_numpy(zero_copy_only=False)).astype(str if col.type == pa.string() else None
                                                                        ).tobytes())
    return h.hexdigest()


# --- the generator ------------------------------------------------------------------------------------
def test_same_arguments_same_data_whatever_the_chunk_size(tmp_path):
    a = synthesize(tmp_path / "a", rows=12_000, users=300, items=800, scenarios=3, tasks=2, seed=5, chunk_rows=1000)
    b = synthesize(tmp_path / "b", rows=12_000, users=300, items=800, scenarios=3, tasks=2, seed=5, chunk_rows=5000)
    c = synthesize(tmp_path / "c", rows=12_000, users=300, items=800, scenarios=3, tasks=2, seed=6, chunk_rows=5000)
    assert a["shards"] == 12 and b["shards"] == 3 and b["rows_per_shard"] == [5000, 5000, 2000]
    assert len(list((tmp_path / "a").glob("part-*.parquet"))) == 12
    schemas = {str(pq.read_schema(p)) for d in "ab" for p in (tmp_path / d).glob("part-*.parquet")}
    assert len(schemas) == 1
    assert sum(pq.read_metadata(p).num_rows for p in (tmp_path / "a").glob("part-*.parquet")) == 12_000
    assert content_hash(tmp_path / "a") == content_hash(tmp_path / "b") != content_hash(tmp_path / "c")
    assert a["bayes_auc"] == b["bayes_auc"] and a["positive_rate"] == b["positive_rate"]
    info = json.loads((tmp_path / "a" / "synth.json").read_text())
    assert info["arguments"]["seed"] == 5 and info["rows_per_shard"] == [1000] * 12
    for t in ("task0", "task1"):
        assert 0.65 < info["bayes_auc"][t] < 0.99
    assert 0.05 < info["positive_rate"]["task0"] < 0.6
    assert yaml.safe_load((tmp_path / "a" / "schema.yaml").read_text()) == schema_dict(2)


def test_columns_ids_and_nesting(tmp_path):
    synthesize(tmp_path / "d", rows=20_000, users=50, items=100, scenarios=4, tasks=3, seed=1, chunk_rows=20_000)
    t = pq.read_table(tmp_path / "d" / "part-00000.parquet")
    assert t.column_names == ["user_id", "item_id", "scenario", "category", "segment", "price", "ts",
                              "task0", "task1", "task2"]
    users, items = t["user_id"].to_numpy(), t["item_id"].to_numpy()
    assert users.min() >= 0 and users.max() < 50 and items.min() >= 0 and items.max() < 100
    counts = np.bincount(items, minlength=100)
    assert counts[0] > counts[10] > counts[99]  # Zipf: rank 1 the most popular
    assert set(t["scenario"].to_pylist()) == {"s0", "s1", "s2", "s3"}
    np.testing.assert_array_equal(t["category"].to_numpy(), items % 50)
    assert (np.diff(t["ts"].to_numpy()) > 0).all()
    y = np.stack([t[f"task{k}"].to_numpy() for k in range(3)], 1)
    assert ((y[:, 1] <= y[:, 0]) & (y[:, 2] <= y[:, 0])).all() and y[:, 1].sum() > 0  # nested in the click
    Schema.from_dict(schema_dict(3))  # a valid polyrec schema


def test_memory_is_flat_in_the_row_count(tmp_path):
    """numpy's peak traced allocation is that of one chunk: 8x the rows, about the same peak."""
    import tracemalloc

    synthesize(tmp_path / "warm", rows=100, users=10, items=10)  # imports (yaml, parquet writer) out of the way
    peaks = []
    for rows in (10_000, 80_000):
        tracemalloc.start()
        synthesize(tmp_path / f"m{rows}", rows=rows, users=1000, items=1000, chunk_rows=5000)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.3 * peaks[0], peaks


def test_auc_histogram_matches_the_exact_auc():
    rng = np.random.default_rng(0)
    p = rng.random(50_000)
    y = rng.random(50_000) < p
    h = AucHistogram()
    for part in np.array_split(np.arange(50_000), 7):  # chunk-wise
        h.add(p[part], y[part])
    order = np.argsort(p)
    ranks = np.empty(len(p))
    ranks[order] = np.arange(1, len(p) + 1)
    n1 = y.sum()
    exact = (ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * (len(p) - n1))
    assert h.auc() == pytest.approx(exact, abs=1e-3)
    assert AucHistogram().auc() is None


def test_streams_and_zipf_are_pure_functions_of_their_inputs():
    s = Streams(3)
    idx = np.arange(10, 20)
    np.testing.assert_array_equal(s.uniform("row", idx, 0)[5:], s.uniform("row", idx[5:], 0))
    assert not np.array_equal(s.uniform("row", idx, 0), s.uniform("row", idx, 1))
    assert not np.array_equal(s.uniform("row", idx, 0), s.uniform("user", idx, 0))
    assert not np.array_equal(s.uniform("row", idx, 0), Streams(4).uniform("row", idx, 0))
    u = s.uniform("row", np.arange(100_000), 0)
    assert 0 < u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    r = zipf_ranks(u, 1000, 1.1)
    assert r.min() == 0 and r.max() < 1000
    assert zipf_ranks(u[:5], 1, 1.1).tolist() == [0] * 5


def test_refuses_an_existing_folder_and_bad_arguments(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    with pytest.raises(PolyrecError, match="already exists and is not an empty folder"):
        synthesize(tmp_path / "full", rows=10, users=2, items=2)
    assert (tmp_path / "full" / "x").read_text() == "keep"
    (tmp_path / "empty").mkdir()
    synthesize(tmp_path / "empty", rows=10, users=2, items=2, chunk_rows=4)  # an empty folder is fine
    assert len(list((tmp_path / "empty").glob("part-*"))) == 3
    for kwargs, msg in (({"rows": 0}, "--rows must be a positive integer"),
                        ({"users": -1}, "--users must be"), ({"tasks": 0}, "--tasks must be"),
                        ({"scenarios": 0}, "--scenarios must be"), ({"chunk_rows": 0}, "--chunk-rows must be"),
                        ({"tasks": 99}, "at most 16"), ({"seed": -1}, "--seed must be")):
        args = {"rows": 10, "users": 2, "items": 2, **kwargs}
        with pytest.raises(PolyrecError, match=msg):
            synthesize(tmp_path / "bad", **args)
    assert not (tmp_path / "bad").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind


def test_cli_error_is_one_line_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-c", "from polyrec.cli import main; main()", "datasets", "synth",
                        "--rows", "0", "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == ["error: --rows must be a positive integer, got 0."]


# --- end to end: synth -> train ------------------------------------------------------------------------
TRAIN_ARGS = ["--model", "mmoe", "--epochs", "2", "--quiet", "--set", "train.tensorboard=false",
              "--set", "train.batch_size=256", "--set", "train.lr=0.003"]


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "log"
    r = runner.invoke(app, ["datasets", "synth", "--rows", "20000", "--users", "300", "--items", "500",
                            "--chunk-rows", "7000", "--seed", "0", "--out", str(out)])
    assert r.exit_code == 0, (r.output, r.exception)
    assert "20000 rows in 3 Parquet shard(s)" in r.output and "planted (Bayes) AUC: task0 0." in r.output
    return out


def test_trains_end_to_end_near_the_planted_auc(synth_dir, tmp_path):
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", "--data", str(synth_dir), "--schema", str(synth_dir / "schema.yaml"),
                            "--out", str(run), *TRAIN_ARGS])
    assert r.exit_code == 0, (r.output, r.exception)
    auc = json.loads((run / "metrics.json").read_text())["test"]["heads"]["task0"]["auc"]
    bayes = json.loads((synth_dir / "synth.json").read_text())["bayes_auc"]["task0"]
    assert 0.6 < auc < bayes + 0.03, (auc, bayes)


def test_trains_and_predicts_with_hashed_ids(synth_dir, tmp_path):
    schema = schema_dict(2)
    schema["features"][0]["hash_buckets"] = 64  # 300 users into 64 buckets: collisions
    schema["features"][1]["hash_buckets"] = 4096
    (tmp_path / "schema.yaml").write_text(yaml.safe_dump(schema))
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", "--data", str(synth_dir), "--schema", str(tmp_path / "schema.yaml"),
                            "--out", str(run), *TRAIN_ARGS])
    assert r.exit_code == 0, (r.output, r.exception)
    assert "user_id: " in r.output and "hashed into 64 buckets" in r.output
    enc = json.loads((run / "encoders.json").read_text())
    users = enc["vocabularies"]["user_id"]
    assert users["hash"] == "fnv1a64" and users["buckets"] == 64 and users["collisions"] > 0
    assert users["collisions"] <= users["distinct"] - 1 and "tokens" not in users
    assert json.loads((run / "metrics.json").read_text())["test"]["heads"]["task0"]["auc"] > 0.6
    rows = pq.read_table(synth_dir / "part-00000.parquet").slice(0, 50).drop_columns(["task0", "task1"])
    pq.write_table(rows, tmp_path / "in.parquet")
    r = runner.invoke(app, ["predict", str(run), "--input", str(tmp_path / "in.parquet"),
                            "--output", str(tmp_path / "out.parquet")])
    assert r.exit_code == 0, (r.output, r.exception)
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 50
    # serving's request encoder falls back to Encoders.encode for hashed vocabularies: same ids
    from polyrec.serve.lookup import RequestEncoder

    encoders = Encoders.load(run / "encoders.json")
    req = RequestEncoder(encoders)
    assert not req.usable
    np.testing.assert_array_equal(req.encode(rows).categorical, encoders.encode(rows, with_labels=False).categorical)


# --- hashed ids ------------------------------------------------------------------------------------------
def test_fnv1a64_is_pinned():
    """Published FNV-1a 64 test vectors, plus pinned buckets: a change of implementation is caught."""
    h = fnv1a64(pa.array(["", "a", "foobar"]))
    assert h.tolist() == [0xCBF29CE484222325, 0xAF63DC4C8601EC8C, 0x85944171F73967E8]
    v = HashedVocabulary(1000)
    assert v.transform(pa.array(["u1", "u2", "12", "héllo", None])).tolist() == [309, 520, 820, 818, 1]
    assert v.transform(pa.array(["a", "b", "c"])).tolist() == [
        2 + int(x) % 1000 for x in fnv1a64(pa.array(["a", "b", "c"]))]


def test_ints_strings_chunks_and_slices_agree():
    v = HashedVocabulary(97)
    strings = v.transform(pa.array(["12", "7", None, "123456789012"]))
    np.testing.assert_array_equal(v.transform(pa.array([12, 7, None, 123456789012])), strings)
    np.testing.assert_array_equal(v.transform(pa.array([12.0, 7.0, None, 123456789012.0])), strings)
    chunked = pa.chunked_array([pa.array(["12", "7"]), pa.array([None, "123456789012"])])
    np.testing.assert_array_equal(v.transform(chunked), strings)
    np.testing.assert_array_equal(v.transform(pa.array(["x", "12", "7"])[1:]), strings[:2])
    np.testing.assert_array_equal(v.transform(pa.array(["12", "7"], pa.large_string())), strings[:2])
    assert strings[2] == v.oov_id == 1 and (strings[[0, 1, 3]] >= 2).all() and (strings < v.size).all()


def test_collision_count_on_a_constructed_example():
    ids = [f"id{k}" for k in range(40)]
    buckets = fnv1a64(pa.array(ids)) % np.uint64(8)
    expected = 40 - len(set(buckets.tolist()))
    values = pa.array(ids + ids[:10] + [None, None])  # repeats and nulls change nothing
    v = HashedVocabulary.fit(values, 8)
    assert (v.distinct, v.collisions) == (40, expected) and expected >= 32
    assert HashedVocabulary.fit(pa.array(["a", "b", "c", "a"]), 1).collisions == 2
    one = HashedVocabulary.fit(pa.array(["a", "b", "c"]), 1 << 40)
    assert one.collisions == 0 and one.size == 2 + (1 << 40)
    assert HashedVocabulary.from_dict(json.loads(json.dumps(v.to_dict()))) == v
    with pytest.raises(PolyrecError, match="Unknown id hash"):
        HashedVocabulary.from_dict({**v.to_dict(), "hash": "md5"})


def test_schema_option_and_encoders_round_trip():
    base = {"features": [{"name": "u", "type": "categorical"}, {"name": "i", "type": "categorical",
                                                                 "hash_buckets": 16}],
            "tasks": [{"name": "c"}]}
    s = Schema.from_dict(base)
    dumped = s.model_dump(mode="json")["features"]
    assert "hash_buckets" not in dumped[0] and dumped[1]["hash_buckets"] == 16  # old schema dumps unchanged
    with pytest.raises(PolyrecError, match="min_freq does not apply to hashed ids"):
        Schema.from_dict({**base, "features": [{"name": "u", "type": "categorical", "hash_buckets": 4,
                                                "min_freq": 2}]})
    with pytest.raises(PolyrecError, match="hash_buckets"):
        Schema.from_dict({**base, "features": [{"name": "u", "type": "categorical", "hash_buckets": 0}]})
    table = pa.table({"u": ["a", "b", "a"], "i": ["x", "y", "zz"], "c": [0, 1, 1]})
    enc = Encoders.fit(s, table)
    assert isinstance(enc.vocabularies["u"], Vocabulary) and isinstance(enc.vocabularies["i"], HashedVocabulary)
    assert enc.vocab_sizes() == [4, 18]
    again = Encoders.from_dict(json.loads(json.dumps(enc.to_dict())))
    new = pa.table({"u": ["a", "q"], "i": ["never-seen", None], "c": [0, 1]})
    np.testing.assert_array_equal(again.encode(new).categorical, enc.encode(new).categorical)
    assert enc.encode(new).categorical[:, 1].tolist()[1] == 1  # null -> 1; an unseen id gets its bucket
    assert grow_vocabulary(enc.vocabularies["i"], new["i"]) is enc.vocabularies["i"]
