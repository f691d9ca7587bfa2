"""Encoders fitted on the training split only, saved as JSON (never pickle).

Inference maps raw values exactly as training did: unseen categorical values, sequence tokens and
scenarios map to a reserved out-of-vocabulary id instead of crashing, and nothing about the
validation or test split ever enters a vocabulary or a statistic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from polyrec.data.schema import (
    CategoricalFeature,
    NumericFeature,
    Schema,
    SequenceFeature,
)
from polyrec.data.vectors import VectorEncoder
from polyrec.errors import PolyrecError, close_matches
from polyrec.utils.io import read_json

PAD, OOV = "<pad>", "<oov>"
UNKNOWN_SCENARIO = "<unknown>"
NULL_TOKEN = "<NA>"

Column = pa.Array | pa.ChunkedArray


def as_strings(values: Column) -> pa.ChunkedArray | pa.Array:
    """Canonical string form of an id column, so ints, integral floats and strings agree."""
    typ = values.type
    if pa.types.is_floating(typ):
        values = pc.if_else(pc.is_nan(values), pa.scalar(None, typ), values)
        if pc.all(pc.equal(values, pc.round(values))).as_py() is not False:
            values = pc.cast(values, pa.int64())
    elif pa.types.is_dictionary(typ):
        values = pc.cast(values, typ.value_type)
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        values = pc.cast(values, pa.string())
    return pc.fill_null(values, NULL_TOKEN)


@dataclass
class Vocabulary:
    """Token -> id map. Reserved tokens take the first ids; the last reserved one is the OOV id."""

    tokens: list[str]
    reserved: tuple[str, ...] = (PAD, OOV)
    _value_set: pa.Array | None = field(default=None, repr=False, compare=False)

    @classmethod
    def fit(cls, values: Column, min_freq: int = 1, reserved: tuple[str, ...] = (PAD, OOV)) -> "Vocabulary":
        counts = pc.value_counts(as_strings(values))
        return cls.from_counts(counts.field("values").to_pylist(), counts.field("counts").to_numpy(), min_freq,
                               reserved)

    @classmethod
    def from_counts(cls, vals: list[str], cnts: np.ndarray, min_freq: int = 1,
                    reserved: tuple[str, ...] = (PAD, OOV)) -> "Vocabulary":
        """From distinct canonical strings and their training counts (a whole column's or summed chunk counts)."""
        keep = [(int(c), v) for v, c in zip(vals, cnts) if c >= min_freq]
        keep.sort(key=lambda cv: (-cv[0], cv[1]))  # deterministic: frequent first, then by value
        return cls([v for _, v in keep], tuple(reserved))

    @property
    def oov_id(self) -> int:
        return len(self.reserved) - 1

    @property
    def size(self) -> int:
        return len(self.reserved) + len(self.tokens)

    def transform(self, values: Column) -> np.ndarray:
        if self._value_set is None:
            self._value_set = pa.array(self.tokens, type=pa.string())
        idx = pc.index_in(as_strings(values), value_set=self._value_set)
        ids = pc.fill_null(pc.add(idx, len(self.reserved)), self.oov_id)
        return np.asarray(ids.to_numpy() if isinstance(ids, pa.Array) else ids.to_numpy(), dtype=np.int32)

    def decode(self, ids: np.ndarray) -> list[str]:
        table = list(self.reserved) + self.tokens
        return [table[i] for i in np.asarray(ids).tolist()]

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "reserved": list(self.reserved)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Vocabulary":
        return cls(list(d["tokens"]), tuple(d["reserved"]))


_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)


def fnv1a64(values: Column) -> np.ndarray:
    """The 64-bit FNV-1a hash (uint64 [n]) of each value's canonical string (`as_strings`) as UTF-8 bytes.

    Why FNV-1a: a published, fixed function of the bytes alone (no seed, no library or Python version in it,
    unlike Python's `hash()` or polars' `Expr.hash`), so a hashed id means the same bucket in every process,
    release and machine; pinned by tests/test_synth.py. Vectorised over the Arrow buffers: one numpy step per
    byte position, over the strings that long."""
    strings = as_strings(values)
    if isinstance(strings, pa.ChunkedArray):
        strings = strings.combine_chunks()
    if not pa.types.is_large_string(strings.type):
        strings = pc.cast(strings, pa.large_string())
    bufs = strings.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int64, count=len(strings) + 1, offset=8 * strings.offset)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    start, lengths = offsets[:-1], np.diff(offsets)
    h = np.full(len(strings), _FNV_OFFSET, dtype=np.uint64)
    active = np.flatnonzero(lengths > 0)
    pos = 0
    with np.errstate(over="ignore"):
        while len(active):
            h[active] = (h[active] ^ data[start[active] + pos].astype(np.uint64)) * _FNV_PRIME
            pos += 1
            active = active[lengths[active] > pos]
    return h


@dataclass
class HashedVocabulary:
    """Ids without a stored vocabulary: 2 + fnv1a64(canonical string) mod `buckets`; 0 = padding, 1 = null.

    For vocabularies too large to keep (or to ship in a bundle): unseen ids get a bucket too (no OOV), and
    distinct ids sharing a bucket share its embedding row. `collisions` (distinct training ids minus the
    buckets they occupy) says how much of that happened on the training split."""

    buckets: int
    collisions: int = 0
    distinct: int = 0
    reserved: tuple[str, ...] = (PAD, OOV)

    @classmethod
    def fit(cls, values: Column, buckets: int) -> "HashedVocabulary":
        uniq = pc.unique(as_strings(values))
        uniq = uniq.filter(pc.not_equal(uniq, NULL_TOKEN))
        return cls.from_hashes(np.unique(fnv1a64(uniq)), buckets)

    @classmethod
    def from_hashes(cls, hashes: np.ndarray, buckets: int) -> "HashedVocabulary":
        """From the distinct 64-bit hashes of the training ids (distinct ids = distinct hashes: a 64-bit collision
        among 10^9 ids has probability ~3e-2, and would only change the collision count)."""
        occupied = len(np.unique(hashes % np.uint64(buckets)))
        return cls(buckets, collisions=len(hashes) - occupied, distinct=len(hashes))

    @property
    def oov_id(self) -> int:
        return len(self.reserved) - 1

    @property
    def size(self) -> int:
        return len(self.reserved) + self.buckets

    def transform(self, values: Column) -> np.ndarray:
        ids = (fnv1a64(values) % np.uint64(self.buckets)).astype(np.int64) + len(self.reserved)
        nulls = pc.equal(as_strings(values), NULL_TOKEN)
        nulls = np.asarray(nulls.to_numpy(zero_copy_only=False) if isinstance(nulls, pa.Array)
                           else nulls.combine_chunks().to_numpy(zero_copy_only=False), dtype=bool)
        return np.where(nulls, self.oov_id, ids).astype(np.int32)

    def decode(self, ids: np.ndarray) -> list[str]:
        return [self.reserved[i] if i < len(self.reserved) else f"<bucket {i - len(self.reserved)}>"
                for i in np.asarray(ids).tolist()]

    def to_dict(self) -> dict[str, Any]:
        return {"hash": "fnv1a64", "buckets": self.buckets, "collisions": self.collisions,
                "distinct": self.distinct, "reserved": list(self.reserved)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "HashedVocabulary":
        if d.get("hash") != "fnv1a64":
            raise PolyrecError(f"Unknown id hash {d.get('hash')!r} in the encoders (this polyrec knows fnv1a64).")
        return cls(int(d["buckets"]), int(d["collisions"]), int(d["distinct"]), tuple(d["reserved"]))


def vocabulary_from_dict(d: dict[str, Any]) -> "Vocabulary | HashedVocabulary":
    """A stored vocabulary, token list or hashed."""
    return HashedVocabulary.from_dict(d) if "hash" in d else Vocabulary.from_dict(d)


def fit_categorical(values: Column, spec: CategoricalFeature) -> "Vocabulary | HashedVocabulary":
    return (HashedVocabulary.fit(values, spec.hash_buckets) if spec.hash_buckets is not None
            else Vocabulary.fit(values, spec.min_freq))


@dataclass
class NumericScaler:
    """NaN fill with a training statistic, then scaling; the statistics are the whole state."""

    name: str
    fill_value: float
    shift: float
    scale: float
    log: bool = False

    @staticmethod
    def _as_float(values: Column, name: str) -> np.ndarray:
        try:
            arr = pc.cast(values, pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise PolyrecError(f"Numeric column {name!r} holds non-numeric values ({exc}).") from None
        out = arr.to_numpy(zero_copy_only=False) if isinstance(arr, pa.Array) else arr.to_numpy()
        out = np.array(out, dtype=np.float64)  # nulls arrive as NaN
        if np.isinf(out).any():
            raise PolyrecError(
                f"Numeric column {name!r} holds {int(np.isinf(out).sum())} infinite values; "
                "clean them (infinities are not treated as missing)."
            )
        return out

    @classmethod
    def fit(cls, values: Column, spec: NumericFeature) -> "NumericScaler":
        x = cls._as_float(values, spec.name)
        finite = x[~np.isnan(x)]
        if finite.size == 0:
            raise PolyrecError(f"Numeric column {spec.name!r} is entirely missing in the training split.")
        fill = {"mean": finite.mean(), "median": np.median(finite), "zero": 0.0}[spec.fill]
        x = np.where(np.isnan(x), fill, x)
        log = spec.scale == "log_standard"
        if log:
            x = np.sign(x) * np.log1p(np.abs(x))
        if spec.scale in ("standard", "log_standard"):
            shift, scale = float(x.mean()), float(x.std())
        elif spec.scale == "minmax":
            shift, scale = float(x.min()), float(x.max() - x.min())
        else:
            shift, scale = 0.0, 1.0
        return cls(spec.name, float(fill), shift, scale if scale > 0 else 1.0, log)

    def transform(self, values: Column) -> np.ndarray:
        x = self._as_float(values, self.name)
        x = np.where(np.isnan(x), self.fill_value, x)
        if self.log:
            x = np.sign(x) * np.log1p(np.abs(x))
        return ((x - self.shift) / self.scale).astype(np.float32)


def token_lists(values: Column, sep: str) -> pa.ListArray:
    """A sequence column as a flat list array (strings are split on `sep`; '' is an empty list)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        return values.fill_null([]) if values.null_count else values
    strings = pc.fill_null(pc.cast(values, pa.string()), "")
    lists = pc.split_pattern(strings, sep)
    flat = pc.list_flatten(lists)
    keep = pc.not_equal(flat, "")
    if pc.all(keep).as_py() is False:  # drop empty tokens (empty strings, doubled separators)
        owner = pc.list_parent_indices(lists).to_numpy()
        mask = keep.to_numpy(zero_copy_only=False)
        lengths = np.bincount(owner[mask], minlength=len(lists))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), flat.filter(keep))
    return lists


@dataclass
class SequenceEncoder:
    """Tokens through a vocabulary, then padded (id 0) or cut to max_len, keeping first or last tokens."""

    spec: SequenceFeature
    vocab: Vocabulary

    @classmethod
    def fit(cls, values: Column, spec: SequenceFeature) -> "SequenceEncoder":
        flat = pc.list_flatten(token_lists(values, spec.sep))
        return cls(spec, Vocabulary.fit(flat, spec.min_freq))

    def transform(self, values: Column) -> np.ndarray:
        lists = token_lists(values, self.spec.sep)
        n, max_len = len(lists), self.spec.max_len
        offsets = lists.offsets.to_numpy().astype(np.int64)
        offsets = offsets - offsets[0]
        ids = self.vocab.transform(pc.list_flatten(lists))
        lengths = np.diff(offsets)
        row = np.repeat(np.arange(n), lengths)
        pos = np.arange(len(ids)) - np.repeat(offsets[:-1], lengths)
        if self.spec.keep == "last":
            pos = pos - np.repeat(np.maximum(lengths - max_len, 0), lengths)
        keep = (pos >= 0) & (pos < max_len)
        out = np.zeros((n, max_len), dtype=np.int32)
        out[row[keep], pos[keep]] = ids[keep]
        return out


def check_labels(values: Column, name: str, kind: str) -> np.ndarray:
    """Labels as float32; binary labels must be exactly 0/1 and no label may be missing."""
    try:
        arr = pc.cast(values, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise PolyrecError(f"Label column {name!r} is not numeric (type {values.type}).") from None
    x = np.array(arr.to_numpy(zero_copy_only=False) if isinstance(arr, pa.Array) else arr.to_numpy(), dtype=np.float64)
    missing = int(np.isnan(x).sum())
    if missing:
        raise PolyrecError(f"Label column {name!r} has {missing} missing values (of {len(x)}).")
    if kind == "binary":
        bad = ~np.isin(x, (0.0, 1.0))
        if bad.any():
            vals, counts = np.unique(x[bad], return_counts=True)
            shown = ", ".join(f"{v:g}: {c}" for v, c in list(zip(vals, counts))[:8])
            raise PolyrecError(
                f"Binary label {name!r} must be 0 or 1; found {int(bad.sum())} other values ({shown})."
            )
    return x.astype(np.float32)


def require_columns(table: pa.Table, columns: list[str], what: str) -> None:
    present = table.column_names
    missing = [c for c in columns if c not in present]
    if missing:
        hints = "".join(f" {c!r}:{close_matches(c, present) or ' no close match.'}" for c in missing)
        raise PolyrecError(f"{what} lacks column(s) {missing}.{hints} Present: {present}")


@dataclass
class EncodedSplit:
    """One split as whole numpy columns: the input of the columnar cache and of batching."""

    categorical: np.ndarray  # int32 [N, F_cat] local ids per field
    numeric: np.ndarray  # float32 [N, F_num]
    sequences: dict[str, np.ndarray]  # name -> int32 [N, max_len]
    scenario: np.ndarray  # int32 [N]; 0 = unknown scenario, zeros when the schema has none
    labels: np.ndarray  # float32 [N, T]; NaN-free; empty [N, 0] when unlabeled
    user: np.ndarray | None  # int64 [N] group ids for gAUC
    # role ("user", "item") -> bool [N]: that id never occurs in the training split (polyrec.data.coldstart)
    cold: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.scenario)

    def columns(self) -> dict[str, np.ndarray]:
        cols = {"categorical": self.categorical, "numeric": self.numeric, "scenario": self.scenario,
                "labels": self.labels}
        cols.update({f"seq.{k}": v for k, v in self.sequences.items()})
        if self.user is not None:
            cols["user"] = self.user
        cols.update({f"cold.{k}": v for k, v in self.cold.items()})
        return cols

    def rows(self, idx: np.ndarray | slice) -> "EncodedSplit":
        """The rows `idx` (indices, a boolean mask or a slice), in memory (a read when the columns are memory maps)."""
        return EncodedSplit.from_columns({k: np.asarray(v[idx]) for k, v in self.columns().items()})

    def concat(self, other: "EncodedSplit") -> "EncodedSplit":
        theirs = other.columns()
        return EncodedSplit.from_columns({k: np.concatenate([v, theirs[k]]) for k, v in self.columns().items()})

    @classmethod
    def from_columns(cls, cols: dict[str, np.ndarray]) -> "EncodedSplit":
        return cls(
            categorical=cols["categorical"], numeric=cols["numeric"], scenario=cols["scenario"],
            labels=cols["labels"], user=cols.get("user"),
            sequences={k[4:]: v for k, v in cols.items() if k.startswith("seq.")},
            cold={k[5:]: v for k, v in cols.items() if k.startswith("cold.")},
        )


@dataclass
class Encoders:
    """Everything fitted on the training split. `encode` turns any raw table into an EncodedSplit."""

    schema: Schema
    vocabularies: dict[str, "Vocabulary | HashedVocabulary"]
    scalers: dict[str, NumericScaler]
    sequences: dict[str, SequenceEncoder]
    scenario: Vocabulary | None
    vectors: dict[str, VectorEncoder] = field(default_factory=dict)  # appended to the numeric matrix

    # --- categorical fields the model embeds, in order --------------------------------
    @property
    def categorical_fields(self) -> list[str]:
        fields = [f.name for f in self.schema.categorical]
        if self.schema.scenario is not None and self.schema.scenario.as_feature:
            fields.append(self.schema.scenario.name)
        return fields

    def vocab_sizes(self) -> list[int]:
        sizes = [self.vocabularies[f.name].size for f in self.schema.categorical]
        if self.schema.scenario is not None and self.schema.scenario.as_feature:
            sizes.append(self.scenario.size)
        return sizes

    @property
    def scenario_names(self) -> list[str]:
        return [UNKNOWN_SCENARIO] + self.scenario.tokens if self.scenario else ["all"]

    @classmethod
    def fit(cls, schema: Schema, train: pa.Table) -> "Encoders":
        require_columns(train, schema.input_columns() + schema.label_columns(), "The training data")
        scen = None
        if schema.scenario is not None:
            scen = Vocabulary.fit(train[schema.scenario.source], 1, reserved=(UNKNOWN_SCENARIO,))
        vocabularies = {f.name: fit_categorical(train[f.source], f) for f in schema.categorical}
        return cls(
            schema=schema,
            vocabularies=vocabularies,
            scalers={f.name: NumericScaler.fit(train[f.source], f) for f in schema.numeric},
            sequences={f.name: SequenceEncoder.fit(train[f.source], f) if f.vocab is None
                       else SequenceEncoder(f, vocabularies[f.vocab]) for f in schema.sequences},
            scenario=scen,
            vectors={f.name: VectorEncoder.fit(train[f.source], f) for f in schema.vectors},
        )

    def dense(self, table: pa.Table) -> tuple[np.ndarray, dict[str, int]]:
        """The float32 [N, F_num + sum of vector dims] matrix: scaled numeric columns, then each vector feature's
        values (ModelSpec.vector_dims tells models where each vector sits), and missing vector rows filled."""
        s = self.schema
        n = table.num_rows
        parts = [self.scalers[f.name].transform(table[f.source])[:, None] for f in s.numeric]
        filled = {}
        for f in s.vectors:
            x, filled[f.name] = self.vectors[f.name].transform(table[f.source])
            parts.append(x)
        return (np.concatenate(parts, axis=1) if parts else np.zeros((n, 0), np.float32)), filled

    def encode(self, table: pa.Table, with_labels: bool = True, what: str = "The data") -> EncodedSplit:
        s = self.schema
        require_columns(table, s.input_columns() + (s.label_columns() if with_labels else []), what)
        n = table.num_rows
        cat = [self.vocabularies[f.name].transform(table[f.source]) for f in s.categorical]
        scenario = np.zeros(n, dtype=np.int32)
        if s.scenario is not None:
            scenario = self.scenario.transform(table[s.scenario.source])
            if s.scenario.as_feature:
                cat.append(scenario)
        labels = (
            np.stack([check_labels(table[t.source], t.name, t.type) for t in s.tasks], axis=1)
            if with_labels else np.zeros((n, 0), dtype=np.float32)
        )
        user = None
        if s.user is not None:
            user = pc.dictionary_encode(as_strings(table[s.user]))
            user = np.concatenate([c.indices.to_numpy() for c in user.chunks]) if isinstance(
                user, pa.ChunkedArray) else user.indices.to_numpy()
            user = user.astype(np.int64)
        return EncodedSplit(
            categorical=np.stack(cat, axis=1).astype(np.int32) if cat else np.zeros((n, 0), np.int32),
            numeric=self.dense(table)[0],
            sequences={f.name: self.sequences[f.name].transform(table[f.source]) for f in s.sequences},
            scenario=scenario,
            labels=labels,
            user=user,
        )

    # --- JSON ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": 1,
            "schema": self.schema.model_dump(mode="json"),
            "vocabularies": {k: v.to_dict() for k, v in self.vocabularies.items()},
            "scalers": {k: {"fill_value": v.fill_value, "shift": v.shift, "scale": v.scale, "log": v.log}
                        for k, v in self.scalers.items()},
            "sequences": {k: {"shares": v.spec.vocab} if v.spec.vocab else v.vocab.to_dict()
                          for k, v in self.sequences.items()},
            "scenario": self.scenario.to_dict() if self.scenario else None,
            "vectors": {k: v.to_dict() for k, v in self.vectors.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Encoders":
        schema = Schema.from_dict(d["schema"])
        seq_specs = {f.name: f for f in schema.sequences}
        vocabularies = {k: vocabulary_from_dict(v) for k, v in d["vocabularies"].items()}
        return cls(
            schema=schema,
            vocabularies=vocabularies,
            scalers={k: NumericScaler(k, **v) for k, v in d["scalers"].items()},
            sequences={k: SequenceEncoder(seq_specs[k], vocabularies[v["shares"]] if "shares" in v
                                          else Vocabulary.from_dict(v)) for k, v in d["sequences"].items()},
            scenario=Vocabulary.from_dict(d["scenario"]) if d["scenario"] else None,
            vectors={f.name: VectorEncoder.from_dict(f, d["vectors"][f.name]) for f in schema.vectors},
        )

    def schema_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.schema.model_dump(mode="json"), sort_keys=False)

    def save(self, path: str | Path) -> None:
        from polyrec.utils.io import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> "Encoders":
        path = Path(path)
        if not path.exists():
            raise PolyrecError(f"Encoders file not found: {path}")
        try:
            return cls.from_dict(read_json(path))
        except (KeyError, TypeError, AttributeError) as exc:
            raise PolyrecError(f"{path} is damaged (no valid {exc}): its encoders cannot be rebuilt. "
                               "Retrain the run, or restore the file from a copy.") from None
