"""Dense vector features: precomputed embeddings (text, image, graph) read as one fixed-size float vector per row.

A vector column may be a list / large-list / fixed-size-list of numbers (Parquet, Arrow, JSON lines) or a string
of numbers (CSV), e.g. "0.12,-0.4,..." or "[0.12, -0.4, ...]". Every present row must have exactly `dim` finite
values: a wrong length or a NaN/inf inside a vector is corrupt input and an error naming the feature, never a
silent pad or cut. A missing row (null) is filled with the training split's mean vector (and counted), as a
missing numeric value is filled with its training statistic. `text:` turns a free-text column into such a vector
by feature hashing (scikit-learn's HashingVectorizer: stateless, so nothing leaks from validation or test).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from polyrec.data.schema import VectorFeature
from polyrec.errors import PolyrecError

Column = pa.Array | pa.ChunkedArray


def _combined(values: Column) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _from_strings(values: pa.Array, name: str) -> pa.Array:
    """'[0.1, 0.2]' / '0.1,0.2' / '0.1 0.2' -> list<double>; empty or null strings are missing rows."""
    text = pc.utf8_trim(values, "[] \t")
    text = pc.replace_substring_regex(text, r"[,;\s]+", " ")
    missing = pc.or_kleene(pc.is_null(text), pc.equal(text, ""))
    parts = pc.split_pattern(pc.if_else(missing, pa.scalar(None, pa.string()), text), " ")
    try:
        return pc.cast(parts, pa.list_(pa.float64()))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise PolyrecError(f"Vector feature {name!r}: its text column holds a value that is not a list of "
                           f"numbers ({str(exc).splitlines()[0][:120]}).") from None


def read_vectors(values: Column, name: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 [N, dim] (missing rows as NaN) and the bool [N] mask of missing rows."""
    arr = _combined(values)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        arr = _from_strings(arr, name)
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type)):
        raise PolyrecError(f"Vector feature {name!r} needs a list or fixed-size array column, or a text column of "
                           f"numbers; its column has type {arr.type}.")
    n = len(arr)
    missing = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    lengths = np.asarray(pc.fill_null(pc.list_value_length(arr), dim).to_numpy(zero_copy_only=False))
    bad = np.flatnonzero(lengths != dim)
    if bad.size:
        raise PolyrecError(f"Vector feature {name!r} (dim {dim}): {bad.size} row(s) have another length (first: "
                           f"row {int(bad[0])} has {int(lengths[bad[0]])} values).")
    try:
        flat = pc.cast(pc.list_flatten(arr), pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise PolyrecError(f"Vector feature {name!r} holds non-numeric values ({str(exc).splitlines()[0][:120]}).") from None
    flat = np.asarray(flat, dtype=np.float64)
    if not np.isfinite(flat).all():
        rows = np.unique(np.repeat(np.flatnonzero(~missing), dim)[~np.isfinite(flat)])
        raise PolyrecError(f"Vector feature {name!r}: {rows.size} row(s) hold NaN or infinite values (first: row "
                           f"{int(rows[0])}); a vector must be complete (a missing one is a null row).")
    out = np.full((n, dim), np.nan)
    out[~missing] = flat.reshape(-1, dim)
    return out, missing


def hashed_text(values: Column, spec: VectorFeature) -> tuple[np.ndarray, np.ndarray]:
    """Free text -> [N, dim] hashed word (and optionally n-gram) counts, L2-normalised; null text is missing."""
    try:
        from sklearn.feature_extraction.text import HashingVectorizer
    except ImportError:
        raise PolyrecError(f"Vector feature {spec.name!r} hashes text, which needs scikit-learn: "
                           "pip install 'polyrec[text]'.") from None
    arr = _combined(values)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = pc.cast(arr, pa.string())
    missing = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    docs = pc.fill_null(arr, "").to_pylist()  # one C-level pass inside scikit-learn; no Python per feature
    vec = HashingVectorizer(n_features=spec.dim, ngram_range=(1, spec.text.ngrams), alternate_sign=True,
                            norm="l2", lowercase=True)
    out = vec.transform(docs).toarray().astype(np.float64)
    out[missing] = np.nan
    return out, missing


@dataclass
class VectorEncoder:
    """Fill value (the training mean vector) and the optional L2 normalisation: the whole fitted state."""

    spec: VectorFeature
    mean: np.ndarray  # float64 [dim]

    def read(self, values: Column) -> tuple[np.ndarray, np.ndarray]:
        if self.spec.text is not None:
            return hashed_text(values, self.spec)
        return read_vectors(values, self.spec.name, self.spec.dim)

    @classmethod
    def fit(cls, values: Column, spec: VectorFeature) -> "VectorEncoder":
        enc = cls(spec, np.zeros(spec.dim))
        x, missing = enc.read(values)
        if missing.all():
            raise PolyrecError(f"Vector feature {spec.name!r} is entirely missing in the training split.")
        enc.mean = enc._normalised(x[~missing]).mean(0)
        return enc

    def _normalised(self, x: np.ndarray) -> np.ndarray:
        if self.spec.normalize == "l2":
            norm = np.linalg.norm(x, axis=1, keepdims=True)
            return x / np.where(norm > 0, norm, 1.0)
        return x

    def transform(self, values: Column) -> tuple[np.ndarray, int]:
        """float32 [N, dim] and the number of missing rows filled with the training mean."""
        x, missing = self.read(values)
        x = self._normalised(np.where(missing[:, None], 0.0, x))
        x[missing] = self.mean
        return x.astype(np.float32), int(missing.sum())

    def to_dict(self) -> dict[str, Any]:
        return {"mean": [float(v) for v in self.mean]}

    @classmethod
    def from_dict(cls, spec: VectorFeature, d: dict[str, Any]) -> "VectorEncoder":
        mean = np.asarray(d["mean"], dtype=np.float64)
        if mean.shape != (spec.dim,):
            raise TypeError(f"vector {spec.name!r} mean of shape {mean.shape}")
        return cls(spec, mean)
