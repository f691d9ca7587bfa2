"""Declarative data schema: which column plays which role.

The same schema drives encoder fitting, the cache key, the model's input spec and request
validation at prediction time. It is written in YAML (or built in Python) as::

    features:
      - {name: user_id, type: categorical, min_freq: 2}
      - {name: age, type: numeric, fill: mean, scale: standard}
      - {name: genres, type: sequence, sep: "|", max_len: 6}
      - {name: title_emb, type: vector, dim: 64}   # a list/array column (or "0.1,0.2,..." text) of 64 floats
      - {name: title_hash, type: vector, dim: 256, column: title, text: {method: hashing}}  # hashed words
    scenario: {name: age_bucket}          # optional; its ids select scenario parameters
    tasks:
      - {name: click, type: binary}       # label column = name unless `column:` is given
      - {name: rating, type: regression}
    user: user_id                          # optional; enables gAUC (top-K runs need it)
    item: item_id                          # optional; the ranked entity of top-K runs (and serving's /recommend)
    time: ts                               # optional; the time column of temporal splits
    derive:                                # optional; columns computed from raw ones (polars SQL)
      click: "rating >= 3"
      hour: {column: ts, time_part: hour, buckets: [6, 12, 18], labels: [night, morning, noon, evening]}
    aggregate:                             # optional; event log -> one row per (user, item)
      by: [user_id, item_id]
      labels: {column: behavior, values: [cart, fav, buy], how: any}
      columns: {first_ts: {column: ts, how: min}}
    filter: "behavior <> 'pv'"             # optional; training rows kept (polars SQL), after derive
    history:                               # optional; behaviour sequences built from the log itself
      - {name: hist, user: user_id, item: item_id, time: ts, max_len: 50, by: behavior, values: [click, buy],
         fields: [category], gap: true}

A history gives every row the user's earlier events (strictly earlier timestamps: an event at the row's own
time, the row itself included, is never in its history), newest first, as sequence features that share the
item feature's vocabulary and embedding (see polyrec.data.history).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer, model_validator

from polyrec.errors import PolyrecError, close_matches

M = TypeVar("M", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CategoricalFeature(_Strict):
    """An id-like column; values become vocabulary ids (0 = padding, 1 = out-of-vocabulary)."""

    name: str
    type: Literal["categorical"] = "categorical"
    column: str | None = None
    min_freq: int = Field(1, ge=1)
    # ids -> 2 + (stable 64-bit hash of the canonical string) mod hash_buckets; no vocabulary is stored (for
    # vocabularies too large to keep); colliding ids share an embedding row (polyrec.data.encoders.HashedVocabulary)
    hash_buckets: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _hashed(self) -> "CategoricalFeature":
        if self.hash_buckets is not None and self.min_freq > 1:
            raise ValueError(f"feature {self.name!r}: min_freq does not apply to hashed ids (hash_buckets); "
                             "drop one of them")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        """Without hash_buckets when unset: schema dumps (cache keys, run folders) stay as they were before it."""
        out = handler(self)
        if out.get("hash_buckets") is None:
            out.pop("hash_buckets", None)
        return out

    @property
    def source(self) -> str:
        return self.column or self.name


class NumericFeature(_Strict):
    """A real-valued column; NaN filled with a training statistic, then scaled."""

    name: str
    type: Literal["numeric"] = "numeric"
    column: str | None = None
    fill: Literal["mean", "median", "zero"] = "mean"
    scale: Literal["standard", "minmax", "log_standard", "none"] = "standard"

    @property
    def source(self) -> str:
        return self.column or self.name


class SequenceFeature(_Strict):
    """A variable-length list of ids (a string with separators, or a list column), padded to max_len."""

    name: str
    type: Literal["sequence"] = "sequence"
    column: str | None = None
    sep: str = "|"
    max_len: int = Field(20, ge=1)
    keep: Literal["first", "last"] = "first"
    min_freq: int = Field(1, ge=1)
    vocab: str | None = None  # a categorical feature whose vocabulary and embedding rows the tokens share

    @property
    def source(self) -> str:
        return self.column or self.name


class TextHashing(_Strict):
    """Free text hashed into the vector (polyrec.data.vectors.hashed_text)."""

    method: Literal["hashing"] = "hashing"
    ngrams: int = Field(1, ge=1, le=3)  # word n-grams up to this length


class VectorFeature(_Strict):
    """A dense float vector per row (a precomputed text/image embedding), or hashed text with `text:`.

    Read from a list / fixed-size-list column or a text column of numbers (polyrec.data.vectors); models see it
    as one field (a learned projection to the embedding size) or, in flat inputs, as its raw values.
    """

    name: str
    type: Literal["vector"] = "vector"
    column: str | None = None
    dim: int = Field(ge=1, le=65536)
    normalize: Literal["none", "l2"] = "none"
    text: TextHashing | None = None

    @property
    def source(self) -> str:
        return self.column or self.name


Feature = Annotated[
    Union[CategoricalFeature, NumericFeature, SequenceFeature, VectorFeature], Field(discriminator="type")
]


class HistorySpec(_Strict):
    """A user's earlier events, computed from the rows themselves (polyrec.data.history).

    Outputs, per part (one part, or one per `values` entry of `by`): the sequence `<name>` (or
    `<name>_<value>`) of event items, newest first, cut to max_len; per side field f the aligned sequence
    `<part>__<f>`; with `gap`, `<part>__gap`: log2 buckets of the time between the event and the row.
    """

    name: str
    user: str
    item: str
    time: str
    max_len: int = Field(50, ge=1)
    by: str | None = None  # behaviour column: one history per listed value
    values: list[str | int] | None = None  # the behaviour values (required with `by`)
    events: str | None = None  # SQL: which rows count as events (default: every row)
    fields: list[str] = Field(default_factory=list)  # side columns of each event
    gap: bool = False
    vocab: str | None = None  # the categorical feature the items share; default: the one whose column is `item`

    @model_validator(mode="after")
    def _by(self) -> "HistorySpec":
        if (self.by is None) != (self.values is None):
            raise ValueError("history: `by` and `values` go together (one history per listed value of `by`)")
        if self.values is not None and (not self.values or len(set(map(str, self.values))) != len(self.values)):
            raise ValueError("history: `values` must be a non-empty list of distinct values")
        return self

    def parts(self) -> list[tuple[str, str | int | None]]:
        """(sequence name, behaviour value or None) per part."""
        if self.values is None:
            return [(self.name, None)]
        return [(f"{self.name}_{v}", v) for v in self.values]

    def columns(self) -> list[str]:
        """Every column the history adds to the rows."""
        return [c for part, _ in self.parts() for c in self.part_columns(part)]

    def part_columns(self, part: str) -> list[str]:
        return [part, *(f"{part}__{f}" for f in self.fields), *([f"{part}__gap"] if self.gap else [])]

    def inputs(self) -> list[str]:
        cols = [self.user, self.item, self.time, *self.fields]
        return cols + ([self.by] if self.by else [])


class ScenarioSpec(_Strict):
    """The one categorical column whose ids select scenario-specific parameters."""

    name: str
    column: str | None = None
    as_feature: bool = True  # also embed it as an ordinary categorical input

    @property
    def source(self) -> str:
        return self.column or self.name


class TaskSpec(_Strict):
    """One prediction target. `space` restricts loss and metrics to rows where that task's label is 1."""

    name: str
    type: Literal["binary", "regression"] = "binary"
    column: str | None = None
    space: str | None = None

    @property
    def source(self) -> str:
        return self.column or self.name


class DerivedColumn(_Strict):
    """A column computed from raw ones: `expr` (a SQL expression) or `column`, then optional steps in the
    order time_part -> transform -> clip -> buckets."""

    expr: str | None = None
    column: str | None = None
    time_part: Literal["hour", "weekday", "day", "month", "year", "minute"] | None = None  # of unix seconds, UTC
    time_unit: Literal["s", "ms", "us", "ns"] = "s"
    transform: Literal["log1p", "log", "sqrt", "abs"] | None = None
    clip: tuple[float | None, float | None] | None = None
    buckets: list[float] | None = None  # sorted edges: value < e0 -> bucket 0, e0 <= value < e1 -> 1, ...
    labels: list[str] | None = None  # one per bucket (len(buckets) + 1); default '<e0', 'e0-e1', '>=eN'
    type: Literal["auto", "int", "float", "string"] = "auto"  # auto: booleans become 0/1 int8

    @model_validator(mode="after")
    def _one_source(self) -> "DerivedColumn":
        if (self.expr is None) == (self.column is None):
            raise ValueError("a derived column needs exactly one of expr or column")
        if self.buckets is not None:
            if list(self.buckets) != sorted(self.buckets) or not self.buckets:
                raise ValueError("buckets must be a non-empty list of increasing edges")
            if self.labels is not None and len(self.labels) != len(self.buckets) + 1:
                raise ValueError(f"labels needs {len(self.buckets) + 1} names for {len(self.buckets)} bucket edges")
        elif self.labels is not None:
            raise ValueError("labels without buckets")
        return self


class AggregateColumn(_Strict):
    """One output of a group: `how` over `column` (or over `expr`, or over `column == equals`)."""

    how: Literal["any", "max", "min", "sum", "count", "mean", "first", "last", "n_unique"]
    column: str | None = None
    expr: str | None = None
    equals: str | int | float | list[str | int | float] | None = None

    @model_validator(mode="after")
    def _source(self) -> "AggregateColumn":
        if self.column is not None and self.expr is not None:
            raise ValueError("give column or expr, not both")
        if self.column is None and self.expr is None and self.how != "count":
            raise ValueError(f"how={self.how} needs a column or an expr")
        return self


class FlagLabels(_Strict):
    """One label per listed value of a behaviour column: e.g. cart/fav/buy = any event of that type."""

    column: str
    values: list[str | int]
    how: Literal["any", "count"] = "any"
    prefix: str = ""  # output names: prefix + value


class AggregateSpec(_Strict):
    """Event log -> one row per group (e.g. per (user, item)), before derived columns and splits."""

    by: list[str] = Field(min_length=1)
    order_by: str | None = None  # row order for first/last (e.g. the timestamp); file order otherwise
    labels: FlagLabels | None = None
    columns: dict[str, AggregateColumn] = Field(default_factory=dict)


class Schema(_Strict):
    """Roles of a table's columns. Order of `features` and `tasks` is the model's input/output order."""

    features: list[Feature]
    tasks: list[TaskSpec] = Field(min_length=1)
    scenario: ScenarioSpec | None = None
    user: str | None = None
    item: str | None = None  # the item column of top-K runs (user x item interactions)
    time: str | None = None  # the time column of temporal / leave-last-out splits
    derive: dict[str, str | DerivedColumn] = Field(default_factory=dict)  # computed in order, before splits
    aggregate: AggregateSpec | None = None  # applied to the raw rows before `derive`
    filter: str | None = None  # a boolean SQL expression: training rows where it is false are dropped, before splits
    history: list[HistorySpec] = Field(default_factory=list)  # computed after derive, before filter and splits

    @model_validator(mode="after")
    def _check(self) -> "Schema":
        names = [f.name for f in self.all_features] + [t.name for t in self.tasks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"names used twice: {dupes}")
        task_names = {t.name for t in self.tasks}
        for t in self.tasks:
            if t.space is not None and t.space not in task_names:
                raise ValueError(f"task {t.name!r} has space {t.space!r}, which is not a task")
        label_sources = {t.source for t in self.tasks}
        leaked = sorted(f.source for f in self.features if f.source in label_sources)
        if leaked:
            raise ValueError(f"label columns used as features (would leak the target): {leaked}")
        cats = {f.name for f in self.categorical}
        for f in self.sequences:
            if f.vocab is not None and f.vocab not in cats:
                raise ValueError(f"sequence {f.name!r} shares the vocabulary of {f.vocab!r}, which is not a "
                                 f"categorical feature{close_matches(f.vocab, cats)}")
        for h in self.history:
            if h.vocab is None and self._item_feature(h) is None:
                raise ValueError(f"history {h.name!r}: no categorical feature reads column {h.item!r}; declare one "
                                 "(the candidate item), or name the feature to share with `vocab:`")
        return self

    def _item_feature(self, h: HistorySpec) -> str | None:
        if h.vocab is not None:
            return h.vocab
        return next((f.name for f in self.categorical if f.source == h.item), None)

    @property
    def history_features(self) -> list[SequenceFeature]:
        """The sequence features the histories generate (items share the item feature's vocabulary; a side
        field shares the vocabulary of the categorical feature reading that column, if there is one)."""
        by_column = {f.source: f.name for f in self.categorical}
        out = []
        for h in self.history:
            for part, _ in h.parts():
                out.append(SequenceFeature(name=part, max_len=h.max_len, vocab=self._item_feature(h)))
                out += [SequenceFeature(name=f"{part}__{c}", max_len=h.max_len, vocab=by_column.get(c))
                        for c in h.fields]
                if h.gap:
                    out.append(SequenceFeature(name=f"{part}__gap", max_len=h.max_len))
        return out

    @property
    def all_features(self) -> list[CategoricalFeature | NumericFeature | SequenceFeature]:
        """Declared features, then those the histories generate: the model's input order."""
        return [*self.features, *self.history_features]

    def history_columns(self) -> list[str]:
        return [c for h in self.history for c in h.columns()]

    # --- convenience views -------------------------------------------------------------
    @property
    def categorical(self) -> list[CategoricalFeature]:
        return [f for f in self.features if isinstance(f, CategoricalFeature)]

    @property
    def numeric(self) -> list[NumericFeature]:
        return [f for f in self.features if isinstance(f, NumericFeature)]

    @property
    def vectors(self) -> list[VectorFeature]:
        return [f for f in self.features if isinstance(f, VectorFeature)]

    @property
    def sequences(self) -> list[SequenceFeature]:
        return [f for f in self.all_features if isinstance(f, SequenceFeature)]

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def input_columns(self) -> list[str]:
        """Raw columns a prediction request must carry (labels excluded; history columns included)."""
        cols = [f.source for f in self.all_features]
        if self.scenario is not None:
            cols.append(self.scenario.source)
        if self.user is not None:
            cols.append(self.user)
        if self.item is not None:
            cols.append(self.item)
        return list(dict.fromkeys(cols))

    def label_columns(self) -> list[str]:
        return [t.source for t in self.tasks]

    def id_columns(self) -> list[str]:
        """Columns read as strings, never type-guessed: categorical, sequence, scenario, user, group keys."""
        cols = [f.source for f in self.categorical] + [f.source for f in self.sequences]
        if self.scenario is not None:
            cols.append(self.scenario.source)
        if self.user is not None:
            cols.append(self.user)
        if self.item is not None:
            cols.append(self.item)
        if self.aggregate is not None:
            cols += self.aggregate.by
        return list(dict.fromkeys(cols))

    def with_tasks(self, tasks: list[str | dict[str, Any]]) -> "Schema":
        """The same schema with another task list (names of existing tasks, or new task specs)."""
        known = {t.name: t.model_dump() for t in self.tasks}
        specs = []
        for t in tasks:
            if isinstance(t, str):
                specs.append(known[t] if t in known else {"name": t})
            else:
                specs.append(t)
        return Schema.from_dict({**self.model_dump(mode="json"), "tasks": specs}, origin="task list (data.tasks)")

    # --- (de)serialisation -------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "schema") -> "Schema":
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise PolyrecError(f"Invalid {origin}: {format_validation_error(exc, _SCHEMA_KEYS)}") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Schema":
        from polyrec.utils.io import read_yaml

        path = Path(path)
        data = read_yaml(path, "Schema file")
        if not isinstance(data, dict):
            raise PolyrecError(f"Schema file {path} must hold a mapping, got {type(data).__name__}")
        return cls.from_dict(data, origin=f"schema {path}")


def format_validation_error(exc: ValidationError, known: Iterable[str] = ()) -> str:
    """One readable line per problem, with close matches (from `known`) for unknown keys."""
    known = list(known)
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown key {loc!r}.{close_matches(str(err['loc'][-1]), known)}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(lines)


def validate_params(cls: type[M], raw: dict[str, Any], what: str) -> M:
    """`cls(**raw)`, or a PolyrecError "Invalid <what>: ..." with one line per problem and close matches for
    unknown keys: the one validator of model, top-K model and balancer parameters."""
    try:
        return cls(**raw)
    except ValidationError as exc:
        raise PolyrecError(f"Invalid {what}: {format_validation_error(exc, cls.model_fields)}") from None


def model_keys(*models: type[BaseModel]) -> set[str]:
    """All field names of some pydantic models (candidates for 'did you mean')."""
    return {name for m in models for name in m.model_fields}


_SCHEMA_KEYS = model_keys(
    Schema, CategoricalFeature, NumericFeature, SequenceFeature, ScenarioSpec, TaskSpec, DerivedColumn,
    AggregateColumn, FlagLabels, AggregateSpec, HistorySpec,
)
