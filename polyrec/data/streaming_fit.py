"""Encoders fitted chunk by chunk, ending where a whole-column fit (Encoders.fit) ends.

Why: a log larger than memory (polyrec.data.chunked) cannot hand Encoders.fit its training split. Each
statistic here is a merge of per-chunk summaries that is exact (or exact up to float rounding):

  - vocabularies: value counts summed across chunks (Arrow group-by), then the same order as Vocabulary.fit
    (frequent first, then by value) and the same min_freq cut;
  - hashed vocabularies: the union of the distinct 64-bit FNV-1a hashes, from which the collision count follows;
  - numeric scalers: count, mean and sum of squared deviations merged pairwise (Chan, Golub and LeVeque's
    update), kept for the raw values (the `mean` fill) and for the scaled form (after log1p for log_standard);
    the filled rows join at the end as a group of n_missing copies of the fill value. `fill: median` has no
    exact one-pass form and is refused by the caller.
tests/test_chunked.py checks every kind against Encoders.fit on the same rows.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from polyrec.data.encoders import (NULL_TOKEN, OOV, PAD, UNKNOWN_SCENARIO, Column, Encoders, HashedVocabulary,
                                   NumericScaler, SequenceEncoder, Vocabulary, as_strings, fnv1a64, token_lists)
from polyrec.data.schema import NumericFeature, Schema
from polyrec.errors import PolyrecError


def check_streamable(schema: Schema) -> None:
    """What has no exact chunk-by-chunk fit, as one line each (polyrec.data.chunked asks before reading any data)."""
    if schema.vectors:
        raise PolyrecError(f"The schema's vector features {[f.name for f in schema.vectors]} need the whole log at "
                           "once; data.chunk_rows cannot apply them (drop them from the schema, or leave "
                           "data.chunk_rows unset).")
    for f in schema.numeric:
        if f.fill == "median":
            raise PolyrecError(f"numeric feature {f.name!r}: fill: median needs the whole column at once; with "
                               "data.chunk_rows use fill: mean or fill: zero.")


class CountSum:
    """Running value counts of a column's canonical strings."""

    def __init__(self) -> None:
        self.table: pa.Table | None = None

    def add(self, values: Column) -> None:
        counts = pc.value_counts(as_strings(values))
        t = pa.table({"v": counts.field("values"), "c": counts.field("counts").cast(pa.int64())})
        if self.table is not None:
            t = pa.concat_tables([self.table, t]).group_by("v").aggregate([("c", "sum")])
            t = t.select(["v", "c_sum"]).rename_columns(["v", "c"])
        self.table = t

    def vocabulary(self, min_freq: int = 1, reserved: tuple[str, ...] = (PAD, OOV)) -> Vocabulary:
        if self.table is None:
            return Vocabulary([], reserved)
        return Vocabulary.from_counts(self.table["v"].to_pylist(), self.table["c"].to_numpy(), min_freq, reserved)


class HashUnion:
    """The distinct 64-bit hashes of a column's non-null ids."""

    def __init__(self) -> None:
        self.hashes = np.zeros(0, np.uint64)

    def add(self, values: Column) -> None:
        uniq = pc.unique(as_strings(values))
        uniq = uniq.filter(pc.not_equal(uniq, NULL_TOKEN))
        self.hashes = np.union1d(self.hashes, fnv1a64(uniq))

    def vocabulary(self, buckets: int) -> HashedVocabulary:
        return HashedVocabulary.from_hashes(self.hashes, buckets)


def _merge(a: tuple[float, float, float], b: tuple[float, float, float]) -> tuple[float, float, float]:
    """(count, mean, M2) of two groups together (Chan et al. 1979)."""
    na, ma, qa = a
    nb, mb, qb = b
    n = na + nb
    if n == 0:
        return a
    d = mb - ma
    return n, ma + d * nb / n, qa + qb + d * d * na * nb / n


def _summary(x: np.ndarray) -> tuple[float, float, float]:
    if x.size == 0:
        return 0.0, 0.0, 0.0
    m = float(x.mean())
    return float(x.size), m, float(((x - m) ** 2).sum())


def _signed_log(x: np.ndarray | float) -> np.ndarray | float:
    return np.sign(x) * np.log1p(np.abs(x))


class NumericMoments:
    """The streaming state of one NumericScaler."""

    def __init__(self, spec: NumericFeature) -> None:
        self.spec = spec
        self.log = spec.scale == "log_standard"
        self.missing = 0
        self.raw = (0.0, 0.0, 0.0)
        self.scaled = (0.0, 0.0, 0.0)
        self.low, self.high = np.inf, -np.inf

    def add(self, values: Column) -> None:
        x = NumericScaler._as_float(values, self.spec.name)
        nan = np.isnan(x)
        self.missing += int(nan.sum())
        finite = x[~nan]
        self.raw = _merge(self.raw, _summary(finite))
        y = _signed_log(finite) if self.log else finite
        self.scaled = _merge(self.scaled, _summary(y))
        if y.size:
            self.low, self.high = min(self.low, float(y.min())), max(self.high, float(y.max()))

    def scaler(self) -> NumericScaler:
        spec = self.spec
        if self.raw[0] == 0:
            raise PolyrecError(f"Numeric column {spec.name!r} is entirely missing in the training split.")
        fill = self.raw[1] if spec.fill == "mean" else 0.0
        y_fill = float(_signed_log(fill)) if self.log else fill
        n, mean, m2 = _merge(self.scaled, (float(self.missing), y_fill, 0.0))
        low, high = (min(self.low, y_fill), max(self.high, y_fill)) if self.missing else (self.low, self.high)
        if spec.scale in ("standard", "log_standard"):
            shift, scale = mean, float(np.sqrt(m2 / n))
        elif spec.scale == "minmax":
            shift, scale = low, high - low
        else:
            shift, scale = 0.0, 1.0
        return NumericScaler(spec.name, float(fill), float(shift), scale if scale > 0 else 1.0, self.log)


class StreamingFit:
    """Encoders.fit over chunks: `add(train_chunk)` for each chunk of the training split, then `encoders()`."""

    def __init__(self, schema: Schema) -> None:
        check_streamable(schema)
        self.schema = schema
        self.counts = {f.name: CountSum() for f in schema.categorical if f.hash_buckets is None}
        self.hashes = {f.name: HashUnion() for f in schema.categorical if f.hash_buckets is not None}
        self.moments = {f.name: NumericMoments(f) for f in schema.numeric}
        self.tokens = {f.name: CountSum() for f in schema.sequences if f.vocab is None}
        self.scenario = CountSum() if schema.scenario is not None else None

    def add(self, train: pa.Table) -> None:
        s = self.schema
        for f in s.categorical:
            (self.counts.get(f.name) or self.hashes[f.name]).add(train[f.source])
        for f in s.numeric:
            self.moments[f.name].add(train[f.source])
        for f in s.sequences:
            if f.name in self.tokens:
                self.tokens[f.name].add(pc.list_flatten(token_lists(train[f.source], f.sep)))
        if self.scenario is not None:
            self.scenario.add(train[s.scenario.source])

    def encoders(self) -> Encoders:
        s = self.schema
        vocabularies = {f.name: self.counts[f.name].vocabulary(f.min_freq) if f.name in self.counts
                        else self.hashes[f.name].vocabulary(f.hash_buckets) for f in s.categorical}
        return Encoders(
            schema=s,
            vocabularies=vocabularies,
            scalers={name: m.scaler() for name, m in self.moments.items()},
            sequences={f.name: SequenceEncoder(f, self.tokens[f.name].vocabulary(f.min_freq) if f.vocab is None
                                               else vocabularies[f.vocab]) for f in s.sequences},
            scenario=self.scenario.vocabulary(1, (UNKNOWN_SCENARIO,)) if self.scenario is not None else None,
        )
