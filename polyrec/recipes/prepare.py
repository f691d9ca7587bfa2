"""From a dataset name to cached, encoded splits: locate/download -> load -> split -> fit -> encode -> cache."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from polyrec.config import DataConfig
from polyrec.data.cache import cache_key, file_fingerprint, is_complete, read_cache, write_cache
from polyrec.data.encoders import EncodedSplit, Encoders
from polyrec.data.schema import Schema
from polyrec.data.split import random_split, temporal_split
from polyrec.errors import PolyrecError, unknown_name
from polyrec.models.spec import ModelSpec, TaskInfo
from polyrec.recipes.base import RECIPES, Recipe
from polyrec.settings import cache_dir, data_dir


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


def locate_or_download(recipe: Recipe, download: bool, log: Callable[[str], None]) -> dict[str, Path]:
    root = data_dir()
    try:
        return recipe.locate(root)
    except PolyrecError:
        if not download:
            raise
    log(f"{recipe.name}: original files not found under {root}; downloading")
    recipe.download(root, log)
    return recipe.locate(root)


def split_table(recipe: Recipe, raw_table: pa.Table, cfg: DataConfig, seed: int) -> dict[str, pa.Table]:
    method = cfg.split or recipe.default_split
    if method == "temporal":
        if recipe.time_column is None:
            raise PolyrecError(f"Dataset {recipe.name!r} has no timestamp; use data.split=random.")
        users = pc.dictionary_encode(raw_table[recipe.user_column]).combine_chunks().indices.to_numpy()
        times = raw_table[recipe.time_column].to_numpy()
        idx = temporal_split(users, times, cfg.ratios)
    else:
        idx = random_split(raw_table.num_rows, cfg.ratios, seed)
    return {k: raw_table.take(v) for k, v in idx.items()}


def prepare(cfg: DataConfig, seed: int = 42, download: bool = True, log: Callable[[str], None] = print) -> PreparedData:
    """Encoded splits for `cfg`, from the cache when an identical entry exists."""
    recipe = get_recipe(cfg.dataset)
    files = locate_or_download(recipe, download, log)
    schema = Schema.from_yaml(cfg.schema_file) if cfg.schema_file else recipe.schema()
    if cfg.tasks:
        schema = schema.with_tasks(cfg.tasks)
    split_seed = cfg.split_seed if cfg.split_seed is not None else seed
    method = cfg.split or recipe.default_split
    key = cache_key({
        "recipe": recipe.name, "schema": schema.model_dump(mode="json"), "options": cfg.options,
        "split": method, "ratios": cfg.ratios, "split_seed": split_seed,
        "files": {k: file_fingerprint(p) for k, p in sorted(files.items())},
    })
    entry = cache_dir() / f"{recipe.name}-{key}"
    if not is_complete(entry):
        log(f"{recipe.name}: encoding into {entry}")
        raw = recipe.load(files, {**cfg.options, "_split": cfg.split, "_split_seed": split_seed})
        tables = raw.splits if raw.splits is not None else split_table(recipe, raw.table, cfg, split_seed)
        encoders = Encoders.fit(schema, tables["train"])
        encoded = {name: encoders.encode(t, what=f"The {name} split of {recipe.name}") for name, t in tables.items()}
        used = "official" if raw.splits is not None else ("random" if method == "official" else method)
        meta = {"dataset": recipe.name, "split": used,
                "ratios": list(cfg.ratios), "split_seed": split_seed, "notes": raw.notes or [],
                "files": {k: str(p) for k, p in files.items()}, "schema": schema.model_dump(mode="json"),
                "positives": {name: {t: round(float(v), 4) for t, v in zip(schema.task_names, e.labels.mean(0))}
                              for name, e in encoded.items()}}
        extra = {f"raw-{name}.parquet": (lambda p, t=t: pq.write_table(t, p)) for name, t in tables.items()}
        write_cache(entry, encoders, encoded, meta, extra)
    encoders, splits, meta = read_cache(entry)
    return PreparedData(recipe.name, encoders, splits, meta, entry)


def describe(prepared: PreparedData) -> str:
    m = prepared.meta
    lines = [f"{prepared.dataset}: {json.dumps(m['rows'])} rows ({m['split']} split, seed {m['split_seed']})"]
    lines += [f"  positive rate {k}: {v}" for k, v in m["positives"].items()]
    lines += [f"  note: {n}" for n in m["notes"]]
    return "\n".join(lines)


def fingerprint_summary(prepared: PreparedData) -> dict[str, Any]:
    return {"cache_entry": prepared.entry.name, "rows": prepared.meta["rows"]}


def label_rate(split: EncodedSplit) -> np.ndarray:
    return split.labels.mean(0)
