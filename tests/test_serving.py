"""Serving (issue 16): bundle export/load, the HTTP app's endpoints and errors, torch/ONNX parity, fuzzing.

One tiny model (MMoE on the synthetic recipe, 2 epochs) is trained once for the module; every test uses it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from fastapi.testclient import TestClient  # noqa: E402
from helpers import make_batch, make_spec, register_tiny_recipes  # noqa: E402

from polyrec.config import load_config  # noqa: E402
from polyrec.data.encoders import EncodedSplit  # noqa: E402
from polyrec.errors import PolyrecError  # noqa: E402
from polyrec.models import MODELS, build_model  # noqa: E402
from polyrec.serve.app import create_app  # noqa: E402
from polyrec.serve.backends import onnx_parity  # noqa: E402
from polyrec.serve.bundle import BUNDLE_FILES, export_onnx  # noqa: E402
from polyrec.serve.bundles import export_bundle, load_bundle  # noqa: E402
from polyrec.serve.forward import ONNX_TOLERANCE, encoded_inputs  # noqa: E402
from polyrec.serve.deps import need  # noqa: E402
from polyrec.serve.predict import predict_table  # noqa: E402
from polyrec.settings import cache_dir  # noqa: E402
from polyrec.runs import train_run  # noqa: E402

NAME = "tiny"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, polyrec_env):
    from polyrec.data.recipe import RECIPES

    root = tmp_path_factory.mktemp("serving")
    recipes = register_tiny_recipes(root / "data")
    cfg = load_config(None, [
        "data.dataset=tiny-synthetic", "model.name=mmoe", "model.embed_dim=4", "model.n_experts=2",
        "model.expert_dims=[16]", "model.tower_dims=[8]", "train.epochs=2", "train.batch_size=256",
        "train.eval_batch_size=1024", "train.progress=false", "train.seed=1", "train.patience=0",
        "train.tensorboard=false"])
    run = root / "run"
    train_run(cfg, run, log=lambda _: None)
    bundle = root / NAME
    info = export_bundle(run, bundle, onnx=True, log=lambda _: None)
    entry = json.loads((run / "spec.json").read_text())["cache_entry"]
    raw_test = pq.read_table(cache_dir() / entry / "raw-test.parquet")
    yield {"run": run, "bundle": bundle, "info": info, "raw_test": raw_test, "root": root}
    for name in recipes:
        RECIPES.pop(name, None)


@pytest.fixture(scope="module")
def clients(trained):
    return {be: TestClient(create_app([trained["bundle"]], backend=be)) for be in ("torch", "onnx")}


def rows_of(table, n):
    cols = ["user_id", "item_id", "x", "tags", "region"]
    t = table.select(cols).slice(0, n)
    out = t.to_pylist()
    for r in out:  # JSON has no NaN: a missing numeric is null
        if r["x"] is not None and r["x"] != r["x"]:
            r["x"] = None
    return out


# --- bundle ------------------------------------------------------------------------------------
def test_bundle_holds_everything_and_a_checked_onnx_graph(trained):
    b, info = trained["bundle"], trained["info"]
    assert all((b / f).exists() for f in BUNDLE_FILES) and (b / "model.onnx").exists()
    assert set(info["versions"]) == {"polyrec", "torch", "python"}
    assert info["data"]["files"]["table"]["sha256_head_tail"] and info["data"]["rows"]["test"] == 300
    check = info["onnx"]
    assert check["ok"] and check["rows"] == 300 and check["max_abs_diff"] <= ONNX_TOLERANCE
    assert json.loads((b / "bundle.json").read_text())["onnx"] == check
    assert not [p for p in b.parent.iterdir() if p.name.startswith(f".{NAME}.")]  # no temp folder left


def test_bundle_loads_and_serves_after_the_run_folder_is_deleted(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    export_bundle(run, tmp_path / "b", log=lambda _: None)
    shutil.rmtree(run)
    bundle = load_bundle(tmp_path / "b")
    assert bundle.onnx_path is None and bundle.info["onnx"] is None
    r = TestClient(create_app([bundle])).post("/v1/models/b/score", json={"rows": rows_of(trained["raw_test"], 3)})
    assert r.status_code == 200 and len(r.json()["scores"]["click"]) == 3


def test_export_is_atomic_and_never_overwrites(trained, tmp_path, monkeypatch):
    import polyrec.serve.bundle as bundle_mod

    def boom(*_a, **_k):
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(bundle_mod, "export_onnx", boom)
    with pytest.raises(PolyrecError, match="cannot be exported to ONNX"):
        export_bundle(trained["run"], tmp_path / "b", onnx=True, log=lambda _: None)
    assert list(tmp_path.iterdir()) == []  # neither the bundle nor its temp folder
    with pytest.raises(PolyrecError, match="already exists"):
        export_bundle(trained["run"], trained["bundle"], log=lambda _: None)


def test_cli_export_and_its_one_line_error(trained, tmp_path):
    from typer.testing import CliRunner

    from polyrec.cli import app

    res = CliRunner().invoke(app, ["export", str(trained["run"]), "--out", str(tmp_path / "c"),
                                   "--weights", "click=1,like=0.5", "--fusion", "sum"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "c" / "bundle.json").read_text())["fusion"] == {
        "method": "sum", "weights": {"click": 1.0, "like": 0.5}}
    res = CliRunner().invoke(app, ["export", str(trained["run"]), "--out", str(tmp_path / "d"), "--weights", "click"])
    assert isinstance(res.exception, PolyrecError) and "HEAD=NUMBER" in str(res.exception)


def test_missing_optional_dependency_says_how_to_install():
    with pytest.raises(PolyrecError, match=r'pip install "polyrec\[serve\]"'):
        need("polyrec_no_such_module")


# --- endpoints --------------------------------------------------------------------------------
def test_health_and_models_metadata(clients):
    c = clients["torch"]
    assert c.get("/health").json() == {"status": "ok", "models": [NAME], "backend": "torch"}
    (meta,) = c.get("/v1/models").json()["models"]
    assert meta["model"] == "mmoe" and [t["name"] for t in meta["tasks"]] == ["click", "like"]
    assert meta["scenarios"]["names"] == sorted(["north", "south", "east"]) and meta["backend"] == "torch"
    assert {f["name"]: f["type"] for f in meta["features"]} == {
        "user_id": "categorical", "item_id": "categorical", "x": "numeric", "tags": "sequence", "region": "scenario"}
    assert set(meta["metrics"]["test"]["heads"]) == {"click", "like"}
    assert clients["onnx"].get("/v1/models").json()["models"][0]["backend"] == "onnx"


def test_openapi_names_every_feature_with_its_type(clients):
    spec = clients["torch"].get("/openapi.json").json()
    props = spec["components"]["schemas"]["TinyRow"]["properties"]
    assert set(props) == {"user_id", "item_id", "x", "tags", "region"}
    assert {t["type"] for t in props["item_id"]["anyOf"]} == {"integer", "string"}
    assert {t["type"] for t in props["x"]["anyOf"]} == {"number", "null"}
    assert set(spec["components"]["schemas"]["TinyRow"]["required"]) == {"user_id", "item_id", "x", "tags"}


def test_score_matches_polyrec_predict(trained, clients):
    rows = rows_of(trained["raw_test"], 200)
    want = predict_table(trained["run"], trained["raw_test"].slice(0, 200))
    for be, c in clients.items():
        r = c.post(f"/v1/models/{NAME}/score", json={"rows": rows})
        assert r.status_code == 200
        got = r.json()["scores"]
        for head in ("click", "like"):
            np.testing.assert_allclose(got[head], want[head].to_numpy(), atol=1e-6 if be == "torch" else 1e-5,
                                       err_msg=be)
        assert r.json()["scenarios"] == trained["raw_test"]["region"].slice(0, 200).to_pylist()


def test_unseen_ids_and_unknown_scenario_score_with_oov(clients):
    rows = [{"user_id": "never-seen", "item_id": 10**30, "x": None, "tags": ["t1", "zz"], "region": "mars"},
            {"user_id": 5, "item_id": "x", "x": 1.5, "tags": "", "region": None},
            {"user_id": "u1", "item_id": 3, "x": 0.0, "tags": "t1|t2"}]  # scenario left out
    for c in clients.values():
        r = c.post(f"/v1/models/{NAME}/score", json={"rows": rows})
        assert r.status_code == 200, r.text
        assert r.json()["scenarios"] == ["<unknown>"] * 3
        assert all(0 < p < 1 for p in r.json()["scores"]["click"])
    assert clients["torch"].post(f"/v1/models/{NAME}/score", json={"rows": []}).json()["scores"] == {
        "click": [], "like": []}


def test_a_missing_scenario_is_derived_by_the_recipe_row_by_row(trained, clients, monkeypatch):
    """MovieLens derives its age bucket from age: rows without a scenario get the derived one, others keep theirs."""
    import pyarrow as pa

    from polyrec.data.recipe import RECIPES

    def derive(table):
        if "region" in table.column_names:
            return table
        return table.append_column("region", pa.array(["east"] * table.num_rows))

    monkeypatch.setattr(RECIPES["tiny-synthetic"], "derive", derive, raising=False)
    rows = rows_of(trained["raw_test"], 3)
    rows[0]["region"], rows[1]["region"] = None, "south"
    del rows[2]["region"]
    r = clients["torch"].post(f"/v1/models/{NAME}/score", json={"rows": rows})
    assert r.json()["scenarios"] == ["east", "south", "east"]


@pytest.mark.parametrize("row,field", [
    ({"user_id": "u1", "item_id": 3, "tags": "t1"}, "x"),  # missing feature
    ({"user_id": "u1", "item_id": 3, "x": "high", "tags": "t1"}, "x"),  # wrong type
    ({"user_id": "u1", "item_id": 3.5, "x": 1.0, "tags": "t1"}, "item_id"),  # an id that is not integral
    ({"user_id": "u1", "item_id": 3, "x": 1.0, "tags": {"a": 1}}, "tags"),
])
def test_wrong_type_or_missing_feature_is_422_naming_it(clients, row, field):
    r = clients["torch"].post(f"/v1/models/{NAME}/score", json={"rows": [row]})
    assert r.status_code == 422
    assert any(e["loc"][:4] == ["body", "rows", 0, field] for e in r.json()["detail"])


def test_too_many_rows_or_too_large_a_body_is_413(trained):
    c = TestClient(create_app([trained["bundle"]], max_rows=5, max_body_bytes=4000))
    rows = rows_of(trained["raw_test"], 6)
    r = c.post(f"/v1/models/{NAME}/score", json={"rows": rows})
    assert r.status_code == 413 and "limit of 5" in r.json()["detail"]
    r = c.post(f"/v1/models/{NAME}/rank", json={"context": {}, "candidates": rows})
    assert r.status_code == 413
    r = c.post(f"/v1/models/{NAME}/score", content=json.dumps({"rows": rows_of(trained["raw_test"], 3) * 30}),
               headers={"content-type": "application/json"})
    assert r.status_code == 413 and "4000 bytes" in r.json()["detail"]


def test_unknown_model_is_404(clients):
    for action in ("score", "rank"):
        r = clients["torch"].post(f"/v1/models/tinny/{action}", json={"rows": []})
        assert r.status_code == 404 and "Did you mean 'tiny'" in r.json()["detail"]


def _rank_request(trained, n=40, **extra):
    rows = rows_of(trained["raw_test"], n)
    ctx = {k: rows[0][k] for k in ("user_id", "x", "region")}
    return {"context": ctx, "candidates": [{"item_id": r["item_id"], "tags": r["tags"]} for r in rows], **extra}


def test_rank_sorts_by_fused_scores(trained, clients):
    c = clients["torch"]
    req = _rank_request(trained)
    body = c.post(f"/v1/models/{NAME}/rank", json=req).json()
    cands = body["candidates"]
    assert body["fusion"] == {"method": "product", "weights": {"click": 1.0, "like": 1.0}}
    assert sorted(x["index"] for x in cands) == list(range(40))
    assert [x["id"] for x in cands] == [req["candidates"][x["index"]]["item_id"] for x in cands]
    for x in cands:
        assert x["score"] == pytest.approx(x["scores"]["click"] * x["scores"]["like"], rel=1e-9)
    assert [x["score"] for x in cands] == sorted((x["score"] for x in cands), reverse=True)
    # the scores equal /score of the merged rows
    merged = [{**req["context"], **cand} for cand in req["candidates"]]
    s = c.post(f"/v1/models/{NAME}/score", json={"rows": merged}).json()["scores"]
    for x in cands:
        assert x["scores"]["click"] == s["click"][x["index"]]
    # weighted sum, click only: the order of click scores; top_k cuts
    only_click = c.post(f"/v1/models/{NAME}/rank", json={**req, "top_k": 5, "fusion": {
        "method": "sum", "weights": {"click": 2.0}}}).json()["candidates"]
    best_click = np.argsort(-np.array(s["click"]), kind="stable")[:5].tolist()
    assert [x["index"] for x in only_click] == best_click
    assert only_click[0]["score"] == pytest.approx(2 * s["click"][best_click[0]])


def test_rank_errors(trained, clients):
    c = clients["torch"]
    req = _rank_request(trained, 3)
    r = c.post(f"/v1/models/{NAME}/rank", json={**req, "fusion": {"weights": {"clik": 1}}})
    assert r.status_code == 422 and "clik" in r.text
    del req["candidates"][1]["tags"]
    r = c.post(f"/v1/models/{NAME}/rank", json=req)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "candidates", 1, "tags"]
    r = c.post(f"/v1/models/{NAME}/rank", json={**_rank_request(trained, 3), "id_field": "nope"})
    assert r.status_code == 422


def _columns(objs):
    keys = dict.fromkeys(k for o in objs for k in o)
    return {k: [o[k] for o in objs] for k in keys}


def test_columnar_forms_equal_the_list_forms(trained, clients):
    """/score {"columns"} and /rank {"candidate_columns"} give exactly what the list-of-objects forms give."""
    c = clients["torch"]
    rows = rows_of(trained["raw_test"], 50)
    by_rows = c.post(f"/v1/models/{NAME}/score", json={"rows": rows}).json()
    by_cols = c.post(f"/v1/models/{NAME}/score", json={"columns": _columns(rows)})
    assert by_cols.status_code == 200, by_cols.text
    assert by_cols.json() == by_rows
    req = _rank_request(trained, 50, top_k=7)
    ranked = c.post(f"/v1/models/{NAME}/rank", json=req).json()
    cands = req.pop("candidates")
    cols = {**req, "candidate_columns": _columns(cands)}
    got = c.post(f"/v1/models/{NAME}/rank", json=cols)
    assert got.status_code == 200, got.text
    assert got.json() == ranked and len(ranked["candidates"]) == 7


def test_columnar_form_errors_name_the_column(trained, clients):
    c = clients["torch"]
    cols = _columns(rows_of(trained["raw_test"], 4))
    r = c.post(f"/v1/models/{NAME}/score", json={"columns": {**cols, "x": cols["x"][:3]}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "columns", "x"]
    r = c.post(f"/v1/models/{NAME}/score", json={"columns": {k: v for k, v in cols.items() if k != "tags"}})
    assert r.status_code == 422 and ["body", "columns", "tags"] in [e["loc"] for e in r.json()["detail"]]
    r = c.post(f"/v1/models/{NAME}/score", json={"columns": {**cols, "x": [1.0, "high", 2.0, 3.0]}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:4] == ["body", "columns", "x", 1]
    r = c.post(f"/v1/models/{NAME}/rank", json={"context": {}, "candidate_columns": {"item_id": [1, 2]}})
    assert r.status_code == 422 and {tuple(e["loc"]) for e in r.json()["detail"]} >= {
        ("body", "candidate_columns", "user_id"), ("body", "candidate_columns", "x")}
    for body in ({"rows": [], "columns": cols}, {}):
        r = c.post(f"/v1/models/{NAME}/score", json=body)
        assert r.status_code == 422 and "exactly one of 'rows'" in r.text
    r = c.post(f"/v1/models/{NAME}/rank", json={"context": {}})
    assert r.status_code == 422 and "candidate_columns" in r.text


def test_torch_and_onnx_give_the_same_ranking(trained, clients):
    req = _rank_request(trained, 300)
    seen, unique = set(), []
    for cand in req["candidates"]:  # duplicates tie exactly; their order would hinge on the last float bit
        if (cand["item_id"], cand["tags"]) not in seen:
            seen.add((cand["item_id"], cand["tags"]))
            unique.append(cand)
    req["candidates"] = unique[:100]
    out = {be: c.post(f"/v1/models/{NAME}/rank", json=req).json()["candidates"] for be, c in clients.items()}
    torch_order, onnx_order = ([x["index"] for x in out[be]] for be in ("torch", "onnx"))
    assert sorted(torch_order) == sorted(onnx_order) == list(range(len(unique[:100])))
    # the same order, except that candidates whose fused scores are equal to float32 precision may swap
    by_index = {x["index"]: x["score"] for x in out["torch"]}
    assert np.all(np.diff([by_index[i] for i in onnx_order]) <= 1e-6)
    differ = [k for k, (a, b) in enumerate(zip(torch_order, onnx_order)) if a != b]
    assert all(abs(by_index[torch_order[k]] - by_index[onnx_order[k]]) <= 1e-6 for k in differ)
    assert torch_order[:10] == onnx_order[:10]
    np.testing.assert_allclose([x["score"] for x in out["torch"]], [x["score"] for x in out["onnx"]], atol=1e-5)


# --- the request path: Server-Timing, body handling, the request encoder ------------------------
def _server_timing(response) -> dict[str, float]:
    out = {}
    for part in response.headers["server-timing"].split(","):
        name, _, dur = part.strip().partition(";dur=")
        out[name] = float(dur)
    return out


def test_server_timing_header_reports_total_and_stages(trained, clients):
    c = clients["onnx"]
    r = c.post(f"/v1/models/{NAME}/rank", json=_rank_request(trained, 20))
    t = _server_timing(r)
    assert list(t) == ["total", "parse", "table", "encode", "forward", "answer"]
    assert all(v >= 0 for v in t.values()) and t["total"] >= sum(v for k, v in t.items() if k != "total") * 0.999
    t = _server_timing(c.post(f"/v1/models/{NAME}/score", json={"rows": rows_of(trained["raw_test"], 5)}))
    assert list(t) == ["total", "parse", "table", "encode", "forward", "answer"]
    bad = c.post(f"/v1/models/{NAME}/score", json={"rows": [{"user_id": 1}]})
    assert bad.status_code == 422 and list(_server_timing(bad)) == ["total"]  # errors are timed too
    assert "total" in _server_timing(c.get("/health"))


def test_body_read_from_bytes_keeps_fastapis_errors_and_openapi(clients):
    c = clients["torch"]
    url = f"/v1/models/{NAME}/rank"
    r = c.post(url, content=b'{"context": {}, "candidates": [', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"
    r = c.post(url, content=b'{"context": {}}', headers={"content-type": "text/plain"})
    assert r.status_code == 422 and "application/json" in r.json()["detail"][0]["msg"]
    r = c.post(url, content=b"", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body"]
    r = c.post(url, content=b'\xff\xfe', headers={"content-type": "application/json"})  # not UTF-8: no echo
    assert r.status_code == 422 and r.json()["detail"][0]["input"] is None
    r = c.post(url, json={"context": {}, "candidates": [{"item_id": 1.5}], "bogus": 1})
    locs = [e["loc"] for e in r.json()["detail"]]
    assert r.status_code == 422 and ["body", "bogus"] in locs and ["body", "candidates", 0, "item_id", "int"] in locs
    spec = c.get("/openapi.json").json()
    for action, model in (("rank", "TinyRankRequest"), ("score", "TinyScoreRequest")):
        body = spec["paths"][f"/v1/models/{NAME}/{action}"]["post"]["requestBody"]["content"]["application/json"]
        assert body["schema"]["$ref"] == f"#/components/schemas/{model}"
    assert {"TinyRankRequest", "TinyScoreRequest", "TinyFeatures", "TinyCandidateColumns"} <= set(
        spec["components"]["schemas"])


def _encoded_equal(a: EncodedSplit, b: EncodedSplit) -> None:
    for name in ("categorical", "numeric", "scenario", "labels"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=name == "numeric"), name
    assert a.sequences.keys() == b.sequences.keys()
    for k in a.sequences:
        assert np.array_equal(a.sequences[k], b.sequences[k]), k


def _awkward_table(trained):
    """Request columns as they can reach the encoder: ints and strings for one id, nulls, unseen and
    over-long values, floats, a sliced array, list and string sequences with empty tokens."""
    import pyarrow as pa

    raw = trained["raw_test"].slice(0, 40)
    users = raw["user_id"].to_pylist()[:36] + [None, "never-seen", "x" * 300, ""]
    items = pa.array([int(v) if str(v).isdigit() else v for v in raw["item_id"].to_pylist()[:37]] + [None, -1, 10**12])
    tags = raw["tags"].to_pylist()[:36] + [None, "", "|t1||zz|", "t1|" * 10]
    return pa.table({"user_id": pa.array(["pad", *users]).slice(1), "item_id": items,
                     "x": pa.array(raw["x"].to_pylist()[:38] + [None, 1e6]),
                     "tags": tags, "region": raw["region"].to_pylist()[:37] + [None, "mars", "north"]})


def test_request_encoder_equals_the_training_encoders(trained):
    import pyarrow as pa

    from polyrec.serve.lookup import RequestEncoder

    b = load_bundle(trained["bundle"])
    enc = RequestEncoder(b.encoders)
    assert enc.usable
    table = _awkward_table(trained)
    want = b.encoders.encode(table, with_labels=False)
    _encoded_equal(enc.encode(table), want)
    assert (want.categorical[-3:] == 1).any()  # the unseen values are there, as the OOV id
    # other column types: floats that are integral, list sequences of ints, ids as large strings
    other = table.set_column(1, "item_id", pa.array([float(v) if v is not None else None
                                                     for v in table["item_id"].to_pylist()]))
    other = other.set_column(0, "user_id", other["user_id"].cast(pa.large_string()))
    other = other.set_column(3, "tags", pa.array([[1, 2], [], None] + [[3, 1, 2, 5]] * (other.num_rows - 3)))
    _encoded_equal(enc.encode(other), b.encoders.encode(other, with_labels=False))
    empty = enc.encode(table.slice(0, 0))  # (Encoders.encode itself fails on no rows: its user-id step)
    assert empty.categorical.shape == (0, want.categorical.shape[1]) and empty.sequences["tags"].shape == (0, 3)


def test_request_encoder_falls_back_when_two_tokens_share_a_hash(trained, monkeypatch):
    import polyrec.serve.lookup as lookup

    monkeypatch.setattr(lookup, "_hash", lambda words, lengths, fields: np.zeros(len(lengths), np.uint64))
    b = load_bundle(trained["bundle"])
    assert not b.request_encoder.usable
    table = _awkward_table(trained)
    _encoded_equal(b.request_encoder.encode(table), b.encoders.encode(table, with_labels=False))


# --- ONNX over the model registry ---------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_model_exports_to_onnx_with_parity(name, tmp_path):
    """Traced on 7 rows, checked on 64 (so the batch axis is really dynamic), probabilities within 1e-5."""
    torch.manual_seed(0)
    spec = make_spec()
    model = build_model(name, spec, 8, {}).eval()
    b, _ = make_batch(spec, 64, 1)
    enc = EncodedSplit(b.categorical.numpy(), b.numeric.numpy(), {k: v.numpy() for k, v in b.sequences.items()},
                       b.scenario.numpy(), np.zeros((64, 0), np.float32), None)
    export_onnx(model, tmp_path / "m.onnx", encoded_inputs(enc, spec))
    check = onnx_parity(model, tmp_path / "m.onnx", enc)
    assert check["rows"] == 64 and check["max_abs_diff"] <= ONNX_TOLERANCE, check


# --- fuzzing the served OpenAPI -------------------------------------------------------------------
schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402


@pytest.fixture(scope="module")
def served_schema(trained, topk_bundles):
    return schemathesis.openapi.from_asgi("/openapi.json", create_app([trained["bundle"], topk_bundles["mf"]["bundle"]]))


fuzzed = schemathesis.pytest.from_fixture("served_schema")


@fuzzed.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_schemathesis_finds_no_server_error(case):
    """Generated valid and invalid requests against every documented operation: never a 5xx."""
    case.call_and_validate(checks=[not_a_server_error])


# --- a files run with derive + joins ------------------------------------------------------------
@pytest.fixture(scope="module")
def joined(tmp_path_factory, polyrec_env):
    """MovieLens-1M-shaped files: ratings.dat joined with users.dat and movies.dat; age_bucket (the scenario)
    and hour (a feature) derived; a tiny MMoE trained on them and exported."""
    import yaml

    d = tmp_path_factory.mktemp("joined")
    pairs = [(u, i) for u in range(1, 31) for i in range(10)]
    (d / "ratings.dat").write_text("".join(f"{u}::{i:02d}::{(u * i + u) % 5 + 1}::{1_000_000 + k * 3701}\n"
                                           for k, (u, i) in enumerate(pairs)))
    (d / "users.dat").write_text("".join(f"{u}::{'MF'[u % 2]}::{[1, 25, 45][u % 3]}\n" for u in range(1, 31)))
    (d / "movies.dat").write_text("".join(f"{i:02d}::Film {i} (199{i})::{['Drama', 'Comedy|Drama', 'War'][i % 3]}\n"
                                          for i in range(10)))
    schema = {"derive": {"like": "rating > 3", "click": "rating > 2",
                         "age_bucket": {"column": "age", "buckets": [25, 35]},
                         "hour": {"column": "ts", "time_part": "hour", "type": "string"}},
              "features": [{"name": "user_id", "type": "categorical"}, {"name": "item_id", "type": "categorical"},
                           {"name": "gender", "type": "categorical"}, {"name": "hour", "type": "categorical"},
                           {"name": "genres", "type": "sequence", "sep": "|", "max_len": 3}],
              "scenario": {"name": "age_bucket"}, "tasks": [{"name": "click"}, {"name": "like"}], "user": "user_id"}
    (d / "ml.yaml").write_text(yaml.safe_dump(schema))
    side = "delimiter: '::', header: false"
    (d / "c.yaml").write_text(f"""data:
  schema_file: {d / 'ml.yaml'}
  files:
    train: {d / 'ratings.dat'}
    delimiter: '::'
    header: false
    columns: [user_id, item_id, rating, ts]
    joins:
      - {{path: {d / 'users.dat'}, on: user_id, {side}, columns: [user_id, gender, age]}}
      - {{path: {d / 'movies.dat'}, on: item_id, {side}, columns: [item_id, title, genres]}}
""")
    cfg = load_config(d / "c.yaml", [
        "model.name=mmoe", "model.embed_dim=4", "model.n_experts=2", "model.expert_dims=[8]",
        "model.tower_dims=[4]", "train.epochs=1", "train.batch_size=64", "train.progress=false", "train.seed=1",
        "train.patience=0", "train.tensorboard=false", "train.threads=1"])
    train_run(cfg, d / "run", log=lambda _: None)
    export_bundle(d / "run", d / "ml", log=lambda _: None)
    for f in ("users.dat", "movies.dat", "ratings.dat"):  # the bundle needs none of the data files
        (d / f).rename(d / f"{f}.moved")
    return d


def test_derive_and_join_bundle_asks_raw_columns_and_matches_predict(joined):
    from polyrec.serve.predict import predict_file

    bundle = load_bundle(joined / "ml")
    assert [j["file"] for j in bundle.info["joins"]] == ["joins/0.parquet", "joins/1.parquet"]
    assert "title" not in bundle.joins[1][0].column_names  # only the columns the schema reads are kept
    client = TestClient(create_app([bundle]))
    (meta,) = client.get("/v1/models").json()["models"]
    assert {f["name"]: f["type"] for f in meta["features"]} == {"user_id": "categorical", "item_id": "categorical",
                                                                "ts": "raw"}
    rows = [(u, i, 1_000_000 + 3701 * k) for k, (u, i) in enumerate([(1, 0), (2, 3), (7, 9), (30, 5), (4, 4)])]
    rows += [(999, 3, 1_000_000), (5, 77, 2_000_000)]  # an unseen user and an unseen item: no side row
    lines = "".join(f"{u}::{i if i == 77 else f'{i:02d}'}::3::{t}\n" for u, i, t in rows)
    (joined / "new.dat").write_text(lines)
    (joined / "users.dat.moved").rename(joined / "users.dat")  # predict joins the side files itself
    (joined / "movies.dat.moved").rename(joined / "movies.dat")
    try:
        predict_file(joined / "run", joined / "new.dat", joined / "want.parquet")
    finally:
        (joined / "users.dat").rename(joined / "users.dat.moved")
        (joined / "movies.dat").rename(joined / "movies.dat.moved")
    want = pq.read_table(joined / "want.parquet")
    body = {"rows": [{"user_id": u, "item_id": i if i == 77 else f"{i:02d}", "ts": t} for u, i, t in rows]}
    r = client.post("/v1/models/ml/score", json=body)
    assert r.status_code == 200, r.text
    for head in ("click", "like"):
        np.testing.assert_allclose(r.json()["scores"][head], want[head].to_numpy(), atol=1e-6)
    scen = r.json()["scenarios"]
    assert scen[:4] == ["25-35", ">=35", "25-35", "<25"] and scen[5] == "<unknown>"  # ages from users.dat
    # the raw column is required; a wrong type names it
    r = client.post("/v1/models/ml/score", json={"rows": [{"user_id": 1, "item_id": "01"}]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "rows", 0, "ts"]
    r = client.post("/v1/models/ml/rank", json={"context": {"user_id": 2, "ts": 1_000_000},
                                                "candidate_columns": {"item_id": ["01", "02", "77"]}})
    assert r.status_code == 200 and sorted(c["id"] for c in r.json()["candidates"]) == ["01", "02", "77"]


# --- top-K bundles and /recommend ------------------------------------------------------------------
@pytest.fixture(scope="module")
def topk_bundles(tmp_path_factory):
    """Tiny mf (dot product: user/item vectors) and waata (its own scorer: a stored score matrix) runs on the
    synthetic top-K data of test_topk_run, exported; the loader is replaced only while training/exporting."""
    import polyrec.topk.run as topk_run
    from helpers import quiet
    from test_topk_run import SMALL_GRAPH, cfg, tiny_data

    root = tmp_path_factory.mktemp("topk")
    mp = pytest.MonkeyPatch()
    mp.setattr(topk_run, "load_topk", lambda cfg, download=True, log=print: tiny_data())
    out = {}
    try:
        for model, params in (("mf", {}), ("waata", {**SMALL_GRAPH, "expert_dims": [8], "tower_dims": [4]})):
            train_run(cfg(model, "train.epochs=2", **params), root / f"run-{model}", log=quiet)
            export_bundle(root / f"run-{model}", root / model, log=quiet)
            run = topk_run.load_topk_run(root / f"run-{model}", log=quiet)
            with torch.inference_mode():
                scores = run.model.score_all(torch.arange(len(run.data.user_ids)), run.model.encode()).float().numpy()
            out[model] = {"bundle": root / model, "scores": scores, "data": run.data}
    finally:
        mp.undo()
    return out


def test_recommend_returns_the_models_top_k_without_seen_items(topk_bundles):
    mf, wa = (load_bundle(topk_bundles[m]["bundle"]) for m in ("mf", "waata"))
    assert mf.info["scorer"] == "dot" and wa.info["scorer"] == "matrix"
    client = TestClient(create_app([mf, wa]))
    assert {m["name"]: m["kind"] for m in client.get("/v1/models").json()["models"]} == {"mf": "topk", "waata": "topk"}
    for name, t in topk_bundles.items():
        data, scores = t["data"], t["scores"]
        for u in (0, 5, 17):
            seen = set()
            for split in data.splits.values():
                seen |= set(split.item[split.user == u].tolist())
            s = scores[u].astype(np.float64)
            want = [i for i in np.argsort(-s, kind="stable") if i not in seen][:7]
            r = client.post(f"/v1/models/{name}/recommend", json={"user_id": data.user_ids[u], "k": 7})
            assert r.status_code == 200, r.text
            items = r.json()["items"]
            assert [x["item_id"] for x in items] == [data.item_ids[i] for i in want], (name, u)
            assert [x["title"] for x in items] == [data.item_titles[i] for i in want]
            np.testing.assert_allclose([x["score"] for x in items], s[want], rtol=1e-5, atol=1e-5)
            assert not {x["item_id"] for x in items} & {data.item_ids[i] for i in seen}
            every = client.post(f"/v1/models/{name}/recommend", json={
                "user_id": int(data.user_ids[u]), "k": 1000, "exclude_seen": False}).json()["items"]
            assert len(every) == len(data.item_ids)  # k is capped by the catalogue; ints name the same user


def test_recommend_errors(topk_bundles):
    client = TestClient(create_app([topk_bundles["mf"]["bundle"]]))
    r = client.post("/v1/models/mf/recommend", json={"user_id": "nobody", "k": 5})
    assert r.status_code == 404 and "Unknown user 'nobody'" in r.json()["detail"]
    for k in (0, 1001, "many"):
        r = client.post("/v1/models/mf/recommend", json={"user_id": "100", "k": k})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "k"]
    r = client.post("/v1/models/mf/recommend", json={"k": 5})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "user_id"]
    r = client.post("/v1/models/mf/rank", json={"candidates": []})
    assert r.status_code == 404 and "use recommend" in r.json()["detail"]


def test_topk_export_refuses_onnx_and_an_oversized_score_matrix(topk_bundles, tmp_path, monkeypatch):
    import polyrec.serve.topk as topk_mod
    import polyrec.topk.run as topk_run
    from test_topk_run import tiny_data

    run = Path(str(topk_bundles["waata"]["bundle"]).replace("/waata", "/run-waata"))
    with pytest.raises(PolyrecError, match="no ONNX graph"):
        export_bundle(run, tmp_path / "x", onnx=True, log=lambda _: None)
    monkeypatch.setattr(topk_run, "load_topk", lambda cfg, download=True, log=print: tiny_data())
    monkeypatch.setattr(topk_mod, "MAX_MATRIX_FLOATS", 100)
    with pytest.raises(PolyrecError, match="'waata' is not a dot-product model"):
        export_bundle(run, tmp_path / "y", log=lambda _: None)
    assert list(tmp_path.iterdir()) == []
