"""What encoding did to the splits, for meta.json and the run log: OOV ids, NaN fills, unseen scenarios,
hash collisions, positive rates; shared by the whole path (polyrec.data.prepare) and the chunked one."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from polyrec.data.encoders import UNKNOWN_SCENARIO, EncodedSplit, Encoders, HashedVocabulary
from polyrec.data.schema import Schema


def split_stats(encoders: Encoders, table: pa.Table, encoded: EncodedSplit) -> dict[str, Any]:
    """What encoding did to a split: OOV ids per field, rows of an unseen scenario, NaN filled per numeric."""
    s = encoders.schema
    n = len(encoded)
    oov = {f.name: int((encoded.categorical[:, i] == encoders.vocabularies[f.name].oov_id).sum())
           for i, f in enumerate(s.categorical)}
    nan = {}
    for f in s.numeric:
        col = table[f.source]
        bad = col.null_count
        if pa.types.is_floating(col.type):
            bad += int(pc.sum(pc.is_nan(col)).as_py() or 0)
        nan[f.name] = int(bad)
    for f in s.vectors:  # missing vectors (null rows), filled with the training mean vector
        nan[f.name] = int(table[f.source].null_count)
    out: dict[str, Any] = {"rows": n, "oov": oov, "nan_filled": nan}
    if s.scenario is not None:
        out["unknown_scenario"] = int((encoded.scenario == 0).sum())
    return out


def hash_notes(encoders: Encoders) -> list[str]:
    """One line per hashed categorical feature: how many training ids share a bucket with another."""
    out = []
    for f in encoders.schema.categorical:
        v = encoders.vocabularies[f.name]
        if isinstance(v, HashedVocabulary):
            out.append(f"{f.name}: {v.distinct} distinct training ids hashed into {v.buckets} buckets, "
                       f"{v.collisions} collisions ({100 * v.collisions / max(v.distinct, 1):.1f}% of the ids)")
    return out


def positive_rates(schema: Schema, label_means: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    return {name: {t: round(float(v), 4) for t, v in zip(schema.task_names, m)} for name, m in label_means.items()}


def data_notes(schema: Schema, stats: dict[str, Any], label_means: dict[str, np.ndarray],
               log: Callable[[str], None]) -> list[str]:
    """The notes a cache entry keeps about its splits: unseen scenarios, NaN fills, a task without a validation
    positive (also logged)."""
    notes = []
    for name, st in stats.items():  # logged by describe(), kept in meta.json
        if st.get("unknown_scenario"):
            notes.append(f"{name}: {st['unknown_scenario']} rows of a scenario unseen in train, scored "
                         f"with the fallback scenario {UNKNOWN_SCENARIO!r} (id 0)")
    if any(st["nan_filled"].get(k) for st in stats.values() for k in st["nan_filled"]):
        notes.append("NaN filled per split: " + ", ".join(
            f"{n} {json.dumps({k: v for k, v in st['nan_filled'].items() if v})}" for n, st in stats.items()))
    val = label_means.get("val")
    for j, t in enumerate(schema.tasks):
        if t.type == "binary" and val is not None and stats["val"]["rows"] and not val[j] > 0:
            msg = f"warning: task {t.name!r} has no positive in the validation split (its AUC there is undefined)"
            log(msg)
            notes.append(msg)
    return notes


def stats_line(name: str, st: dict[str, Any]) -> str:
    n = max(st["rows"], 1)
    parts = [f"{name}: {st['rows']} rows"]
    if "unknown_scenario" in st:
        parts.append(f"unknown scenario {st['unknown_scenario']}")
    parts += [f"NaN filled {k} {v}" for k, v in st["nan_filled"].items() if v]
    parts += [f"OOV {k} {v} ({100 * v / n:.1f}%)" for k, v in st["oov"].items() if v]
    return "; ".join(parts)
