"""Request and response models generated from a bundle's Schema (pydantic create_model), so the OpenAPI
document names every feature with its type and a wrong type or a missing feature is a 422 naming it.

Types: categorical ids are `int | str` (both canonicalise to the same token, as in training); numeric
features are finite floats or null (null = missing, filled with the training statistic); sequences are a
separator string ("a|b") or a list of ids. The scenario column (and a user column that is not a feature)
are optional: absent means "derived by the recipe when it can, else the unknown scenario"."""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from typing import Annotated, Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from polyrec.data.schema import CategoricalFeature, NumericFeature, Schema
from polyrec.serve.fusion import Fusion

Id = Union[int, str]
Number = Optional[Annotated[float, Field(allow_inf_nan=False)]]
Sequence = Union[str, list[Id]]


@dataclass(frozen=True)
class Column:
    """One raw request column: its JSON name (the schema's source column), python attribute and role."""

    name: str
    attr: str
    kind: str  # categorical | numeric | sequence | scenario | user
    required: bool


def columns(schema: Schema) -> list[Column]:
    cols: list[Column] = []
    seen: set[str] = set()

    def add(name: str, kind: str, required: bool) -> None:
        if name in seen:
            return
        seen.add(name)
        attr = re.sub(r"\W", "_", name)
        if not attr.isidentifier() or keyword.iskeyword(attr) or attr.startswith("_") or attr in ("model_config",):
            attr = f"f_{attr}"
        cols.append(Column(name, f"{attr}__{len(cols)}", kind, required))

    for f in schema.features:
        kind = "categorical" if isinstance(f, CategoricalFeature) else "numeric" if isinstance(f, NumericFeature) \
            else "sequence"
        add(f.source, kind, True)
    if schema.scenario is not None:
        add(schema.scenario.source, "scenario", False)
    if schema.user is not None:
        add(schema.user, "user", False)
    return cols


_TYPES: dict[str, Any] = {"categorical": Id, "numeric": Number, "sequence": Sequence,
                          "scenario": Optional[Id], "user": Optional[Id]}
_DOCS = {"categorical": "categorical id (unseen ids map to the out-of-vocabulary id)",
         "numeric": "number; null = missing (filled with the training statistic)",
         "sequence": "sequence of ids: a separator-joined string or a list",
         "scenario": "scenario; absent, null or unseen = derived by the recipe where it can be, else the "
                     "unknown-scenario slot (id 0)",
         "user": "user id (groups only; optional)"}


def _fields(cols: list[Column], all_optional: bool) -> dict[str, Any]:
    out = {}
    for c in cols:
        typ = _TYPES[c.kind]
        if c.required and not all_optional:
            out[c.attr] = (typ, Field(..., alias=c.name, description=_DOCS[c.kind]))
        else:
            out[c.attr] = (Optional[typ], Field(None, alias=c.name, description=_DOCS[c.kind]))
    return out


@dataclass
class Models:
    """The generated models of one bundle."""

    columns: list[Column]
    Row: type[BaseModel]
    Partial: type[BaseModel]
    ScoreRequest: type[BaseModel]
    ScoreResponse: type[BaseModel]
    RankRequest: type[BaseModel]
    RankResponse: type[BaseModel]


def build_models(prefix: str, schema: Schema, heads: list[str]) -> Models:
    """Pydantic models for /score and /rank of one bundle (`prefix` keeps names unique across bundles)."""
    p = re.sub(r"\W", "_", prefix).title().replace("_", "")
    cols = columns(schema)
    cfg = ConfigDict(populate_by_name=False, extra="ignore")
    row = create_model(f"{p}Row", __config__=cfg, **_fields(cols, all_optional=False))
    partial = create_model(f"{p}Features", __config__=cfg, **_fields(cols, all_optional=True))
    scores = create_model(f"{p}HeadScores", **{h: (list[float], ...) for h in heads})
    task_scores = create_model(f"{p}TaskScores", **{h: (float, ...) for h in heads})
    score_req = create_model(f"{p}ScoreRequest", __config__=ConfigDict(extra="forbid"),
                             rows=(list[row], Field(..., description="rows to score; each by its own scenario")))
    score_resp = create_model(f"{p}ScoreResponse", model=(str, ...), backend=(str, ...),
                              scores=(scores, Field(..., description="one list per head, in row order")),
                              scenarios=(list[str], Field(..., description="scenario each row was scored under")))
    rank_req = create_model(
        f"{p}RankRequest", __config__=ConfigDict(extra="forbid"),
        context=(partial, Field(default_factory=partial, description="features shared by every candidate (user, scenario)")),
        candidates=(list[partial], Field(..., description="candidate features; they override the context's")),
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
