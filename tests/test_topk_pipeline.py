"""Top-K runs on the one data path: your own interaction files, the course-recommendation recipes, the
schema's filter, and configs written before the split moved to data.*."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from helpers import quiet, require_dataset, run_cli

from polyrec.config import load_config
from polyrec.data.derive import transform_raw
from polyrec.data.schema import Schema
from polyrec.errors import PolyrecError
from polyrec.runs import train_run
from polyrec.topk.data import load_topk

EXAMPLE_SCHEMA = Path(__file__).resolve().parents[1] / "examples" / "ml-100k-topk" / "schema.yaml"
FAST = ["model.name=mf", "train.epochs=1", "train.threads=1", "train.progress=false", "train.tensorboard=false",
        "topk.kg=false", "train.seed=3"]


def _topk(*sets: str):
    return load_config(None, list(sets), base={"topk": {}})


@pytest.mark.slow
def test_own_interaction_file_gives_exactly_the_recipe_metrics(polyrec_env, tmp_path):
    require_dataset("movielens-100k")
    from polyrec.settings import data_dir

    inter = data_dir() / "ml-100k" / "ml-100k.inter"
    recipe = train_run(_topk(*FAST), tmp_path / "recipe", log=quiet).metrics
    code, out, err = run_cli("train", "--topk", "--data", str(inter), "--schema", str(EXAMPLE_SCHEMA),
                             "--out", str(tmp_path / "files"), "--set", "data.files.format=tsv",
                             "--set", "data.files.columns=[user_id,item_id,rating,timestamp]",
                             *[a for s in FAST for a in ("--set", s)])
    assert code == 0, err
    files = json.loads((tmp_path / "files" / "metrics.json").read_text())
    assert files["dataset"] == "files" and recipe["dataset"] == "movielens-100k"
    assert files["val"] == recipe["val"] and files["test"] == recipe["test"]  # the same numbers, not close ones
    assert files["rows"] == recipe["rows"] == {"train": 60_000, "val": 20_000, "test": 20_000}
    # the run folder works from anywhere: evaluate re-reads the file through the recorded absolute path
    code, out, err = run_cli("evaluate", str(tmp_path / "files"), "--json")
    assert code == 0 and json.loads(out)["heads"] == files["test"]["heads"]


def test_mooccube_recipe_single_task_with_its_kg(polyrec_env, tmp_path):
    require_dataset("mooccube")
    data = load_topk(_topk("data.dataset=mooccube"), download=False, log=quiet)
    assert data.task_names == ["enrol"] and (data.n_users, data.n_items) == (7157, 219)
    # the label-0 rows (KGAN's sampled negatives) are dropped; 32,086 observed enrolments remain
    assert sum(len(s) for s in data.splits.values()) == 32_086
    assert all((s.labels == 1).all() for s in data.splits.values())
    assert data.graph is not None and data.meta["kg"]["n_kg_triples"] == 17_893
    res = train_run(_topk("data.dataset=mooccube", "model.name=waata", "model.layer_dims=[8]", "model.embed_dim=8", "model.expert_dims=[8]", "model.tower_dims=[4]",
                          "train.epochs=1", "train.threads=1", "train.progress=false", "train.tensorboard=false"),
                    tmp_path / "waata", log=quiet)
    assert res.metrics["kind"] == "topk" and set(res.metrics["test"]["heads"]) == {"enrol"}


def test_mooccube_has_no_ctr_schema(polyrec_env, tmp_path):
    require_dataset("mooccube")
    code, _, err = run_cli("train", "--dataset", "mooccube", "--out", str(tmp_path / "ctr"))
    assert code == 2 and "no built-in schema for CTR-style runs" in err


def test_mooccubex_loads_with_its_kg_and_leave_last_out(polyrec_env):
    require_dataset("mooccubex")
    data = load_topk(_topk("data.dataset=mooccubex", "data.split=leave_last_out"), download=False, log=quiet)
    assert (data.n_users, data.n_items) == (97_722, 3_321)
    assert len(data.splits["test"]) == len(data.splits["val"]) == 97_722  # every user has >= 5 enrolments
    kg = data.meta["kg"]
    # the synthetic sentence-similarity relation is left out by default: 63,470 - 5,576 triples
    assert kg["n_kg_triples"] == 63_470 - 5_576 and kg["items_with_link"] == 3_321


def test_bench_topk_on_a_course_recipe(polyrec_env, tmp_path):
    require_dataset("mooccube")
    code, out, err = run_cli("bench", "--dataset", "mooccube", "--topk", "--models", "mf,kgat", "--seeds", "1",
                             "--out", str(tmp_path / "bench"), "--no-report", "--set", "train.epochs=1",
                             "--set", "train.threads=1", "--set", "model.embed_dim=8")
    assert code == 0, err
    rows = json.loads((tmp_path / "bench" / "results.json").read_text())["datasets"]["mooccube"]["rows"]
    assert set(rows) == {"mf", "kgat"} and all(r["seeds_ok"] == [0] for r in rows.values())
    assert all(0 < r["values"]["0"]["enrol/ndcg@20"] < 1 for r in rows.values())


def test_schema_filter_keeps_training_rows_only():
    schema = Schema.from_dict({"features": [{"name": "u", "type": "categorical"}], "tasks": [{"name": "y"}],
                               "derive": {"y": "label = 1"}, "filter": "label = 1"})
    table = pa.table({"u": ["a", "b", "c"], "label": [1, 0, None]})
    assert transform_raw(table, schema, "t")["u"].to_pylist() == ["a"]  # null counts as false
    assert transform_raw(table.drop_columns(["label"]), schema, "t", with_labels=False).num_rows == 3
    with pytest.raises(PolyrecError, match="filter 'lable = 1' needs missing column"):
        transform_raw(table, schema.model_copy(update={"filter": "lable = 1"}), "t")


def test_a_label_derived_from_a_missing_value_is_an_error():
    schema = Schema.from_dict({"features": [{"name": "u", "type": "categorical"}], "tasks": [{"name": "like"}],
                               "derive": {"like": "rating >= 4"}})
    table = pa.table({"u": ["a", "b"], "rating": [5.0, float("nan")]})
    with pytest.raises(PolyrecError, match="label 'like' is derived from column 'rating', which has 1 missing"):
        transform_raw(table, schema, "The data")


def test_top_k_needs_user_and_item_roles(polyrec_env, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("features: [{name: u, type: categorical}]\ntasks: [{name: y}]\nuser: u\n")
    data = tmp_path / "d.csv"
    data.write_text("u,i,y\n" + "".join(f"{k % 5},{k % 7},{k % 2}\n" for k in range(40)))
    with pytest.raises(PolyrecError, match="needs `item:` in the schema"):
        load_topk(_topk(f"data.schema_file={path}", f"data.files.path={data}"), download=False, log=quiet)


def test_legacy_topk_split_keys_move_to_data():
    cfg = _topk("topk.split=temporal", "topk.tasks=[click,like]", "topk.ratios=[0.5,0.25,0.25]")
    assert (cfg.data.split, cfg.data.tasks, cfg.data.ratios) == ("temporal", ["click", "like"], (0.5, 0.25, 0.25))
    assert _topk().data.ratios == (0.6, 0.2, 0.2) and load_config(None, []).data.ratios == (0.8, 0.1, 0.1)
    with pytest.raises(PolyrecError, match="like_threshold=3.5 is gone"):
        _topk("topk.like_threshold=3.5")
    with pytest.raises(PolyrecError, match="contradicts data.split"):
        _topk("topk.split=temporal", "data.split=random")
