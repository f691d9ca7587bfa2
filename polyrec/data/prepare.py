"""From a dataset name to cached, encoded splits: locate/download -> load -> split -> fit -> encode -> cache."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from polyrec.data.chunked import ChunkReader, build_chunked, check_chunked
from polyrec.data.cache import cache_key, file_fingerprint, is_complete, read_cache, write_cache
from polyrec.data.columns import time_values
from polyrec.data.derive import derive_rows, finish_rows, histories_across, transform_raw
from polyrec.data.coldstart import cold_columns, cold_start_split
from polyrec.data.encoders import EncodedSplit, Encoders, as_strings
from polyrec.data.schema import Schema
from polyrec.data.split import (global_temporal_split, kfold_split, leave_last_out_split, random_split,
                                temporal_split)
from polyrec.data.recipe import RECIPES, Recipe
from polyrec.data.spec import ModelSpec, TaskInfo
from polyrec.data.stats import data_notes, hash_notes, positive_rates, split_stats, stats_line
from polyrec.errors import PolyrecError, unknown_name
from polyrec.settings import cache_dir, data_dir

if TYPE_CHECKING:
    from polyrec.config import DataConfig


@dataclass
class PreparedData:
    dataset: str
    encoders: Encoders
    splits: dict[str, EncodedSplit]
    meta: dict[str, Any]
    entry: Path

    def model_spec(self) -> ModelSpec:
        enc = self.encoders
        return ModelSpec(
            vocab_sizes=enc.vocab_sizes(),
            categorical_fields=enc.categorical_fields,
            numeric_fields=[f.name for f in enc.schema.numeric],
            sequence_vocab={k: v.vocab.size for k, v in enc.sequences.items()},
            sequence_shares={f.name: f.vocab for f in enc.schema.sequences if f.vocab},
            sequence_lengths={f.name: f.max_len for f in enc.schema.sequences},
            sequence_sides={part: h.part_columns(part)[1:] for h in enc.schema.history for part, _ in h.parts()},
            vector_dims={f.name: f.dim for f in enc.schema.vectors},
            scenario_names=enc.scenario_names,
            tasks=[TaskInfo(t.name, t.type, t.space) for t in enc.schema.tasks],
        )

    def raw_split_path(self, split: str) -> Path:
        """The split in raw joined form (Parquet): a ready input for `polyrec predict`."""
        return self.entry / f"raw-{split}.parquet"


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise unknown_name("dataset", name, RECIPES)
    return RECIPES[name]


def load_schema(cfg: DataConfig, kind: str = "ctr") -> Schema:
    """The run's schema, read before any data is located, downloaded or read (a bad path fails first);
    without a schema file, the recipe's built-in one for the run kind ("ctr" or "topk")."""
    if cfg.schema_file:
        schema = Schema.from_yaml(cfg.schema_file)
    else:
        recipe = get_recipe(cfg.dataset)
        schema = recipe.topk_schema() if kind == "topk" else recipe.schema()
    return schema.with_tasks(cfg.tasks) if cfg.tasks else schema


def source_for(cfg: DataConfig, schema: Schema) -> Recipe:
    """The recipe of `cfg.dataset`, or the built-in files source configured with `cfg.files`."""
    recipe = get_recipe(cfg.dataset)
    if cfg.files is not None:
        return recipe.configured(cfg.files, schema)  # type: ignore[attr-defined]
    return recipe


def locate_or_download(recipe: Recipe, download: bool, log: Callable[[str], None]) -> dict[str, Path]:
    root = data_dir()
    try:
        return recipe.locate(root)
    except PolyrecError:
        if not download or recipe.name == "files":
            raise
    log(f"{recipe.name}: original files not found under {root}; downloading")
    recipe.download(root, log)
    return recipe.locate(root)




def split_method(cfg: DataConfig, recipe: Recipe) -> str:
    if cfg.split:
        return cfg.split
    if cfg.files is not None and cfg.files.val is not None:
        return "official"
    return recipe.default_split


def check_split(cfg: DataConfig, recipe: Recipe, schema: Schema) -> None:
    """Split settings the source cannot honour are errors naming the setting, found before reading data."""
    method = split_method(cfg, recipe)  # (ratios containing 0 are refused by DataConfig itself)
    if method in ("temporal", "global_temporal", "leave_last_out"):
        if (schema.time or recipe.time_column) is None:
            raise PolyrecError(f"data.split={method} needs a time column, and {recipe.name!r} has none: "
                               "set `time:` in the schema, or use data.split=random.")
        if method != "global_temporal" and (schema.user or recipe.user_column) is None:
            raise PolyrecError(f"data.split={method} needs a user column: set `user:` in the schema.")
    if method == "cold_start":
        for role in cfg.cold_by:
            if (schema.user or recipe.user_column if role == "user" else schema.item) is None:
                raise PolyrecError(f"data.split=cold_start with data.cold_by={role} needs the schema's `{role}:` "
                                   f"column (the {role}s it holds out).")
    if cfg.files is not None:
        if cfg.files.val is not None and method != "official":
            raise PolyrecError(f"data.split={method} contradicts the given val/test files (an official split): "
                               "drop data.split, or give one file to split.")
        if cfg.files.val is None and method == "official":
            raise PolyrecError("data.split=official needs data.files.val and data.files.test (--val/--test).")


def split_table(recipe: Recipe, raw_table: pa.Table, cfg: DataConfig, seed: int,
                schema: Schema | None = None) -> dict[str, pa.Table]:
    method = cfg.split or recipe.default_split
    time_col = recipe.time_column or (schema.time if schema else None)
    user_col = recipe.user_column or (schema.user if schema else None)
    if method in ("temporal", "global_temporal", "leave_last_out"):
        if time_col is None:
            raise PolyrecError(f"Dataset {recipe.name!r} has no timestamp; data.split={method} cannot be "
                               "honoured (use data.split=random).")
        times = time_values(raw_table, time_col)
        if method == "global_temporal":
            idx = global_temporal_split(times, cfg.ratios)
        else:
            users = pc.dictionary_encode(as_strings(raw_table[user_col])).combine_chunks().indices.to_numpy()
            idx = (temporal_split(users, times, cfg.ratios) if method == "temporal"
                   else leave_last_out_split(users, times))
    elif method == "cold_start":
        cols = [user_col if role == "user" else schema.item if schema else None for role in cfg.cold_by]
        entities = [pc.dictionary_encode(as_strings(raw_table[c])).combine_chunks().indices.to_numpy() for c in cols]
        idx = cold_start_split(entities, cfg.ratios, cfg.cold_fraction, seed)
    elif method == "kfold":  # validation share: ratios[1] of the training folds (see DataConfig)
        idx = kfold_split(raw_table.num_rows, cfg.folds, cfg.fold, cfg.ratios[1], seed)
    else:
        idx = random_split(raw_table.num_rows, cfg.ratios, seed)
    return {k: raw_table.take(v) for k, v in idx.items()}


def build_tables(cfg: DataConfig, seed: int, download: bool = True, log: Callable[[str], None] = print,
                 kind: str = "ctr") -> tuple[Recipe, Schema, dict[str, Path], str]:
    """Schema, source and split checks, then the located files; nothing is read yet."""
    schema = load_schema(cfg, kind)
    recipe = source_for(cfg, schema)
    check_split(cfg, recipe, schema)
    files = locate_or_download(recipe, download, log)
    return recipe, schema, files, split_method(cfg, recipe)


def raw_splits(recipe: Recipe, schema: Schema, files: dict[str, Path], cfg: DataConfig, split_seed: int
               ) -> tuple[dict[str, pa.Table], list[str], str]:
    """Read -> aggregate/derive (the schema's declarative step) -> split: the raw tables of every split."""
    raw = recipe.load(files, {**cfg.options, "_split": cfg.split, "_split_seed": split_seed})
    if raw.splits is not None and cfg.split not in (None, "official"):
        raise PolyrecError(f"data.split={cfg.split} cannot be honoured: {recipe.name!r} comes with official "
                           "splits here; drop data.split (or set it to official).")
    if raw.splits is None and cfg.split == "official":
        raise PolyrecError(f"data.split=official cannot be honoured: {recipe.name!r} has no official split "
                           "with these files; use random, temporal, global_temporal or leave_last_out.")
    where = f"The data of {recipe.name}"
    if raw.splits is not None:
        tables = {k: derive_rows(t, schema, f"The {k} split of {recipe.name}") for k, t in raw.splits.items()}
        if schema.history:
            tables = histories_across(tables, schema, where)
        tables = {k: finish_rows(t, schema, f"The {k} split of {recipe.name}", histories=False)
                  for k, t in tables.items()}
        used = "official"
    else:
        table = transform_raw(raw.table, schema, where)
        tables = split_table(recipe, table, cfg, split_seed, schema)
        used = "random" if split_method(cfg, recipe) == "official" else split_method(cfg, recipe)
    return tables, list(raw.notes or []), used


def _where(recipe: Recipe, split: str) -> str:
    files = getattr(recipe, "files", None)
    if files is not None:
        path = files.main if split == "train" or files.val is None else getattr(files, split)
        return f"The {split} split of {path}"
    return f"The {split} split of {recipe.name}"


def fit_encode(recipe: Recipe, schema: Schema, tables: dict[str, pa.Table], base_encoders: Encoders | None = None
               ) -> tuple[Encoders, dict[str, EncodedSplit]]:
    """Encoders fitted on train only, then every split encoded; errors name the split and its file.
    `base_encoders` (a warm start, polyrec.data.grow): the old run's encoders grown by train instead of a refit."""
    split = "train"
    try:
        if base_encoders is not None:
            from polyrec.data.grow import grow_encoders

            encoders = grow_encoders(base_encoders, schema, tables["train"])
        else:
            encoders = Encoders.fit(schema, tables["train"])
        encoded = {}
        for split, t in tables.items():
            encoded[split] = encoders.encode(t, what=_where(recipe, split))
            encoded[split].cold = cold_columns(schema, tables["train"], t)
    except PolyrecError as exc:
        where = _where(recipe, split)
        msg = str(exc)
        raise PolyrecError(msg if msg.startswith(where) else f"{where}: {msg}") from None
    return encoders, encoded


def prepare(cfg: DataConfig, seed: int = 42, download: bool = True, log: Callable[[str], None] = print,
            base_encoders: Encoders | None = None) -> PreparedData:
    """Encoded splits for `cfg`, from the cache when an identical entry exists. `base_encoders`: grow these
    (a warm-started run's old encoders) instead of fitting new ones; they are part of the cache key."""
    recipe, schema, files, method = build_tables(cfg, seed, download, log)
    split_seed = cfg.split_seed if cfg.split_seed is not None else seed
    parts = {
        "recipe": recipe.name, "schema": schema.model_dump(mode="json"), "options": cfg.options,
        "split": method, "ratios": cfg.ratios, "split_seed": split_seed,
        "files": {k: file_fingerprint(p) for k, p in sorted(files.items())},
    }
    if method == "kfold":  # (only then: the keys of the other splits stay as they were)
        parts["folds"] = [cfg.folds, cfg.fold]
    if method == "cold_start":
        parts["cold"] = [list(cfg.cold_by), cfg.cold_fraction]
    if cfg.files is not None:  # absolute paths and read options of your own files
        parts["source"] = cfg.files.model_dump(mode="json")
    if base_encoders is not None:  # (only then: other keys stay as they were)
        parts["base_encoders"] = cache_key(base_encoders.to_dict())
    if cfg.chunk_rows is not None:  # (only then: other keys stay as they were; the content is chunk-size free)
        check_chunked(cfg, schema, method, base_encoders is not None)
        parts["chunked"] = True
    key = cache_key(parts)
    entry = cache_dir() / f"{recipe.name}-{key}"
    if cfg.chunk_rows is not None and not is_complete(entry):
        log(f"{recipe.name}: encoding into {entry}, {cfg.chunk_rows} rows at a time")
        reader = ChunkReader(cfg.files, schema, cfg.chunk_rows, cfg.ratios, split_seed)

        def finish(encoders: Encoders, stats: dict[str, Any], means: dict[str, np.ndarray]) -> dict[str, Any]:
            return {"notes": [f"chunked: {cfg.chunk_rows} rows per chunk, per-row hash split"] + hash_notes(encoders)
                    + data_notes(schema, stats, means, log), "positives": positive_rates(schema, means), "stats": stats}

        build_chunked(entry, reader, {"dataset": recipe.name, "split": method, "ratios": list(cfg.ratios),
                                      "split_seed": split_seed, "files": {k: str(p) for k, p in files.items()},
                                      "schema": schema.model_dump(mode="json"), "chunked": True}, log, finish)
    if not is_complete(entry):
        log(f"{recipe.name}: encoding into {entry}")
        tables, notes, used = raw_splits(recipe, schema, files, cfg, split_seed)
        encoders, encoded = fit_encode(recipe, schema, tables, base_encoders)
        stats = {name: split_stats(encoders, tables[name], e) for name, e in encoded.items()}
        notes += hash_notes(encoders)
        label_means = {name: e.labels.mean(0) for name, e in encoded.items()}
        meta = {"dataset": recipe.name, "split": used, "ratios": list(cfg.ratios), "split_seed": split_seed,
                "notes": notes + data_notes(schema, stats, label_means, log),
                "files": {k: str(p) for k, p in files.items()}, "schema": schema.model_dump(mode="json"),
                "positives": positive_rates(schema, label_means), "stats": stats}
        extra = {f"raw-{name}.parquet": (lambda p, t=t: pq.write_table(t, p)) for name, t in tables.items()}
        write_cache(entry, encoders, encoded, meta, extra)
    encoders, splits, meta = read_cache(entry)
    return PreparedData(recipe.name, encoders, splits, meta, entry)


def describe(prepared: PreparedData) -> str:
    m = prepared.meta
    lines = [f"{prepared.dataset}: {json.dumps(m['rows'])} rows ({m['split']} split, seed {m['split_seed']})"]
    lines += [f"  positive rate {k}: {v}" for k, v in m["positives"].items()]
    lines += [f"  {stats_line(k, v)}" for k, v in m.get("stats", {}).items()]
    lines += [f"  note: {n}" for n in m["notes"]]
    return "\n".join(lines)


def fingerprint_summary(prepared: PreparedData) -> dict[str, Any]:
    return {"cache_entry": prepared.entry.name, "rows": prepared.meta["rows"]}


def label_rate(split: EncodedSplit) -> np.ndarray:
    return split.labels.mean(0)
