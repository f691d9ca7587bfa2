"""Request and response models generated from a bundle's Schema (pydantic create_model), so the OpenAPI
document names every feature with its type and a wrong type or a missing feature is a 422 naming it.

Types: categorical ids are `int | str` (both canonicalise to the same token, as in training); numeric
features are finite floats or null (null = missing, filled with the training statistic); sequences are a
separator string ("a|b") or a list of ids. The scenario column (and a user column that is not a feature)
are optional: absent means "derived by the recipe when it can, else the unknown scenario".

Rows and candidates are TypedDicts, not BaseModels: pydantic-core validates a list of them in Rust and hands
back plain dicts, so the app reads a column with one dict lookup per row instead of an object per row. The
columnar forms (`columns` / `candidate_columns`: feature -> list of values) need no per-row work at all."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, create_model
from typing_extensions import NotRequired, Required, TypedDict

from polyrec.data.schema import CategoricalFeature, NumericFeature, Schema, VectorFeature
from polyrec.serve.fusion import Fusion

Id = Union[int, str]
Number = Optional[Annotated[float, Field(allow_inf_nan=False)]]
Sequence = Union[str, list[Id]]


@dataclass(frozen=True)
class Column:
    """One raw request column: its JSON name (the schema's source column) and role."""

    name: str
    kind: str  # categorical | numeric | sequence | vector | text | scenario | user
    required: bool


def _kind(f: Any) -> str:
    if isinstance(f, CategoricalFeature):
        return "categorical"
    if isinstance(f, NumericFeature):
        return "numeric"
    if isinstance(f, VectorFeature):
        return "text" if f.text is not None else "vector"
    return "sequence"


def columns(schema: Schema, joined: set[str] | frozenset[str] = frozenset(),
            join_keys: list[str] | None = None) -> list[Column]:
    """The raw columns a request carries: what the schema reads before its `derive` step (the inputs of
    derived columns, not the derived ones), less what the bundle's side tables bring (`joined`), plus
    their join keys."""
    from polyrec.data.derive import raw_columns

    kinds = {f.source: _kind(f) for f in schema.all_features}
    if schema.scenario is not None:
        kinds.setdefault(schema.scenario.source, "scenario")
    if schema.user is not None:
        kinds.setdefault(schema.user, "user")
    raw = raw_columns(schema, with_labels=False, aggregated=False) if schema.derive else schema.input_columns()
    cols: list[Column] = []
    for name in dict.fromkeys([*(join_keys or []), *raw]):
        if name in joined:
            continue
        kind = kinds.get(name, "key" if name in (join_keys or []) else "raw")
        cols.append(Column(name, kind, kind not in ("scenario", "user")))
    return cols


Raw = Optional[Union[int, Annotated[float, Field(allow_inf_nan=False)], str]]
Finite = Annotated[float, Field(allow_inf_nan=False)]
_TYPES: dict[str, Any] = {"categorical": Id, "numeric": Number, "sequence": Sequence,
                          "vector": Optional[Union[list[Finite], str]], "text": Optional[str],
                          "scenario": Optional[Id], "user": Optional[Id], "key": Id, "raw": Raw}
_DOCS = {"categorical": "categorical id (unseen ids map to the out-of-vocabulary id)",
         "numeric": "number; null = missing (filled with the training statistic)",
         "sequence": "sequence of ids: a separator-joined string or a list",
         "vector": "dense vector: a list of exactly `dim` finite numbers (or a string of them); null = missing "
                   "(filled with the training mean vector)",
         "text": "free text, hashed into the model's vector feature; null = missing",
         "scenario": "scenario; absent, null or unseen = derived by the recipe where it can be, else the "
                     "unknown-scenario slot (id 0)",
         "user": "user id (groups only; optional)",
         "key": "join key: the bundle joins its side table on it (an unseen key = missing side columns)",
         "raw": "raw column the schema derives features from (as in the training files)"}


def _typed_dict(name: str, cols: list[Column], all_optional: bool, columnar: bool = False) -> type:
    """A TypedDict keyed by the JSON names (any string works as a key); `columnar`: each value a list."""
    fields: dict[str, Any] = {}
    for c in cols:
        typ = _TYPES[c.kind] if c.required and not all_optional else Optional[_TYPES[c.kind]]
        doc = _DOCS[c.kind]
        if columnar:
            typ, doc = list[typ], f"one value per candidate/row: {doc}"
        wrap = Required if c.required and not all_optional else NotRequired
        fields[c.name] = wrap[Annotated[typ, Field(description=doc)]]
    td = TypedDict(name, fields)  # type: ignore[operator]
    td.__pydantic_config__ = ConfigDict(extra="ignore")  # type: ignore[attr-defined]
    return td


@dataclass
class Models:
    """The generated models of one bundle."""

    columns: list[Column]
    Row: type
    Partial: type
    ScoreRequest: type[BaseModel]
    ScoreResponse: type[BaseModel]
    RankRequest: type[BaseModel]
    RankResponse: type[BaseModel]


def build_models(prefix: str, schema: Schema, heads: list[str], joined: set[str] | frozenset[str] = frozenset(),
                 join_keys: list[str] | None = None) -> Models:
    """Pydantic models for /score and /rank of one bundle (`prefix` keeps names unique across bundles)."""
    p = re.sub(r"\W", "_", prefix).title().replace("_", "")
    cols = columns(schema, joined, join_keys)
    row = _typed_dict(f"{p}Row", cols, all_optional=False)
    partial = _typed_dict(f"{p}Features", cols, all_optional=True)
    row_cols = _typed_dict(f"{p}Columns", cols, all_optional=False, columnar=True)
    cand_cols = _typed_dict(f"{p}CandidateColumns", cols, all_optional=True, columnar=True)
    scores = create_model(f"{p}HeadScores", **{h: (list[float], ...) for h in heads})
    task_scores = create_model(f"{p}TaskScores", **{h: (float, ...) for h in heads})
    score_req = create_model(
        f"{p}ScoreRequest", __config__=ConfigDict(extra="forbid"),
        rows=(Optional[list[row]], Field(None, description="rows to score; each by its own scenario")),
        columns=(Optional[row_cols], Field(None, description="the same rows as columns (feature -> values, "
                                                            "equal lengths); give rows or columns")))
    score_resp = create_model(f"{p}ScoreResponse", model=(str, ...), backend=(str, ...),
                              scores=(scores, Field(..., description="one list per head, in row order")),
                              scenarios=(list[str], Field(..., description="scenario each row was scored under")))
    rank_req = create_model(
        f"{p}RankRequest", __config__=ConfigDict(extra="forbid"),
        context=(partial, Field(default_factory=dict, description="features shared by every candidate (user, scenario)")),
        candidates=(Optional[list[partial]], Field(None, description="candidate features; they override the context's")),
        candidate_columns=(Optional[cand_cols], Field(None, description="the candidates as columns (feature -> one "
                                                                        "value per candidate); give candidates or "
                                                                        "candidate_columns")),
        fusion=(Optional[Fusion], Field(None, description="per-request fusion; default: the bundle's")),
        id_field=(Optional[str], Field(None, description="feature whose value is each candidate's id "
                                                          "(default: the bundle's item column)")),
        top_k=(Optional[Annotated[int, Field(ge=1)]], Field(None, description="return only the best K")),
    )
    ranked = create_model(f"{p}RankedCandidate", index=(int, ...), id=(Optional[Id], None), scenario=(str, ...),
                          scores=(task_scores, ...), score=(float, Field(..., description="fused score")))
    rank_resp = create_model(f"{p}RankResponse", model=(str, ...), backend=(str, ...), fusion=(Fusion, ...),
                             candidates=(list[ranked], Field(..., description="best first")))
    return Models(cols, row, partial, score_req, score_resp, rank_req, rank_resp)
