"""Encoders: vocabularies, OOV, min-frequency, numeric fill/scaling, scenarios, sequences, JSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from polyrec.data.encoders import NULL_TOKEN, OOV, PAD, UNKNOWN_SCENARIO, Encoders, Vocabulary
from polyrec.data.schema import Schema

SCHEMA = Schema.from_dict({
    "features": [
        {"name": "user_id", "type": "categorical"},
        {"name": "item_id", "type": "categorical", "min_freq": 2},
        {"name": "age", "type": "numeric", "fill": "mean", "scale": "standard"},
        {"name": "price", "type": "numeric", "fill": "median", "scale": "minmax"},
        {"name": "g_first", "type": "sequence", "column": "genres", "max_len": 3, "keep": "first"},
        {"name": "g_last", "type": "sequence", "column": "genres", "max_len": 3, "keep": "last"},
    ],
    "scenario": {"name": "region"},
    "tasks": [{"name": "click", "type": "binary"}],
    "user": "user_id",
})

TRAIN = pa.table({
    "user_id": ["u1", "u2", "u1", "u3", "u2", "u1"],
    "item_id": ["a", "a", "a", "b", "b", "c"],  # a x3, b x2, c x1 (below min_freq 2)
    "age": [10.0, 20.0, None, 30.0, 20.0, None],
    "price": [1.0, 5.0, 3.0, None, 9.0, 2.0],
    "genres": ["a|b|c|d", "b|c", "", "b", "c|a", "d||b"],
    "region": ["north", "south", "north", "north", "east", "south"],
    "click": [1, 0, 1, 0, 0, 1],
})

TEST = pa.table({
    "user_id": ["u1", "u9", "u3"],
    "item_id": ["c", "zzz", "b"],  # c: seen once in train (cut), zzz: never seen
    "age": [None, 40.0, 1000.0],
    "price": [None, 100.0, 0.0],
    "genres": ["a|b|c|d|x", "x|y", "d"],
    "region": ["west", "south", "north"],  # west: unseen scenario
    "click": [0, 1, 1],
})


@pytest.fixture
def enc() -> Encoders:
    return Encoders.fit(SCHEMA, TRAIN)


def _vocab_ids(vocab: Vocabulary, tokens: list[str]) -> list[int]:
    return vocab.transform(pa.array(tokens)).tolist()


def test_vocabulary_reserved_ids_oov_and_frequency_order(enc):
    v = enc.vocabularies["user_id"]
    assert v.reserved == (PAD, OOV) and v.oov_id == 1
    assert v.tokens == ["u1", "u2", "u3"]  # frequent first: u1 x3, u2 x2, u3 x1
    assert _vocab_ids(v, ["u1", "u2", "u3", "never-seen"]) == [2, 3, 4, 1]
    assert v.size == 5


def test_min_freq_cut_maps_rare_values_to_oov(enc):
    v = enc.vocabularies["item_id"]
    assert v.tokens == ["a", "b"]  # c occurs once < min_freq 2
    assert _vocab_ids(v, ["a", "b", "c", "zzz"]) == [2, 3, 1, 1]


def test_unseen_categorical_values_encode_as_oov(enc):
    out = enc.encode(TEST)
    cat_fields = enc.categorical_fields
    users = out.categorical[:, cat_fields.index("user_id")]
    items = out.categorical[:, cat_fields.index("item_id")]
    assert users.tolist() == [2, 1, 4]  # u9 unseen -> OOV
    assert items.tolist() == [1, 1, 3]


def test_ids_canonicalised_across_int_float_and_string_columns():
    schema = Schema.from_dict({"features": [{"name": "item", "type": "categorical"}],
                               "tasks": [{"name": "y"}]})
    e = Encoders.fit(schema, pa.table({"item": pa.array([3, 5, 3], pa.int64()), "y": [0, 1, 0]}))
    ids_float = e.encode(pa.table({"item": pa.array([3.0, 5.0, float("nan")]), "y": [0, 0, 1]})).categorical[:, 0]
    ids_str = e.encode(pa.table({"item": ["3", "5", "7"], "y": [0, 0, 1]})).categorical[:, 0]
    assert ids_float.tolist() == [2, 3, 1]  # 3.0 == 3; NaN is missing -> OOV
    assert ids_str.tolist() == [2, 3, 1]


def test_numeric_fill_and_scaling_use_training_statistics_only(enc):
    age = enc.scalers["age"]
    # train ages 10, 20, NaN, 30, 20, NaN -> mean of observed 20 fills NaN; then standardised
    filled = np.array([10, 20, 20, 30, 20, 20], dtype=np.float64)
    assert age.fill_value == pytest.approx(20.0)
    assert age.shift == pytest.approx(filled.mean()) and age.scale == pytest.approx(filled.std())
    price = enc.scalers["price"]
    # observed prices 1, 5, 3, 9, 2 -> median 3 fills; minmax over 1..9
    assert price.fill_value == pytest.approx(3.0)
    assert (price.shift, price.scale) == (pytest.approx(1.0), pytest.approx(8.0))

    before = json.dumps(enc.to_dict(), sort_keys=True)
    out = enc.encode(TEST)
    assert json.dumps(enc.to_dict(), sort_keys=True) == before  # encoding never refits
    ages = out.numeric[:, 0]
    np.testing.assert_allclose(ages, (np.array([20.0, 40.0, 1000.0]) - filled.mean()) / filled.std(), rtol=1e-6)
    np.testing.assert_allclose(out.numeric[:, 1], (np.array([3.0, 100.0, 0.0]) - 1.0) / 8.0, rtol=1e-6)
    # refitting with the test rows included would change the statistics: the check above can fail
    both = Encoders.fit(SCHEMA, pa.concat_tables([TRAIN, TEST]))
    assert both.scalers["age"].fill_value != pytest.approx(age.fill_value)


def test_log_standard_and_no_scaling():
    schema = Schema.from_dict({"features": [
        {"name": "a", "type": "numeric", "fill": "zero", "scale": "log_standard"},
        {"name": "b", "type": "numeric", "fill": "zero", "scale": "none"}], "tasks": [{"name": "y"}]})
    train = pa.table({"a": [0.0, 9.0, 99.0, None], "b": [1.5, None, -2.0, 4.0], "y": [0, 1, 0, 1]})
    e = Encoders.fit(schema, train)
    logged = np.log1p(np.array([0.0, 9.0, 99.0, 0.0]))
    out = e.encode(train).numeric
    np.testing.assert_allclose(out[:, 0], (logged - logged.mean()) / logged.std(), rtol=1e-6)
    np.testing.assert_allclose(out[:, 1], [1.5, 0.0, -2.0, 4.0])


def test_unseen_scenario_maps_to_id_zero(enc):
    assert enc.scenario_names[0] == UNKNOWN_SCENARIO
    out = enc.encode(TEST)
    names = enc.scenario_names
    assert out.scenario[0] == 0  # west never seen in training
    assert names[out.scenario[1]] == "south" and names[out.scenario[2]] == "north"
    assert set(enc.scenario.tokens) == {"north", "south", "east"}
    # the scenario is also the last embedded categorical field, with the same ids
    assert enc.categorical_fields[-1] == "region"
    np.testing.assert_array_equal(out.categorical[:, -1], out.scenario)
    assert enc.vocab_sizes()[-1] == len(names) == 4


def _decoded(enc: Encoders, name: str, ids: np.ndarray) -> list[list[str]]:
    """Each row's non-padding tokens, in order."""
    vocab = enc.sequences[name].vocab
    return [vocab.decode(row[row != 0]) for row in ids]


def test_sequences_pad_and_truncate_keeping_first_or_last(enc):
    out = enc.encode(TEST)
    first, last = out.sequences["g_first"], out.sequences["g_last"]
    assert first.shape == last.shape == (3, 3)
    assert first.dtype == np.int32
    # 'a|b|c|d|x' is cut to 3 tokens: the first three, or the last three (x unseen -> OOV)
    assert _decoded(enc, "g_first", first)[0] == ["a", "b", "c"]
    assert _decoded(enc, "g_last", last)[0] == ["c", "d", OOV]
    # shorter sequences are padded with id 0 after their tokens, in both modes
    assert _decoded(enc, "g_first", first)[1] == [OOV, OOV]
    assert _decoded(enc, "g_last", last)[2] == ["d"]
    assert (first[1] == 0).sum() == 1 and (last[2] == 0).sum() == 2
    for ids in (first, last):  # padding only at the end of a row
        for row in ids:
            nz = np.flatnonzero(row == 0)
            assert nz.size == 0 or (row[nz[0]:] == 0).all()


def test_sequences_empty_and_doubled_separators(enc):
    out = enc.encode(TRAIN)
    seqs = _decoded(enc, "g_first", out.sequences["g_first"])
    assert seqs[2] == []  # '' -> all padding
    assert seqs[5] == ["d", "b"]  # 'd||b': the empty token is dropped, not an OOV
    assert NULL_TOKEN not in enc.sequences["g_first"].vocab.tokens and "" not in enc.sequences["g_first"].vocab.tokens


def test_sequence_from_list_column():
    schema = Schema.from_dict({"features": [{"name": "s", "type": "sequence", "max_len": 2, "keep": "last"}],
                               "tasks": [{"name": "y"}]})
    train = pa.table({"s": pa.array([["a", "b", "c"], [], None]), "y": [0, 1, 0]})
    e = Encoders.fit(schema, train)
    out = e.encode(train).sequences["s"]
    assert [e.sequences["s"].vocab.decode(r[r != 0]) for r in out] == [["b", "c"], [], []]


def test_json_round_trip_gives_identical_encodings(enc, tmp_path):
    clone = Encoders.from_dict(json.loads(json.dumps(enc.to_dict())))
    enc.save(tmp_path / "encoders.json")
    loaded = Encoders.load(tmp_path / "encoders.json")
    a = enc.encode(TEST).columns()
    for other in (clone, loaded):
        b = other.encode(TEST).columns()
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
            assert a[k].dtype == b[k].dtype
    assert loaded.to_dict() == enc.to_dict()
    assert loaded.vocab_sizes() == enc.vocab_sizes() and loaded.scenario_names == enc.scenario_names


def test_no_test_value_enters_any_vocabulary(enc):
    enc.encode(TEST)
    test_only = {"u9", "zzz", "x", "y", "west"}
    tokens = set(enc.scenario.tokens)
    for v in enc.vocabularies.values():
        tokens |= set(v.tokens)
    for s in enc.sequences.values():
        tokens |= set(s.vocab.tokens)
    assert not tokens & test_only


def test_prepared_vocabularies_and_statistics_come_from_train_split_only(tiny_recipe):
    """On a prepared dataset: vocabularies equal the training split's values; test-only ids are OOV."""
    from helpers import quiet

    from polyrec.config import DataConfig
    from polyrec.data.prepare import prepare

    data = prepare(DataConfig(dataset=tiny_recipe.name), seed=3, log=quiet)
    train = pq.read_table(data.raw_split_path("train"))
    test = pq.read_table(data.raw_split_path("test"))
    train_items = {str(v) for v in train["item_id"].to_pylist()}
    vocab = data.encoders.vocabularies["item_id"]
    assert set(vocab.tokens) == train_items
    test_only = [i for i, v in enumerate(test["item_id"].to_pylist()) if str(v) not in train_items]
    assert test_only, "the long-tailed synthetic data should have test-only items"
    col = data.encoders.categorical_fields.index("item_id")
    assert (data.splits["test"].categorical[test_only, col] == vocab.oov_id).all()
    x = np.array(train["x"].to_numpy(zero_copy_only=False), dtype=np.float64)
    assert data.encoders.scalers["x"].fill_value == pytest.approx(np.nanmean(x))
    x_all = np.concatenate([x, np.array(test["x"].to_numpy(zero_copy_only=False), dtype=np.float64)])
    assert np.nanmean(x_all) != pytest.approx(np.nanmean(x))  # the check can tell the difference
