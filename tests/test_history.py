"""Behaviour histories from the log (polyrec.data.history): against a per-row reference, and leak-free through
the whole data path on random and temporal splits."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from polyrec.data.derive import transform_raw
from polyrec.data.history import history_positions
from polyrec.data.schema import Schema
from polyrec.errors import PolyrecError

MAX_LEN = 4


def event_log(n: int = 400, users: int = 12, seed: int = 0) -> pa.Table:
    """One row per event, each with its own item (so an item token names its event), coarse times (many ties)."""
    rng = np.random.default_rng(seed)
    return pa.table({
        "user_id": rng.integers(0, users, n).astype(str),
        "item_id": np.array([f"i{k}" for k in range(n)]),
        "ts": rng.integers(0, 60, n),
        "behavior": rng.choice(["pv", "cart", "buy"], n),
        "click": rng.integers(0, 2, n),
        "category": rng.choice(["a", "b", "c"], n),
    })


def schema(**history) -> Schema:
    return Schema.from_dict({
        "features": [{"name": "user_id", "type": "categorical"}, {"name": "item_id", "type": "categorical"}],
        "tasks": [{"name": "click"}], "user": "user_id", "time": "ts",
        "history": [{"name": "hist", "user": "user_id", "item": "item_id", "time": "ts", "max_len": MAX_LEN,
                     **history}]})


def reference(table: pa.Table, max_len: int, keep=None) -> list[list[str]]:
    """Per row in plain Python: the same user's events with an earlier time, newest first (ties: later row first)."""
    u, t, item = (table[c].to_pylist() for c in ("user_id", "ts", "item_id"))
    keep = keep or (lambda j: True)
    out = []
    for r in range(table.num_rows):
        earlier = [j for j in range(table.num_rows) if u[j] == u[r] and t[j] < t[r] and keep(j)]
        earlier.sort(key=lambda j: (t[j], j), reverse=True)
        out.append([item[j] for j in earlier[:max_len]])
    return out


def test_history_equals_the_per_row_reference():
    table = event_log()
    got = transform_raw(table, schema(), "test")["hist"].to_pylist()
    assert got == reference(table, MAX_LEN)
    assert any(len(h) == MAX_LEN for h in got) and any(len(h) == 0 for h in got)


def test_history_per_behaviour_and_event_filter():
    table = event_log()
    out = transform_raw(table, schema(by="behavior", values=["cart", "buy"], events="click = 1"), "test")
    beh, clk = table["behavior"].to_pylist(), table["click"].to_pylist()
    for value in ("cart", "buy"):
        want = reference(table, MAX_LEN, keep=lambda j, v=value: beh[j] == v and clk[j] == 1)
        assert out[f"hist_{value}"].to_pylist() == want


def test_side_fields_and_gaps_align_with_the_events():
    table = event_log()
    out = transform_raw(table, schema(fields=["category"], gap=True), "test")
    cat = dict(zip(table["item_id"].to_pylist(), table["category"].to_pylist()))
    ts = dict(zip(table["item_id"].to_pylist(), table["ts"].to_pylist()))
    for row_t, items, cats, gaps in zip(table["ts"].to_pylist(), out["hist"].to_pylist(),
                                        out["hist__category"].to_pylist(), out["hist__gap"].to_pylist()):
        assert cats == [cat[i] for i in items]
        assert gaps == [str(int(np.floor(np.log2(1 + row_t - ts[i])))) for i in items]


def test_history_positions_ties_never_see_the_row():
    users = np.zeros(3, np.int64)
    times = np.array([5.0, 5.0, 6.0])
    events, ranges = history_positions(users, times, None, 10)
    hist = [events[a:b].tolist() for a, b in ranges]
    assert hist == [[], [], [0, 1]]  # the two rows at time 5 see neither themselves nor each other


@pytest.mark.parametrize("split", ["random", "temporal"])
def test_no_row_sees_its_own_label_or_a_later_event_through_the_data_path(split, tmp_path, monkeypatch):
    """Own data through prepare's raw splits: every history event of every split's row is strictly earlier
    and the user's; a history of clicked items never holds the row itself (its own label)."""
    from polyrec.config import load_config
    from polyrec.data.prepare import build_tables, raw_splits

    table = event_log(600, seed=1)
    path = tmp_path / "log.parquet"
    import pyarrow.parquet as pq

    pq.write_table(table, path)
    sch = tmp_path / "schema.yaml"
    import yaml

    sch.write_text(yaml.safe_dump(schema(by="click", values=[1]).model_dump(mode="json")))
    monkeypatch.setenv("POLYREC_CACHE", str(tmp_path / "cache"))
    cfg = load_config(None, [f"data.files.path={path}", f"data.schema_file={sch}", f"data.split={split}"])
    recipe, s, files, _ = build_tables(cfg.data, 0, download=False, log=lambda m: None)
    tables, _, _ = raw_splits(recipe, s, files, cfg.data, 0)
    owner = {i: (u, t) for i, u, t in zip(*(table[c].to_pylist() for c in ("item_id", "user_id", "ts")))}
    clicked = dict(zip(table["item_id"].to_pylist(), table["click"].to_pylist()))
    seen = 0
    for t in tables.values():
        for item, user, ts, hist in zip(*(t[c].to_pylist() for c in ("item_id", "user_id", "ts", "hist_1"))):
            assert item not in hist
            for h in hist:
                assert owner[h][0] == user and owner[h][1] < ts and clicked[h] == 1
            seen += len(hist)
    assert seen > 100  # the histories are not trivially empty


def test_history_errors_name_the_problem():
    with pytest.raises(PolyrecError, match="`by` and `values` go together"):
        schema(by="behavior")
    with pytest.raises(PolyrecError, match="no categorical feature reads column 'sku'"):
        Schema.from_dict({"features": [{"name": "user_id", "type": "categorical"}], "tasks": [{"name": "click"}],
                          "history": [{"name": "h", "user": "user_id", "item": "sku", "time": "ts"}]})
    with pytest.raises(PolyrecError, match="needs missing column"):
        transform_raw(event_log().drop_columns(["ts"]), schema(), "The data")


def test_histories_from_the_training_log_at_prediction_time():
    """Query rows get their user's log events strictly before their time; queries are never each other's events."""
    from polyrec.data.history import histories_from_log

    log = event_log(300, seed=2)
    queries = event_log(50, seed=3).select(["user_id", "ts", "item_id"])
    out = histories_from_log(queries, log, schema(), "The prediction input")
    u, t, item = (log[c].to_pylist() for c in ("user_id", "ts", "item_id"))
    for qu, qt, hist in zip(queries["user_id"].to_pylist(), queries["ts"].to_pylist(), out["hist"].to_pylist()):
        earlier = sorted((j for j in range(len(u)) if u[j] == qu and t[j] < qt), key=lambda j: (t[j], j), reverse=True)
        assert hist == [item[j] for j in earlier[:MAX_LEN]]
    with pytest.raises(PolyrecError, match="lacks the history column"):
        histories_from_log(queries.drop_columns(["ts"]), log, schema(), "The prediction input")


def test_data_check_reports_each_history(tmp_path, monkeypatch):
    """`polyrec data check` lists every history sequence per split; its lengths are the raw histories' lengths."""
    import pyarrow.parquet as pq
    import yaml
    from typer.testing import CliRunner

    from polyrec.cli import app
    from polyrec.config import load_config
    from polyrec.data.check import check_data
    from polyrec.data.prepare import build_tables, raw_splits

    path, sch = tmp_path / "log.parquet", tmp_path / "schema.yaml"
    pq.write_table(event_log(600, seed=2), path)
    sch.write_text(yaml.safe_dump(schema(fields=["category"]).model_dump(mode="json")))
    monkeypatch.setenv("POLYREC_CACHE", str(tmp_path / "cache"))
    cfg = load_config(None, [f"data.files.path={path}", f"data.schema_file={sch}"])
    report = check_data(cfg.data, seed=0, log=lambda m: None)
    recipe, s, files, _ = build_tables(cfg.data, 0, download=False, log=lambda m: None)
    tables, _, _ = raw_splits(recipe, s, files, cfg.data, 0)
    rows = {(h["sequence"], h["split"]): h for h in report["histories"]}
    assert {k[0] for k in rows} == {"hist", "hist__category"}
    for split, t in tables.items():
        lengths = np.array([len(x) for x in t["hist"].to_pylist()])
        got = rows[("hist", split)]
        assert got["max_len"] == MAX_LEN
        assert got["mean_length"] == pytest.approx(np.minimum(lengths, MAX_LEN).mean())
        assert got["empty"] == pytest.approx((lengths == 0).mean())
        assert 0 <= got["oov"] <= 1
    assert rows[("hist", "train")]["mean_length"] > 1  # not trivially empty
    out = CliRunner().invoke(app, ["data", "check", "--data", str(path), "--schema", str(sch)])
    assert out.exit_code == 0, out.output
    assert "histories" in out.output and "hist__category" in out.output
