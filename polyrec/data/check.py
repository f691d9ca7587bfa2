"""`polyrec data check`: run the prepare path up to the fitted encoders and report per-column statistics.

Everything a training would reject is rejected here too (same reader, derive step, split and encoders),
and nothing is cached; the report shows what training would see: nulls, distinct values, how many
validation / test values the training vocabulary does not know, and label rates per scenario.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.compute as pc

from polyrec.data.encoders import EncodedSplit, Encoders
from polyrec.data.prepare import build_tables, fit_encode, raw_splits
from polyrec.data.schema import Schema
from polyrec.data.stats import split_stats

if TYPE_CHECKING:
    from polyrec.config import DataConfig


def history_report(schema: Schema, encoders: Encoders, encoded: dict[str, EncodedSplit]) -> list[dict[str, Any]]:
    """Per history sequence (and side field) and split: mean length, rows with an empty history, and the share
    of its tokens the training vocabulary does not know (a history of val/test rows reaches into later events)."""
    added = {c for h in schema.history for c in h.columns()}
    out = []
    for f in schema.sequences:
        if f.source not in added:
            continue
        oov = encoders.sequences[f.name].vocab.oov_id
        for split, e in encoded.items():
            ids = e.sequences[f.name]
            filled = ids != 0
            lengths = filled.sum(1)
            out.append({"sequence": f.name, "split": split, "max_len": int(ids.shape[1]),
                        "mean_length": float(lengths.mean()) if len(ids) else float("nan"),
                        "empty": float((lengths == 0).mean()) if len(ids) else float("nan"),
                        "oov": float((ids == oov).sum() / max(int(filled.sum()), 1))})
    return out


def check_data(cfg: DataConfig, seed: int = 42, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Columns, per-split OOV rates and label rates per scenario, as a dict (the CLI prints it)."""
    recipe, schema, files, _ = build_tables(cfg, seed, download=False, log=log)
    split_seed = cfg.split_seed if cfg.split_seed is not None else seed
    tables, notes, used = raw_splits(recipe, schema, files, cfg, split_seed)
    encoders, encoded = fit_encode(recipe, schema, tables)
    train = tables["train"]
    columns = []
    roles = {f.source: f.type for f in schema.features}
    if schema.scenario is not None:
        roles[schema.scenario.source] = "scenario"
    for t in schema.tasks:
        roles[t.source] = f"task ({t.type})"
    cat_index = {f.name: i for i, f in enumerate(schema.categorical)}
    for col, role in roles.items():
        c = train[col]
        row: dict[str, Any] = {"column": col, "role": role, "type": str(c.type), "nulls": c.null_count,
                               "distinct": int(pc.count_distinct(c).as_py())}
        feat = next((f for f in schema.categorical if f.source == col), None)
        for split in ("val", "test"):
            if split in encoded and feat is not None and len(encoded[split]):
                ids = encoded[split].categorical[:, cat_index[feat.name]]
                row[f"{split}_oov"] = float((ids == encoders.vocabularies[feat.name].oov_id).mean())
            elif split in encoded and role == "scenario" and len(encoded[split]):
                row[f"{split}_oov"] = float((encoded[split].scenario == 0).mean())
        columns.append(row)
    names = encoders.scenario_names
    label_rates: dict[str, dict[str, dict[str, float]]] = {}
    for split, e in encoded.items():
        per = {}
        for s in np.unique(e.scenario):
            mask = e.scenario == s
            per[names[s]] = {"rows": int(mask.sum()),
                             **{t: round(float(e.labels[mask, i].mean()), 4) for i, t in enumerate(schema.task_names)}}
        label_rates[split] = per
    stats = {k: split_stats(encoders, tables[k], e) for k, e in encoded.items()}
    histories = history_report(schema, encoders, encoded)
    warnings = [f"task {t.name!r} has no positive in the validation split"
                for i, t in enumerate(schema.tasks)
                if t.type == "binary" and "val" in encoded and not (encoded["val"].labels[:, i] > 0).any()]
    return {"source": recipe.name, "split": used, "rows": {k: t.num_rows for k, t in tables.items()},
            "columns": columns, "histories": histories, "label_rates": label_rates, "stats": stats, "notes": notes, "warnings": warnings}
