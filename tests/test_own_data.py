"""Your own data from the command line: file sources, derived columns, aggregation, splits, bad inputs.

Data errors go through the CLI (typer's CliRunner: the PolyrecError that `main()` prints as one line with
exit 2; test_cli checks that printing once for all), and each must name the file / column / count.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from polyrec.cli import app
from polyrec.errors import PolyrecError

runner = CliRunner()

SCHEMA = {
    "features": [{"name": "user_id", "type": "categorical"}, {"name": "item_id", "type": "categorical"},
                 {"name": "price", "type": "numeric"}],
    "scenario": {"name": "channel"},
    "tasks": [{"name": "click", "type": "binary"}],
    "user": "user_id",
}


def rows_csv(n: int = 200, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    lines = ["user_id,item_id,price,channel,click"]
    for i in range(n):
        lines.append(f"u{rng.integers(20)},{rng.integers(30):03d},{rng.random() * 10:.3f},"
                     f"{['app', 'web'][i % 2]},{int(rng.random() < 0.4) if i % 10 else 1}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def own(tmp_path: Path):
    """A directory with schema.yaml and a good data.csv; returns a writer for other files."""
    (tmp_path / "schema.yaml").write_text(yaml.safe_dump(SCHEMA))
    (tmp_path / "data.csv").write_text(rows_csv())

    class Own:
        dir = tmp_path
        schema = str(tmp_path / "schema.yaml")
        data = str(tmp_path / "data.csv")

        def write(self, name: str, text: str | bytes, schema: dict | None = None) -> str:
            p = tmp_path / name
            p.write_bytes(text if isinstance(text, bytes) else text.encode())
            if schema is not None:
                (tmp_path / "schema.yaml").write_text(yaml.safe_dump(schema))
            return str(p)

    return Own()


def check(*args: str) -> tuple[int, str, BaseException | None]:
    result = runner.invoke(app, ["data", "check", *args])
    return result.exit_code, result.output, result.exception


def fails(*args: str, command: str = "check") -> str:
    """The one-line PolyrecError message of a failing `polyrec data check` (or train)."""
    argv = ["data", "check", *args] if command == "check" else list(args)
    result = runner.invoke(app, argv)
    assert isinstance(result.exception, PolyrecError), (result.output, result.exception)
    msg = str(result.exception)
    assert "\n" not in msg, msg
    return msg


# --- sources -------------------------------------------------------------------------------------
def test_good_csv_checks_and_reports_columns(own):
    code, out, exc = check("--data", own.data, "--schema", own.schema, "--json")
    assert code == 0, (out, exc)
    report = json.loads(out)
    assert report["rows"]["train"] + report["rows"]["val"] + report["rows"]["test"] == 200
    cols = {c["column"]: c for c in report["columns"]}
    assert cols["item_id"]["type"] == "string" and cols["item_id"]["distinct"] == 30
    assert 0 <= cols["item_id"]["val_oov"] < 0.2
    assert set(report["label_rates"]["train"]) == {"app", "web"}


def test_ids_read_as_strings_same_from_csv_parquet_jsonl(own):
    from polyrec.data.sources import read_source

    table = pa.table({"user_id": ["007", "10"], "item_id": ["024", "18446744073709551617000"], "price": [1.0, 2.0]})
    pq.write_table(table, own.dir / "t.parquet")
    pacsv.write_csv(table, own.dir / "t.csv")
    (own.dir / "t.jsonl").write_text('{"user_id": "007", "item_id": "024", "price": 1.0}\n'
                                     '{"user_id": "10", "item_id": "18446744073709551617000", "price": 2.0}\n')
    for name in ("t.parquet", "t.csv", "t.jsonl"):
        t = read_source(own.dir / name, id_columns=["user_id", "item_id"])
        assert t["item_id"].to_pylist() == ["024", "18446744073709551617000"], name
        assert t["user_id"].to_pylist() == ["007", "10"], name


def test_gzip_zstd_and_parquet_shard_folder(own):
    from polyrec.data.sources import read_source

    text = rows_csv(50)
    (own.dir / "a.csv.gz").write_bytes(gzip.compress(text.encode()))
    with pa.CompressedOutputStream(str(own.dir / "a.csv.zst"), "zstd") as fh:
        fh.write(text.encode())
    plain = read_source(own.write("a.csv", text), id_columns=["item_id"])
    for name in ("a.csv.gz", "a.csv.zst"):
        assert read_source(own.dir / name, id_columns=["item_id"]).equals(plain)
    shards = own.dir / "shards"
    shards.mkdir()
    pq.write_table(plain.slice(0, 20), shards / "part-00000.parquet")
    pq.write_table(plain.slice(20), shards / "part-00001.parquet")
    (shards / "_SUCCESS").write_text("")
    assert read_source(shards, id_columns=["item_id"]).equals(plain)


def test_official_split_from_three_files(own):
    lines = rows_csv(300).splitlines(keepends=True)
    tr = own.write("tr.csv", "".join(lines[:201]))
    va = own.write("va.csv", lines[0] + "".join(lines[201:251]))
    te = own.write("te.csv", lines[0] + "".join(lines[251:]))
    code, out, exc = check("--data", tr, "--val", va, "--test", te, "--schema", own.schema, "--json")
    assert code == 0, (out, exc)
    assert json.loads(out)["rows"] == {"train": 200, "val": 50, "test": 50}
    assert "contradicts the given val/test" in fails("--data", tr, "--val", va, "--test", te, "--schema", own.schema,
                                                     "--set", "data.split=random")


# --- bad inputs: one line each, naming what is wrong ---------------------------------------------
def test_missing_schema_reported_before_the_data_is_read(own):
    msg = fails("--data", str(own.dir / "nope.csv"), "--schema", str(own.dir / "nope.yaml"))
    assert "Schema file not found" in msg and "nope.yaml" in msg


def test_missing_empty_and_header_only_files(own):
    assert "Data file not found" in fails("--data", str(own.dir / "nope.csv"), "--schema", own.schema)
    assert "is empty" in fails("--data", own.write("empty.csv", ""), "--schema", own.schema)
    msg = fails("--data", own.write("head.csv", "user_id,item_id,price,channel,click\n"), "--schema", own.schema)
    assert "head.csv has no data rows" in msg


def test_truncated_gzip(own):
    blob = gzip.compress(rows_csv().encode())
    msg = fails("--data", own.write("cut.csv.gz", blob[: len(blob) // 2]), "--schema", own.schema)
    assert "cut.csv.gz" in msg and "truncated or corrupt" in msg


def test_invalid_utf8(own):
    bad = rows_csv().encode().replace(b"u1,", b"u\xff\xfe,", 1)
    msg = fails("--data", own.write("bad.csv", bad), "--schema", own.schema)
    assert "bad.csv is not valid UTF-8" in msg and "encoding" in msg


def test_wrong_delimiter(own):
    path = own.write("semi.csv", rows_csv().replace(",", ";"))
    msg = fails("--data", path, "--schema", own.schema)
    assert "found 1 column 'user_id;item_id;price;channel;click' — wrong delimiter?" in msg
    code, out, exc = check("--data", path, "--schema", own.schema, "--set", "data.files.delimiter=';'")
    assert code == 0, (out, exc)


def test_ids_beyond_64_bits_just_work(own):
    text = rows_csv().splitlines()
    big = [text[0]] + [f"{10**30 + i % 7},{line.split(',', 1)[1]}" for i, line in enumerate(text[1:])]
    code, out, exc = check("--data", own.write("big.csv", "\n".join(big) + "\n"), "--schema", own.schema, "--json")
    assert code == 0, (out, exc)
    cols = {c["column"]: c for c in json.loads(out)["columns"]}
    assert cols["user_id"]["type"] == "string" and cols["user_id"]["distinct"] == 7


def test_inf_in_numeric_column(own):
    lines = rows_csv().splitlines()
    lines[5] = ",".join(v if k != 2 else "inf" for k, v in enumerate(lines[5].split(",")))
    msg = fails("--data", own.write("inf.csv", "\n".join(lines) + "\n"), "--schema", own.schema)
    assert "'price'" in msg and "infinite" in msg and "inf.csv" in msg


@pytest.mark.parametrize("value", ["", "NaN"])
def test_missing_label_is_an_error_never_dropped(own, value):
    lines = rows_csv().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + "," + value
    msg = fails("--data", own.write("nolabel.csv", "\n".join(lines) + "\n"), "--schema", own.schema)
    assert "'click'" in msg and "missing" in msg and "nolabel.csv" in msg


def test_binary_label_not_0_1(own):
    lines = rows_csv().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",2"
    msg = fails("--data", own.write("two.csv", "\n".join(lines) + "\n"), "--schema", own.schema)
    assert "Binary label 'click' must be 0 or 1" in msg and "2: 1" in msg


def test_schema_column_missing_with_close_matches(own):
    path = own.write("renamed.csv", rows_csv().replace("item_id", "itemid", 1))
    msg = fails("--data", path, "--schema", own.schema)
    assert "renamed.csv" in msg and "'item_id'" in msg and "Did you mean 'itemid'" in msg


def test_split_ratio_zero(own):
    msg = fails("--data", own.data, "--schema", own.schema, "--set", "data.ratios=[0.9,0.1,0.0]")
    assert "data.ratios must be three numbers, each > 0" in msg and "[0.9, 0.1, 0.0]" in msg


def test_task_without_positive_in_validation_warns(own):
    lines = rows_csv(300).splitlines(keepends=True)
    zero = lines[0] + "".join(line.rsplit(",", 1)[0] + ",0\n" for line in lines[201:251])
    tr = own.write("tr.csv", "".join(lines[:201]))
    te = own.write("te.csv", lines[0] + "".join(lines[251:]))
    code, out, exc = check("--data", tr, "--val", own.write("va.csv", zero), "--test", te, "--schema", own.schema)
    assert code == 0, (out, exc)
    assert "task 'click' has no positive in the validation split" in " ".join(out.split())


def test_split_settings_a_source_cannot_honour(own, tiny_recipe):
    assert "data.split=official" in fails("--data", own.data, "--schema", own.schema, "--set", "data.split=official")
    msg = fails("--data", own.data, "--schema", own.schema, "--set", "data.split=temporal")
    assert "data.split=temporal needs a time column" in msg
    msg = fails("--set", f"data.dataset={tiny_recipe.name}", "--set", "data.split=official")
    assert "data.split=official cannot be honoured" in msg


# --- derive, aggregate, splits -------------------------------------------------------------------
def test_derived_columns_expressions_buckets_time_parts_transforms():
    from polyrec.data.derive import derive_columns
    from polyrec.data.schema import Schema

    schema = Schema.from_dict({
        "features": [{"name": "r", "type": "numeric"}, {"name": "lp", "type": "numeric"},
                     {"name": "c", "type": "numeric"}],
        "scenario": {"name": "hour"},
        "tasks": [{"name": "like"}, {"name": "buy"}],
        "derive": {"like": "rating >= 4", "buy": "behavior = 'buy'", "r": "rating * 2",
                   "hour": {"column": "ts", "time_part": "hour", "buckets": [6, 18], "labels": ["n", "d", "e"]},
                   "lp": {"column": "price", "transform": "log1p"}, "c": {"column": "price", "clip": [0, 5]}},
    })
    t = pa.table({"rating": [5, 3, 4], "behavior": ["buy", "pv", "cart"], "ts": [0, 8 * 3600, 20 * 3600 + 86400],
                  "price": [0.0, 9.0, 3.0]})
    out = derive_columns(t, schema, "test")
    assert out["like"].to_pylist() == [1, 0, 1] and out["buy"].to_pylist() == [1, 0, 0]
    assert out["hour"].to_pylist() == ["n", "d", "e"]
    assert out["r"].to_pylist() == [10, 6, 8]
    np.testing.assert_allclose(out["lp"].to_numpy(), np.log1p([0.0, 9.0, 3.0]))
    assert out["c"].to_pylist() == [0.0, 5.0, 3.0]
    no_labels = derive_columns(t.drop_columns(["behavior"]), schema, "test", with_labels=False)
    assert "buy" not in no_labels.column_names and "hour" in no_labels.column_names
    with pytest.raises(PolyrecError, match="derived column 'lp' needs missing column"):
        derive_columns(t.drop_columns(["price"]), schema, "test")


def test_event_log_aggregates_to_one_row_per_pair_with_a_label_per_behaviour():
    from polyrec.data.derive import aggregate
    from polyrec.data.schema import AggregateSpec

    log = pa.table({"u": ["a", "a", "a", "b", "a"], "i": ["x", "x", "y", "x", "x"],
                    "behavior": ["pv", "cart", "pv", "pv", "buy"], "ts": [5, 6, 1, 2, 9], "cat": ["c1"] * 5})
    spec = AggregateSpec.model_validate({
        "by": ["u", "i"], "order_by": "ts", "labels": {"column": "behavior", "values": ["cart", "buy"]},
        "columns": {"first_ts": {"column": "ts", "how": "min"}, "last_ts": {"column": "ts", "how": "max"},
                    "n_pv": {"column": "behavior", "equals": "pv", "how": "count"}}})
    out = aggregate(log, spec, "test", keep=["cat"]).sort_by([("u", "ascending"), ("i", "ascending")])
    assert out["u"].to_pylist() == ["a", "a", "b"] and out["i"].to_pylist() == ["x", "y", "x"]
    assert out["cart"].to_pylist() == [1, 0, 0] and out["buy"].to_pylist() == [1, 0, 0]
    assert out["first_ts"].to_pylist() == [5, 1, 2] and out["last_ts"].to_pylist() == [9, 1, 2]
    assert out["n_pv"].to_pylist() == [1, 1, 1] and out["cat"].to_pylist() == ["c1"] * 3


def test_global_temporal_and_leave_last_out_splits():
    from polyrec.data.split import global_temporal_split, leave_last_out_split

    times = np.array([5, 1, 9, 3, 7, 2, 8, 4, 6, 0])
    s = global_temporal_split(times, (0.6, 0.2, 0.2))
    assert times[s["train"]].max() < times[s["val"]].min() <= times[s["val"]].max() < times[s["test"]].min()
    users = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 0])
    s = leave_last_out_split(users, times)
    assert s["test"].tolist() == [2, 6] and s["val"].tolist() == [0, 4]  # user 2 has 2 rows: all train
    assert sorted(np.concatenate(list(s.values())).tolist()) == list(range(10))


def test_schema_infer_prints_a_draft_that_parses(own):
    result = runner.invoke(app, ["schema", "infer", own.data])
    assert result.exit_code == 0, result.output
    draft = yaml.safe_load(result.output)
    roles = {f["name"]: f["type"] for f in draft["features"]}
    assert roles["item_id"] == "categorical" and roles["price"] == "numeric"
    assert [t["name"] for t in draft["tasks"]] == ["click"]
    assert draft["user"] == "user_id"
    assert "binary task candidate" in result.output


# --- predict: CSV / Parquet / JSON lines, identical scores -----------------------------------------
def test_train_then_predict_any_format_same_scores(own, tmp_path, monkeypatch):
    monkeypatch.chdir(own.dir)  # relative --data / --schema; evaluate later from another directory
    result = runner.invoke(app, ["train", "--data", "data.csv", "--schema", "schema.yaml", "--model", "sharedbottom",
                                 "--epochs", "1", "--out", "run", "--quiet", "--set", "train.tensorboard=false"])
    assert result.exit_code == 0, (result.output, result.exception)
    run = own.dir / "run"
    assert yaml.safe_load((run / "schema.yaml").read_text())["tasks"][0]["name"] == "click"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["data"]["files"]["path"] == str(own.dir / "data.csv") and Path(cfg["data"]["schema_file"]).is_absolute()
    rows = pacsv.read_csv(own.dir / "data.csv", convert_options=pacsv.ConvertOptions(
        column_types={"item_id": pa.string(), "user_id": pa.string()})).drop_columns(["click"])
    pq.write_table(rows, own.dir / "in.parquet")
    import polars as pl

    pl.from_arrow(rows).write_ndjson(own.dir / "in.jsonl")
    monkeypatch.chdir(tmp_path)
    scores = {}
    for name in ("data.csv", "in.parquet", "in.jsonl"):
        for out in ("out.parquet", "out.csv", "out.jsonl"):
            r = runner.invoke(app, ["predict", str(run), "--input", str(own.dir / name), "--output", out,
                                    "--keep-columns", "user_id,item_id"])
            assert r.exit_code == 0, (r.output, r.exception)
        t = pq.read_table("out.parquet")
        assert t.column_names == ["user_id", "item_id", "click"] and t.num_rows == 200
        assert t["item_id"].to_pylist()[:3] == rows["item_id"].to_pylist()[:3]  # '024' stays '024'
        assert pl.read_ndjson("out.jsonl")["click"].to_list() == pytest.approx(t["click"].to_pylist(), rel=1e-6)
        scores[name] = t["click"].to_numpy()
    np.testing.assert_array_equal(scores["data.csv"], scores["in.parquet"])
    np.testing.assert_array_equal(scores["data.csv"], scores["in.jsonl"])
    ev = runner.invoke(app, ["evaluate", str(run), "--json"])  # from another directory
    assert ev.exit_code == 0, (ev.output, ev.exception)


def test_unknown_scenarios_go_to_the_fallback_and_are_counted(own):
    from polyrec.config import load_config
    from polyrec.data.prepare import prepare

    lines = rows_csv(300).splitlines(keepends=True)
    tr = own.write("tr.csv", "".join(lines[:201]))
    va = own.write("va.csv", lines[0] + "".join(lines[201:251]).replace(",app,", ",tv,"))
    te = own.write("te.csv", lines[0] + "".join(lines[251:]))
    cfg = load_config(overrides=[f"data.files={{train: {tr}, val: {va}, test: {te}}}", f"data.schema_file={own.schema}"])
    logged: list[str] = []
    data = prepare(cfg.data, log=logged.append)
    n_tv = sum(",tv," in line for line in Path(va).read_text().splitlines())
    assert n_tv == 25
    assert data.meta["stats"]["val"]["unknown_scenario"] == n_tv and data.meta["stats"]["test"]["unknown_scenario"] == 0
    assert int((data.splits["val"].scenario == 0).sum()) == n_tv  # id 0 = the fallback scenario '<unknown>'
    assert data.encoders.scenario_names[0] == "<unknown>"
    assert any("val: 25 rows of a scenario unseen in train" in n for n in data.meta["notes"])
    assert set(data.meta["stats"]["train"]["oov"]) == {"user_id", "item_id"}


def test_joins_on_double_colon_files_without_header(own):
    from polyrec.config import load_config
    from polyrec.data.prepare import prepare

    own.write("ratings.dat", "".join(f"{u}::{i:02d}::{(u * i) % 5 + 1}::{1000 + k}\n"
                                     for k, (u, i) in enumerate((u, i) for u in range(1, 21) for i in range(8))))
    own.write("users.dat", "".join(f"{u}::{'MF'[u % 2]}::{[1, 25, 45][u % 3]}\n" for u in range(1, 21)))
    own.write("movies.dat", "".join(f"{i:02d}::T\xe9l\xe9 \"{i}\" (199{i})::Drama|Comedy\n" for i in range(8))
              .encode("latin-1"))
    schema = {"derive": {"like": "rating > 3", "age_bucket": {"column": "age", "buckets": [25, 35]}},
              "features": [{"name": "user_id", "type": "categorical"}, {"name": "item_id", "type": "categorical"},
                           {"name": "gender", "type": "categorical"},
                           {"name": "genres", "type": "sequence", "sep": "|", "max_len": 3}],
              "scenario": {"name": "age_bucket"}, "tasks": [{"name": "like"}], "user": "user_id", "time": "ts"}
    (own.dir / "ml.yaml").write_text(yaml.safe_dump(schema))
    side = "delimiter: '::', header: false"
    config = own.write("c.yaml", f"""data:
  schema_file: {own.dir / 'ml.yaml'}
  split: leave_last_out
  files:
    train: {own.dir / 'ratings.dat'}
    {side.replace(', ', chr(10) + '    ')}
    columns: [user_id, item_id, rating, ts]
    joins:
      - {{path: {own.dir / 'users.dat'}, on: user_id, {side}, columns: [user_id, gender, age]}}
      - {{path: {own.dir / 'movies.dat'}, on: item_id, {side}, quote: null, encoding: latin-1,
         columns: [item_id, title, genres]}}
""")
    data = prepare(load_config(config).data, log=lambda _: None)
    assert data.meta["rows"] == {"train": 120, "val": 20, "test": 20}  # per user: last test, second-to-last val
    raw = pq.read_table(data.raw_split_path("train"))
    assert raw["item_id"].to_pylist()[:2] == ["00", "01"] and raw["title"][0].as_py() == 'Télé "0" (1990)'
    assert set(raw["age_bucket"].to_pylist()) == {"<25", "25-35", ">=35"}
    own.write("users2.dat", "1::M::1\n1::F::18\n")
    msg = fails("--config", config, "--set", f"data.files.joins=[{{path: {own.dir / 'users2.dat'}, on: user_id, "
                f"delimiter: '::', header: false, columns: [user_id, gender, age]}}]")
    assert "duplicate keys" in msg and "users2.dat" in msg


def test_data_error_exits_2_with_one_line_through_the_real_entry_point(own):
    import subprocess
    import sys

    bad = own.write("semi.csv", rows_csv().replace(",", ";"))
    proc = subprocess.run([sys.executable, "-c", "from polyrec.cli import main; main()", "train", "--data", bad,
                           "--schema", own.schema, "--out", str(own.dir / "run")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "wrong delimiter?" in " ".join(proc.stderr.split())
    assert not (own.dir / "run").exists()  # nothing half-written


def test_recipe_schema_file_missing_fails_before_reading(tiny_recipe, tmp_path):
    msg = fails("--set", f"data.dataset={tiny_recipe.name}", "--set", f"data.schema_file={tmp_path / 'nope.yaml'}")
    assert "Schema file not found" in msg and tiny_recipe.load_calls == 0


def test_json_ids_too_large_for_a_double_are_an_error_naming_the_column(tmp_path):
    from polyrec.data.sources import read_source

    (tmp_path / "big.jsonl").write_text('{"user_id": 123456789012345678901234567890, "x": 1}\n')
    with pytest.raises(PolyrecError, match="Id column 'user_id' holds numbers .* write these ids as strings"):
        read_source(tmp_path / "big.jsonl", id_columns=["user_id"])
