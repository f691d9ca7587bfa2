"""Bad input is reported as PolyrecError with a message that says what is wrong and how to fix it."""

from __future__ import annotations

import pyarrow as pa
import pytest

from polyrec.config import load_config
from polyrec.data.encoders import Encoders
from polyrec.data.schema import Schema
from polyrec.errors import PolyrecError

SCHEMA = Schema.from_dict({
    "features": [{"name": "user_id", "type": "categorical"}, {"name": "age", "type": "numeric"}],
    "tasks": [{"name": "click", "type": "binary"}, {"name": "rating", "type": "regression"}],
})


def _table(**over):
    cols = {"user_id": ["a", "b", "c", "d", "e"], "age": [1.0, 2.0, 3.0, None, 5.0],
            "click": [0, 1, 1, 0, 1], "rating": [1.0, 2.0, 3.0, 4.0, 5.0]}
    cols.update(over)
    return pa.table(cols)


def test_missing_column_is_named_with_close_match():
    t = _table().rename_columns(["userid", "age", "click", "rating"])
    with pytest.raises(PolyrecError) as exc:
        Encoders.fit(SCHEMA, t)
    msg = str(exc.value)
    assert "'user_id'" in msg and "Did you mean 'userid'" in msg
    enc = Encoders.fit(SCHEMA, _table())
    with pytest.raises(PolyrecError, match=r"prediction input.*'age'"):  # also at prediction time
        enc.encode(pa.table({"user_id": ["a"]}), with_labels=False, what="The prediction input")


def test_binary_label_outside_0_1_reported_with_counts():
    with pytest.raises(PolyrecError) as exc:
        Encoders.fit(SCHEMA, _table()).encode(_table(click=[0, 2, 2, -1, 1]))
    msg = str(exc.value)
    assert "'click'" in msg and "3 other values" in msg
    assert "2: 2" in msg and "-1: 1" in msg


def test_missing_label_values_reported():
    with pytest.raises(PolyrecError, match=r"'rating' has 2 missing values"):
        Encoders.fit(SCHEMA, _table()).encode(_table(rating=[1.0, None, 3.0, None, 5.0]))


def test_non_numeric_numeric_column():
    with pytest.raises(PolyrecError, match=r"Numeric column 'age' holds non-numeric values"):
        Encoders.fit(SCHEMA, _table(age=["1", "2", "three", "4", "5"]))
    enc = Encoders.fit(SCHEMA, _table())
    with pytest.raises(PolyrecError, match=r"'age' holds non-numeric"):
        enc.encode(_table(age=["1", "x", "3", "4", "5"]))


def test_infinite_numeric_values_rejected():
    with pytest.raises(PolyrecError, match=r"'age' holds 1 infinite"):
        Encoders.fit(SCHEMA, _table(age=[1.0, float("inf"), 3.0, 4.0, 5.0]))


def test_unknown_config_key_with_close_match():
    with pytest.raises(PolyrecError) as exc:
        load_config(None, ["train.lrr=0.01"])
    assert "unknown key 'train.lrr'" in str(exc.value) and "Did you mean 'lr'" in str(exc.value)
    with pytest.raises(PolyrecError, match=r"Unknown config section 'trian'.*Did you mean 'train'"):
        load_config(None, ["trian.lr=0.01"])
    assert load_config(None, ["train.lr=0.01"]).train.lr == 0.01  # the right key works


def test_unknown_config_key_in_yaml_file(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("train:\n  epocs: 3\n")
    with pytest.raises(PolyrecError, match=r"unknown key 'train.epocs'.*Did you mean 'epochs'"):
        load_config(p)


def test_unknown_model_name_and_model_param_with_close_match():
    from polyrec.models import ModelSpec, build_model, get_model_class
    from polyrec.data.spec import TaskInfo

    with pytest.raises(PolyrecError, match=r"Unknown model 'mmeo'.*Did you mean 'mmoe'"):
        get_model_class("mmeo")
    spec = ModelSpec([5], ["a"], [], {}, ["all"], [TaskInfo("y", "binary")])
    with pytest.raises(PolyrecError, match=r"unknown key 'n_expert'.*Did you mean 'n_experts'"):
        build_model("mmoe", spec, 4, {"n_expert": 2})


def test_unknown_dataset_with_close_match():
    from polyrec.data.prepare import get_recipe

    with pytest.raises(PolyrecError, match=r"Unknown dataset 'movielens-10k'.*Did you mean 'movielens-100k'"):
        get_recipe("movielens-10k")


def test_unknown_schema_key_with_close_match():
    with pytest.raises(PolyrecError, match=r"unknown key.*min_frq.*Did you mean 'min_freq'"):
        Schema.from_dict({"features": [{"name": "u", "type": "categorical", "min_frq": 2}],
                          "tasks": [{"name": "y"}]})


def test_label_used_as_feature_rejected():
    with pytest.raises(PolyrecError, match=r"leak"):
        Schema.from_dict({"features": [{"name": "click", "type": "numeric"}], "tasks": [{"name": "click2",
                          "column": "click"}]})


def test_missing_data_files_are_named(tmp_path, monkeypatch):
    from polyrec.config import DataConfig
    from polyrec.data.prepare import prepare

    monkeypatch.setenv("POLYREC_DATA", str(tmp_path))
    with pytest.raises(PolyrecError) as exc:
        prepare(DataConfig(dataset="movielens-100k"), download=False, log=lambda s: None)
    msg = str(exc.value)
    assert str(tmp_path / "ml-100k" / "ml-100k.inter") in msg and "POLYREC_DATA" in msg

    (tmp_path / "ml-1m").mkdir()
    (tmp_path / "ml-1m" / "users.dat").write_text("1::F::1::10::48067\n")
    (tmp_path / "ml-1m" / "movies.dat").write_text("1::Toy Story (1995)::Animation\n")
    with pytest.raises(PolyrecError) as exc:
        prepare(DataConfig(dataset="movielens-1m"), download=False, log=lambda s: None)
    msg = str(exc.value)
    assert "ratings.dat" in msg and "users.dat" not in msg  # names exactly what is missing


def test_missing_run_folder_files(tmp_path):
    from polyrec.train.run import load_run

    with pytest.raises(PolyrecError, match=r"config.yaml is missing"):
        load_run(tmp_path)
