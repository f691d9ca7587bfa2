"""Encoding in chunks (data.chunk_rows, polyrec.data.chunked): streaming fits equal whole-column fits, the split and
the columns do not depend on the chunk size, what needs the whole log is refused, block-shuffled epochs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from typer.testing import CliRunner

from polyrec.cli import app
from polyrec.config import DataConfig
from polyrec.data.batching import BlockTable, TensorTable
from polyrec.data.cache import read_cache
from polyrec.data.chunked import ChunkReader, split_codes
from polyrec.data.encoders import EncodedSplit, Encoders
from polyrec.data.prepare import prepare
from polyrec.data.schema import Schema
from polyrec.data.streaming_fit import StreamingFit
from polyrec.errors import PolyrecError

SCHEMA = {
    "features": [{"name": "user_id", "type": "categorical"}, {"name": "item_id", "type": "categorical", "min_freq": 2},
                 {"name": "shop", "type": "categorical", "hash_buckets": 7},
                 {"name": "price", "type": "numeric", "scale": "log_standard"},
                 {"name": "age", "type": "numeric", "fill": "zero", "scale": "minmax"},
                 {"name": "tags", "type": "sequence", "max_len": 3}],
    "scenario": {"name": "channel"},
    "derive": {"cheap": "list_price < 5"},
    "filter": "item_id <> 'i0'",
    "tasks": [{"name": "click", "type": "binary"}, {"name": "cheap", "type": "binary"}],
    "user": "user_id",
}


def log_table(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    list_price = rng.lognormal(1.5, 1.0, n)
    price = np.where(rng.random(n) < 0.1, np.nan, list_price)  # the feature has holes, the label's input none
    age = rng.integers(18, 70, n).astype(float)
    age[rng.random(n) < 0.2] = np.nan
    tags = ["|".join(f"t{k}" for k in rng.integers(0, 9, rng.integers(0, 5))) for _ in range(n)]
    return pa.table({
        "user_id": rng.integers(0, 40, n), "item_id": [f"i{k}" for k in rng.zipf(1.5, n) % 60],
        "shop": [f"s{k}" for k in rng.integers(0, 25, n)], "price": price, "list_price": list_price, "age": age, "tags": tags,
        "channel": rng.choice(["home", "search", "feed"], n), "click": rng.integers(0, 2, n)})


@pytest.fixture
def shards(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "log"
    folder.mkdir()
    t = log_table(3000)
    for i, start in enumerate(range(0, 3000, 1100)):
        pq.write_table(t.slice(start, 1100), folder / f"part-{i}.parquet", row_group_size=300)
    schema = tmp_path / "schema.yaml"
    schema.write_text(yaml.safe_dump(SCHEMA))
    return folder, schema


def cfg(shards: tuple[Path, Path], **kw) -> DataConfig:
    folder, schema = shards
    return DataConfig(files={"path": str(folder)}, schema_file=str(schema), **kw)


def whole_train(shards: tuple[Path, Path], seed: int) -> pa.Table:
    """The training rows of the chunked split, assembled whole and read the whole path's way."""
    c = cfg(shards, chunk_rows=10 ** 9, split_seed=seed)
    reader = ChunkReader(c.files, Schema.from_yaml(c.schema_file), 10 ** 9, c.ratios, seed)
    chunks = list(reader.chunks())
    table = pa.concat_tables([t for _, t, _ in chunks])
    return table.filter(pa.array(np.concatenate([c for _, _, c in chunks]) == 0))


def test_streaming_fit_equals_whole_fit(shards):
    schema = Schema.from_yaml(shards[1])
    train = whole_train(shards, 3)
    whole = Encoders.fit(schema, train)
    fit = StreamingFit(schema)
    for start in range(0, train.num_rows, 97):  # uneven chunks
        fit.add(train.slice(start, 97))
    stream = fit.encoders()
    a, b = whole.to_dict(), stream.to_dict()
    assert a["vocabularies"] == b["vocabularies"] and a["sequences"] == b["sequences"]
    assert a["scenario"] == b["scenario"]
    assert b["vocabularies"]["shop"]["collisions"] > 0  # 25 shops in 7 buckets
    for name, s in a["scalers"].items():
        for key, v in s.items():
            assert b["scalers"][name][key] == pytest.approx(v, rel=1e-12, abs=1e-12), (name, key)
    enc_w, enc_s = whole.encode(train), stream.encode(train)
    assert np.array_equal(enc_w.categorical, enc_s.categorical)
    np.testing.assert_allclose(enc_w.numeric, enc_s.numeric, rtol=1e-6)


def test_chunked_entry_independent_of_chunk_size(shards, tmp_path, monkeypatch):
    entries = []
    for size in (113, 5000):
        monkeypatch.setenv("POLYREC_CACHE", str(tmp_path / f"cache-{size}"))
        entries.append(prepare(cfg(shards, chunk_rows=size), seed=3, log=lambda m: None))
    a, b = entries
    assert a.meta["rows"] == b.meta["rows"] and sum(a.meta["rows"].values()) < 3000  # the filter dropped i0
    for split in ("train", "val", "test"):
        for name, col in a.splits[split].columns().items():
            np.testing.assert_allclose(col, b.splits[split].columns()[name], rtol=1e-6, err_msg=f"{split}.{name}")
    # the encoded training columns are the whole path's encoding of the same rows
    train = whole_train(shards, 3)
    ref = a.encoders.encode(train)
    assert np.array_equal(np.asarray(a.splits["train"].categorical), ref.categorical)
    assert np.array_equal(np.asarray(a.splits["train"].labels), ref.labels)
    raw = pq.read_table(a.raw_split_path("val"))
    assert raw.num_rows == a.meta["rows"]["val"] and "cheap" in raw.column_names
    assert a.meta["stats"]["val"]["rows"] == a.meta["rows"]["val"]
    # gAUC groups: equal user ids <-> equal hashed ids
    users = np.asarray(a.splits["train"].user)
    assert len(np.unique(users)) == len(set(train["user_id"].to_pylist()))


def test_split_codes_are_a_function_of_the_row_and_match_the_ratios():
    rows = np.arange(200_000)
    codes = split_codes(rows, (0.8, 0.1, 0.1), 7)
    assert np.array_equal(codes[1000:2000], split_codes(rows[1000:2000], (0.8, 0.1, 0.1), 7))
    share = np.bincount(codes, minlength=3) / len(rows)
    np.testing.assert_allclose(share, [0.8, 0.1, 0.1], atol=0.003)
    assert not np.array_equal(codes, split_codes(rows, (0.8, 0.1, 0.1), 8))


@pytest.mark.parametrize("change, words", [
    ({"split": "kfold"}, "whole log"),
    ({"schema": {"history": [{"name": "h", "user": "user_id", "item": "item_id", "time": "ts"}]}}, "history"),
    ({"schema": {"features": [{"name": "price", "type": "numeric", "fill": "median"}]}}, "median"),
    ({"csv": True}, "Parquet"),
])
def test_what_needs_the_whole_log_is_refused(shards, tmp_path, change, words):
    folder, schema_path = shards
    schema = dict(SCHEMA)
    if "schema" in change:
        if "history" in change["schema"]:
            schema["features"] = SCHEMA["features"] + [{"name": "ts", "type": "numeric"}]
            schema["time"] = "ts"
        schema.update(change["schema"])
        schema_path = tmp_path / "changed.yaml"
        schema_path.write_text(yaml.safe_dump(schema))
    if "csv" in change:
        (tmp_path / "log.csv").write_text("user_id,item_id\n1,2\n")
        folder = tmp_path / "log.csv"
    args = ["train", "--data", str(folder), "--schema", str(schema_path), "--set", "data.chunk_rows=100",
            "--epochs", "1", "--out", str(tmp_path / "run")]
    if "split" in change:
        args += ["--set", f"data.split={change['split']}", "--set", "data.folds=2"]
    result = CliRunner().invoke(app, args)
    said = result.output + str(result.exception)  # (main() prints a PolyrecError as one line; test_cli checks it)
    assert result.exit_code != 0 and isinstance(result.exception, PolyrecError) and words in said, said
    assert not (tmp_path / "run" / "metrics.json").exists()


def split_of(n: int) -> EncodedSplit:
    ids = np.arange(n, dtype=np.int32)
    return EncodedSplit(ids[:, None], ids[:, None].astype(np.float32), {}, np.zeros(n, np.int32),
                        (ids % 2)[:, None].astype(np.float32), None)


@pytest.mark.parametrize("window", [64, 10_000])
def test_block_shuffle_covers_every_row_once_in_full_batches(window):
    table = BlockTable(split_of(1000), block_rows=16, window_rows=window)
    seen = [b.categorical[:, 0] for b, _ in table.batches(50, shuffle=True, generator=torch.Generator().manual_seed(1))]
    assert all(len(s) == 50 for s in seen)  # leftovers join the next window
    allrows = torch.cat(seen).numpy()
    assert np.array_equal(np.sort(allrows), np.arange(1000))
    again = [b.categorical[:, 0] for b, _ in table.batches(50, shuffle=True, generator=torch.Generator().manual_seed(1))]
    assert np.array_equal(torch.cat(again).numpy(), allrows)
    if window < 1000:  # a small window keeps rows near their block's neighbours; a full one mixes the epoch
        first = torch.cat(seen[:1]).numpy()
        assert len(np.unique(first // 16)) <= window // 16
    # shares of two processes partition each global batch
    shares = [torch.cat([b.categorical[:, 0] for b, _ in table.batches(
        50, shuffle=True, generator=torch.Generator().manual_seed(1), share=(k, 2))]) for k in (0, 1)]
    assert np.array_equal(np.sort(torch.cat(shares).numpy()), np.arange(1000))
    # sequential batches (evaluation) equal the in-memory table's
    ref = TensorTable(split_of(1000))
    for (a, la), (b, lb) in zip(table.batches(300), ref.batches(300)):
        assert torch.equal(a.categorical, b.categorical) and torch.equal(la, lb)


def test_chunked_training_end_to_end(shards, tmp_path):
    folder, schema = shards
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--data", str(folder), "--schema", str(schema), "--set",
                                      "data.chunk_rows=500", "--set", "data.shuffle_window_rows=600",
                                      "--set", "train.batch_size=128", "--epochs", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert "chunked" in result.output
    assert metrics["test"]["heads"]["cheap"]["auc"] > 0.8  # price is a feature, and `cheap` a threshold on it
    ev = CliRunner().invoke(app, ["evaluate", str(out), "--split", "test"])
    assert ev.exit_code == 0, ev.output


@pytest.mark.parametrize("path", ["data.chunk_rows=500", "data.block_rows=4096"])  # chunked, and the whole path
def test_training_under_torchrun_takes_the_one_process_steps(path, shards, tmp_path):
    """Two processes take the one-process run's global batches (on the chunked path: from the one memory-mapped
    cache entry, block-shuffled), each head's loss is divided by the global batch's row count, and OOV-dropout masks
    are drawn for the global batch, so the metrics are the one-process run's up to float summation order. Batch 100 leaves last
    batches of 93 (whole) and 8 (chunked) training rows: uneven shares, which a per-process mean would weigh
    wrongly. SGD, because Adam turns float-order noise in gradients that are ~0 into steps of up to lr on a few
    weights (4e-4 after one epoch at batch 128 here), which would hide what this test is about."""
    import subprocess
    import sys

    folder, schema = shards
    common = ["train", "--data", str(folder), "--schema", str(schema), "--set", path,
              "--set", "data.shuffle_window_rows=600", "--set", "train.batch_size=100",
              "--set", "train.optimizer=sgd", "--set", "train.lr=0.05",
              "--set", "train.threads=1", "--set", "train.progress=false", "--epochs", "2"]
    runs = {}
    for k in (1, 2):
        head = [sys.executable, "-m", "polyrec"] if k == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "polyrec"]
        done = subprocess.run([*head, *common, "--out", str(tmp_path / f"run{k}")], capture_output=True, text=True,
                              timeout=240)
        assert done.returncode == 0, done.stdout + done.stderr
        runs[k] = json.loads((tmp_path / f"run{k}" / "metrics.json").read_text())
    assert runs[2]["processes"] == 2
    for split in ("val", "test"):
        for head, m in runs[1][split]["heads"].items():
            # AUC to a few tied pairs: scores equal in one run can differ by 1e-9 in the other, and one flipped
            # pair of 300 test rows moves AUC by ~2e-5 (LogLoss, which has no ties, agrees to 1e-9 here)
            assert abs(runs[2][split]["heads"][head]["auc"] - m["auc"]) < 1e-4, (split, head)
            assert abs(runs[2][split]["heads"][head]["logloss"] - m["logloss"]) < 1e-6, (split, head)
