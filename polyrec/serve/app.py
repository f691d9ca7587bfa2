"""The HTTP app: FastAPI routes generated per bundle from its schema, scoring through one backend.

Hot path per request: validated JSON rows -> one column per feature (lists, not row objects) -> one
pyarrow table -> Encoders.encode (unseen ids -> OOV, unknown scenario -> slot 0) -> one batched forward.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl  # imported here, not on the first /rank: that request would pay for the import
import pyarrow as pa
import pyarrow.compute as pc

from polyrec import __version__
from polyrec.errors import PolyrecError, close_matches
from polyrec.serve.backends import Backend, make_backend
from polyrec.serve.bundle import Bundle
from polyrec.serve.bundles import load_bundle
from polyrec.serve.responses import RequestError, dumps, metrics_summary
from polyrec.serve.deps import need
from polyrec.serve.fusion import Fusion, fuse
from polyrec.serve.routes import current_stages
from polyrec.serve.schemas import Column, Models, build_models

MAX_ROWS = 10_000
MAX_BODY_BYTES = 32 * 1024 * 1024
CONFIG_ENV = "POLYREC_SERVE_CONFIG"  # JSON settings for uvicorn worker processes (--workers > 1)


@dataclass
class Served:
    """One bundle as served: the bundle, its backend, generated models and defaults."""

    bundle: Bundle
    backend: Backend
    models: Models
    fusion: Fusion
    id_field: str | None

    @property
    def heads(self) -> list[str]:
        return [h.name for h in self.bundle.heads]

    def score(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """Scores [N, H] and scenario ids [N] for a raw table, in one batched forward."""
        if table.num_rows == 0:
            return np.zeros((0, len(self.heads)), np.float32), np.zeros(0, np.int32)
        stages = current_stages()
        enc = self.bundle.encode(table)
        stages.mark("encode")
        if not np.isfinite(enc.numeric).all():
            names = self.bundle.spec.numeric_fields + [v for v, d in self.bundle.spec.vector_dims.items()
                                                         for _ in range(d)]
            bad = sorted({names[j] for j in np.nonzero(~np.isfinite(enc.numeric))[1]})
            raise RequestError(422, f"numeric feature(s) {bad} are out of range once scaled (too large for float32)")
        scores = self.backend.scores(enc)
        stages.mark("forward")
        if not np.isfinite(scores).all():
            rows = np.nonzero(~np.isfinite(scores).all(1))[0][:10].tolist()
            raise RequestError(422, f"the model gives non-finite scores for rows {rows}: numeric inputs are far "
                                    "outside the training range")
        return scores, enc.scenario

    def metadata(self) -> dict[str, Any]:
        b = self.bundle
        schema = b.encoders.schema
        return {
            "name": b.name, "model": b.info["model"], "dataset": b.info.get("dataset"), "backend": self.backend.name,
            "tasks": [{"name": h.name, "kind": h.kind, "task": h.task, "space": h.space} for h in b.heads],
            "scenarios": {"column": schema.scenario.source if schema.scenario else None,
                          "names": b.encoders.scenario_names[1:] if schema.scenario else [],
                          "fallback": "unseen or missing scenario -> slot 0 ('<unknown>')" if schema.scenario
                          else None},
            "features": [{"name": c.name, "type": c.kind, "required": c.required} for c in self.models.columns],
            "fusion": self.fusion.model_dump(), "id_field": self.id_field,
            "metrics": metrics_summary(b.metrics), "onnx": b.info.get("onnx"), "versions": b.info.get("versions"),
        }


# --- columns from validated JSON ---------------------------------------------------------------
def id_array(values: list[Any]) -> pa.Array:
    """Ids as given (ints or strings); mixed or out-of-int64 values as strings, which encode identically."""
    try:
        arr = pa.array(values)
        if pa.types.is_integer(arr.type) or pa.types.is_string(arr.type) or pa.types.is_null(arr.type):
            return arr
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
        pass
    return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def raw_array(values: list[Any]) -> pa.Array:
    """A raw (pre-derive) column: numbers or strings as given; a column mixing both as strings."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def sequence_array(values: list[Any], sep: str) -> pa.Array:
    """A string column when every value is a string ("a|b"), else list<string> (null = empty sequence).
    Arrow converts either form in C; only a column mixing strings and lists is converted row by row."""
    try:
        return pa.array(values, type=pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    try:
        arr = pa.array(values)
        if pa.types.is_list(arr.type) and (pa.types.is_integer(arr.type.value_type)
                                           or pa.types.is_string(arr.type.value_type)):
            return pc.cast(arr, pa.list_(pa.string()))
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        pass
    lists = [[t for t in v.split(sep) if t] if isinstance(v, str) else [str(t) for t in v or ()] for v in values]
    return pa.array(lists, type=pa.list_(pa.string()))


@dataclass(frozen=True)
class Repeated:
    """One value standing for a whole column (a context feature in the columnar /rank form): converted to
    arrow once and repeated in C, instead of n copies converted one by one."""

    value: Any
    n: int

    def __len__(self) -> int:
        return self.n


Values = list[Any] | Repeated


def column_array(kind: str, vals: Values, sep: str = "|") -> pa.Array:
    """One request column in arrow, by the column's kind (a Repeated value: the 1-value array, repeated)."""
    if isinstance(vals, Repeated):
        one = column_array(kind, [vals.value], sep)
        return one.take(pa.array(np.zeros(vals.n, np.int32)))
    if kind == "numeric":
        return pa.array(vals, type=pa.float64())
    if kind == "sequence":
        return sequence_array(vals, sep)
    if kind == "raw":
        return raw_array(vals)
    return id_array(vals)


def _all_null(vals: Values) -> bool:
    return vals.value is None if isinstance(vals, Repeated) else vals.count(None) == len(vals)


def build_table(served: Served, values: dict[str, Values], n: int) -> pa.Table:
    """One pyarrow table from per-column values (each list converted in C). An all-absent scenario is left
    out so the recipe can derive it; still absent after that, it is null (-> the unknown-scenario slot)."""
    seps = {f.source: f.sep for f in served.bundle.encoders.schema.sequences}
    arrays: dict[str, pa.Array] = {}
    for col in served.models.columns:
        vals = values[col.name]
        if col.kind in ("numeric", "sequence", "raw") or col.required or not _all_null(vals):
            arrays[col.name] = column_array(col.kind, vals, seps.get(col.name, "|"))
    table = pa.table(arrays) if arrays else pa.table({"_": pa.nulls(n)})
    from polyrec.serve.bundle import derive

    dataset = served.bundle.info.get("dataset")
    scen = next((c.name for c in served.models.columns if c.kind == "scenario"), None)
    if scen in table.column_names and table[scen].null_count:  # rows without a scenario: derived where possible
        derived = derive(dataset, table.drop_columns([scen]))
        if scen in derived.column_names:
            given = table[scen] if pa.types.is_string(table[scen].type) else pc.cast(table[scen], pa.string())
            table = table.set_column(table.column_names.index(scen), scen,
                                     pc.coalesce(given, pc.cast(derived[scen], pa.string())))
    table = derive(dataset, table)
    for col in served.models.columns:
        if col.name not in table.column_names:
            table = table.append_column(col.name, pa.nulls(n, pa.string()))
    return table


def _missing(loc: list[Any], name: str, where: str) -> dict[str, Any]:
    return {"type": "missing", "loc": loc, "input": None, "msg": f"Field required (feature {name!r} is {where})"}


def _one_form(rows: Any, columns: Any, names: tuple[str, str]) -> None:
    if (rows is None) == (columns is None):
        raise RequestError(422, [{"type": "value_error", "loc": ["body", names[0]], "input": None,
                                  "msg": f"give exactly one of {names[0]!r} (a list of objects) or {names[1]!r} "
                                         "(feature -> list of values)"}])


def column_values(columns: dict[str, list[Any]], cols: list[Column], context: dict[str, Any],
                  field: str) -> tuple[dict[str, Values], int]:
    """The columnar form: lists as given (lengths must agree); a feature left out takes the context's value."""
    lengths = {k: len(v) for k, v in columns.items()}
    n = max(lengths.values(), default=0)
    bad = [k for k, v in lengths.items() if v != n]
    if bad:
        raise RequestError(422, [{"type": "value_error", "loc": ["body", field, k], "input": None,
                                  "msg": f"column {k!r} has {lengths[k]} values, others have {n}"} for k in bad])
    out, errors = {}, []
    for c in cols:
        if c.name in columns:
            out[c.name] = columns[c.name]
        elif c.name in context:
            out[c.name] = Repeated(context[c.name], n)
        else:
            if c.required and n:
                errors.append(_missing(["body", field, c.name], c.name, "in neither the context nor the columns"))
            out[c.name] = [None] * n
    if errors:
        raise RequestError(422, errors)
    return out, n


def merged_values(context: dict[str, Any], cands: list[dict[str, Any]], cols: list[Column],
                  field: str = "candidates") -> dict[str, list[Any]]:
    """Each column: the candidate's value where it sets one (null included), else the context's; a required
    feature set by neither is a 422 naming the field and the candidates that lack it. One dict lookup per
    candidate and column; the candidates are plain dicts (validated TypedDicts)."""
    out, errors = {}, []
    for c in cols:
        name = c.name
        if name in context:
            fill = context[name]
            out[name] = [x.get(name, fill) for x in cands]
            continue
        vals = [x.get(name) for x in cands]
        if c.required and None in vals:
            missing = [i for i, x in enumerate(cands) if name not in x]
            errors += [_missing(["body", field, i, name], name, "in neither the context nor the candidate")
                       for i in missing[:20]]
        out[name] = vals
    if errors:
        raise RequestError(422, errors)
    return out


# --- the app ----------------------------------------------------------------------------------
class BodyLimit:
    """Refuses bodies over `max_bytes` with 413, by Content-Length or while reading a chunked body."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(send)
        body, more, first = b"", True, None
        while more:
            msg = await receive()
            if msg["type"] != "http.request":
                first = msg
                break
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._refuse(send)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return first or {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Any) -> None:
        payload = json.dumps({"detail": f"request body over the limit of {self.max_bytes} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


def default_id_field(bundle: Bundle) -> str | None:
    cats = [f.source for f in bundle.encoders.schema.categorical]
    return next((c for c in cats if "item" in c.lower()), None)


def serve_bundle(bundle: Bundle, backend: str = "torch", threads: int | None = None) -> Served:
    heads = [h.name for h in bundle.heads]
    fusion = Fusion.model_validate(bundle.info.get("fusion") or {}).resolved(
        heads, [h.name for h in bundle.heads if h.kind == "binary" and h.train])
    keys = list(dict.fromkeys(k for _, ks, _ in bundle.joins for k in ks))
    models = build_models(bundle.name, bundle.encoders.schema, heads, bundle.joined_columns, keys)
    return Served(bundle, make_backend(bundle, backend, threads), models, fusion, default_id_field(bundle))


def create_app(bundles: list[Any], backend: str = "torch", threads: int | None = None,
               max_rows: int = MAX_ROWS, max_body_bytes: int = MAX_BODY_BYTES) -> Any:
    """A FastAPI app serving `bundles` (loaded Bundle / TopKBundle objects or bundle folders)."""
    fastapi = need("fastapi")
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from polyrec.serve.routes import ServerTiming
    from polyrec.serve.topk import TopKBundle, add_recommend_route

    loaded = [b if isinstance(b, (Bundle, TopKBundle)) else load_bundle(b) for b in bundles]
    if not loaded:
        raise PolyrecError("Give at least one bundle to serve.")
    names = [b.name for b in loaded]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PolyrecError(f"Two bundles are named {dupes}: re-export one with another --name.")
    served: dict[str, Served | TopKBundle] = {
        b.name: b if isinstance(b, TopKBundle) else serve_bundle(b, backend, threads) for b in loaded}
    app = FastAPI(title="polyrec", version=__version__,
                  description="Multi-task, multi-scenario scoring and ranking of exported polyrec bundles.")
    app.state.served = served
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(ServerTiming)  # outermost: its total includes reading the body

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(PolyrecError)
    async def _polyrec_error(_: Request, exc: PolyrecError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.get("/health", summary="Liveness and the served models")
    def health() -> dict[str, Any]:
        return {"status": "ok", "models": list(served), "backend": backend}

    @app.get("/v1/models", summary="Metadata of every served model")
    def models() -> dict[str, Any]:
        return {"models": [s.metadata() for s in served.values()]}

    for name, s in served.items():
        if isinstance(s, TopKBundle):
            add_recommend_route(app, s)
        else:
            _add_routes(app, name, s, max_rows)

    @app.api_route("/v1/models/{name}/{action}", methods=["GET", "POST"], include_in_schema=False)
    def unknown_model(name: str, action: str) -> JSONResponse:
        if name in served:
            use = "recommend (a top-K model)" if isinstance(served[name], TopKBundle) else "score or rank"
            return JSONResponse({"detail": f"Unknown endpoint {action!r} for model {name!r}; use {use}."},
                                status_code=404)
        return JSONResponse({"detail": f"Unknown model {name!r}.{close_matches(name, served)} "
                                       f"Served: {', '.join(served)}."}, status_code=404)

    _ = fastapi
    return app


def ranked_json(order: np.ndarray, ids: pa.Array, scenarios: np.ndarray, scores: np.ndarray, fused: np.ndarray,
                heads: list[str]) -> bytes:
    """The ranked candidates as a JSON array of objects, written by polars in Rust (no object per candidate
    in Python); floats in shortest round-trip form, as json.dumps writes them."""
    frame = pl.DataFrame({
        "index": pl.Series(order.astype(np.int64)),
        "id": pl.from_arrow(ids.take(pa.array(order))) if len(ids) else pl.Series([], dtype=pl.Null),
        "scenario": pl.Series(scenarios.astype(str), dtype=pl.String),
        "scores": pl.DataFrame({h: scores[:, j].astype(np.float64) for j, h in enumerate(heads)}).to_struct(),
        "score": pl.Series(fused.astype(np.float64)),
    })
    return frame.write_json().encode() if len(order) else b"[]"


def _add_routes(app: Any, name: str, s: Served, max_rows: int) -> None:
    """POST /v1/models/{name}/score and /rank with this bundle's generated request/response models."""
    from fastapi.responses import Response

    from polyrec.serve.routes import JsonBodyRoute

    m = s.models
    heads = s.heads
    scen_names = np.array(s.bundle.encoders.scenario_names, dtype=object)
    answer_head = b'{"model":%s,"backend":%s' % (dumps(name), dumps(s.backend.name))  # the same every time
    default_fusion = dumps(s.fusion.model_dump())
    too_many = {413: {"description": f"more than {max_rows} rows/candidates, or a body over the size limit"}}

    def check_count(n: int, what: str) -> None:
        if n > max_rows:
            raise RequestError(413, f"{n} {what} is over the limit of {max_rows} per request")

    def score(request: Any) -> Response:
        _one_form(request.rows, request.columns, ("rows", "columns"))
        if request.columns is not None:
            values, n = column_values(request.columns, m.columns, {}, "columns")
            check_count(n, "rows")
        else:
            n = len(request.rows)
            check_count(n, "rows")
            values = merged_values({}, request.rows, m.columns, "rows")
        table = build_table(s, values, n)
        current_stages().mark("table")
        scores, scen = s.score(table)
        out = Response(dumps({"model": name, "backend": s.backend.name,
                              "scores": {h: scores[:, i].tolist() for i, h in enumerate(heads)},
                              "scenarios": scen_names[scen].tolist()}), media_type="application/json")
        current_stages().mark("answer")
        return out

    def rank(request: Any) -> Response:
        _one_form(request.candidates, request.candidate_columns, ("candidates", "candidate_columns"))
        if request.candidate_columns is not None:
            values, n = column_values(request.candidate_columns, m.columns, request.context, "candidate_columns")
            check_count(n, "candidates")
        else:
            n = len(request.candidates)
            check_count(n, "candidates")
            values = merged_values(request.context, request.candidates, m.columns)
        fusion = request.fusion.resolved(heads, list(s.fusion.weights or {})) if request.fusion is not None else s.fusion
        id_field = request.id_field or s.id_field
        if request.id_field is not None and request.id_field not in {c.name for c in m.columns}:
            raise RequestError(422, [{"type": "value_error", "loc": ["body", "id_field"], "input": request.id_field,
                                      "msg": f"unknown feature {request.id_field!r}"
                                             f"{close_matches(request.id_field, [c.name for c in m.columns])}"}])
        table = build_table(s, values, n)
        stages = current_stages()
        stages.mark("table")
        scores, scen = s.score(table)
        fused = fuse(scores, heads, fusion)
        order = np.argsort(-fused, kind="stable")[: request.top_k]
        ids = column_array("categorical", values[id_field]) if id_field else pa.nulls(n)
        out = Response(b'%s,"fusion":%s,"candidates":%s}' % (
            answer_head, default_fusion if fusion is s.fusion else dumps(fusion.model_dump()),
            ranked_json(order, ids, scen_names[scen[order]], scores[order], fused[order], heads)),
            media_type="application/json")
        stages.mark("answer")
        return out

    score.__annotations__["request"] = m.ScoreRequest  # generated models, not resolvable from a string
    rank.__annotations__["request"] = m.RankRequest
    app.router.add_api_route(f"/v1/models/{name}/score", score, methods=["POST"], response_model=m.ScoreResponse,
                             responses=too_many, summary=f"Per-task scores of rows ({name})",
                             operation_id=f"score_{name}", route_class_override=JsonBodyRoute)
    app.router.add_api_route(f"/v1/models/{name}/rank", rank, methods=["POST"], response_model=m.RankResponse,
                             responses=too_many, summary=f"Candidates ranked by fused task scores ({name})",
                             operation_id=f"rank_{name}", route_class_override=JsonBodyRoute)


def app_from_env() -> Any:
    """uvicorn factory for worker processes: settings from $POLYREC_SERVE_CONFIG (set by `polyrec serve`)."""
    cfg = json.loads(os.environ[CONFIG_ENV])
    return create_app(cfg["bundles"], cfg["backend"], cfg.get("threads"), cfg.get("max_rows", MAX_ROWS),
                      cfg.get("max_body_bytes", MAX_BODY_BYTES))


def serve(bundles: list[str], host: str = "127.0.0.1", port: int = 8000, workers: int = 1, backend: str = "torch",
          threads: int | None = None, max_rows: int = MAX_ROWS, max_body_bytes: int = MAX_BODY_BYTES) -> None:
    """Run uvicorn (graceful shutdown on SIGINT/SIGTERM: in-flight requests finish)."""
    uvicorn = need("uvicorn")
    cfg = {"bundles": [str(Path(b).resolve()) for b in bundles], "backend": backend, "threads": threads,
           "max_rows": max_rows, "max_body_bytes": max_body_bytes}
    app = create_app(cfg["bundles"], backend, threads, max_rows, max_body_bytes)  # fail here, in one line
    if workers > 1:
        os.environ[CONFIG_ENV] = json.dumps(cfg)
        uvicorn.run("polyrec.serve.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                    timeout_graceful_shutdown=10)
    else:
        uvicorn.run(app, host=host, port=port, timeout_graceful_shutdown=10)
