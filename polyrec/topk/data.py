"""Top-K data from the one data path: source -> schema (derive, filter) -> split -> user/item indices.

The rows come from `polyrec.data.prepare` exactly as a CTR-style run reads them (a recipe or your own
files, the schema's derived columns, the configured split); this module only turns the split tables into
index arrays. The schema must name `user:` and `item:`; every task is a binary label column (the first task
is the one items are ranked by). The item index space is the recipe's catalogue when it has one (so items
nobody interacted with can be recommended too), else the items seen in any split.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from polyrec.config import RunConfig
from polyrec.data.encoders import as_strings, check_labels
from polyrec.data.kg_files import read_kg
from polyrec.data.schema import Schema
from polyrec.data.sources import check_columns
from polyrec.errors import PolyrecError
from polyrec.data.recipe import Recipe
from polyrec.data.prepare import build_tables, raw_splits, time_values
from polyrec.settings import data_dir
from polyrec.topk.kg import build_ckg, ckg_stats
from polyrec.data.interactions import Interactions, KnowledgeGraph, TopKData
from polyrec.utils.download import sha256_file

SPLITS = ("train", "val", "test")


def index_ids(raw: np.ndarray, extra: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
    """Indices 0..n-1 for the raw ids (plus `extra` ids that need an index too), sorted by raw id.

    Ids sort as integers when every id is one (so item "10" follows "9"), else as strings.
    Returns (index of each `raw` entry, ids in index order).
    """
    allv = raw if extra is None else np.concatenate([raw, extra])
    uniq, inv = np.unique(allv.astype(str), return_inverse=True)
    try:
        order = np.argsort(uniq.astype(np.int64), kind="stable")
    except (ValueError, OverflowError):
        order = np.arange(len(uniq))
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[order] = np.arange(len(uniq))
    return rank[inv[: len(raw)]], uniq[order].tolist()


def check_topk_schema(schema: Schema, where: str) -> None:
    """A top-K schema names the user and item columns and has binary tasks only."""
    missing = [role for role in ("user", "item") if getattr(schema, role) is None]
    if missing:
        raise PolyrecError(f"{where}: a top-K run needs `{missing[0]}:` in the schema (the {missing[0]} id column "
                           "of each interaction).")
    regression = [t.name for t in schema.tasks if t.type != "binary"]
    if regression:
        raise PolyrecError(f"{where}: top-K tasks are binary labels (an interaction counts for a task where its "
                           f"label is 1); {regression} are regression tasks. Derive a binary label instead, "
                           "e.g. `like: \"rating >= 4\"`.")


def _strings(tables: list[pa.Table], column: str) -> np.ndarray:
    return np.concatenate([as_strings(t[column]).to_numpy(zero_copy_only=False) for t in tables]).astype(str)


def _labels(table: pa.Table, schema: Schema) -> np.ndarray:
    """[N, T] float32 0/1 labels in task order (the encoders' label check: missing or non-0/1 is an error)."""
    return np.stack([check_labels(table[t.source], t.source, "binary") for t in schema.tasks], axis=1)


def _times(table: pa.Table, column: str | None) -> np.ndarray | None:
    return None if column is None else time_values(table, column).astype(np.int64)


def _titles(tables: list[pa.Table], item: np.ndarray, n_items: int, catalog: tuple[np.ndarray, np.ndarray] | None,
            item_ids: list[str], column: str | None) -> list[str]:
    """Item titles: the catalogue's, else the first title column value seen in the interactions ("" unknown)."""
    titles = np.full(n_items, "", dtype=object)
    if catalog is not None and catalog[1] is not None:
        titles[index_ids(catalog[0], np.asarray(item_ids))[0]] = catalog[1]
    if column and all(column in t.column_names for t in tables):
        seen = np.concatenate([t[column].to_numpy(zero_copy_only=False).astype(str) for t in tables])
        unknown = titles[item] == ""
        titles[item[unknown]] = seen[unknown]
    return titles.astype(str).tolist()


def _catalog(recipe: Recipe, files: dict[str, Path], item_column: str) -> tuple[np.ndarray, np.ndarray | None] | None:
    items = recipe.items(files)
    if items is None:
        return None
    ids = as_strings(items["item_id"]).to_numpy(zero_copy_only=False).astype(str)
    titles = items["title"].to_numpy(zero_copy_only=False).astype(str) if "title" in items.column_names else None
    return ids, titles


def _graph(cfg: RunConfig, recipe: Recipe, train: Interactions, n_users: int, item_ids: list[str],
           download: bool, log: Callable[[str], None]) -> tuple[KnowledgeGraph | None, dict[str, Any], list[Path]]:
    tk = cfg.topk
    if not tk.kg:
        return None, {}, []
    if tk.kg_triples is not None:
        paths = {"kg": Path(tk.kg_triples), "link": Path(tk.kg_links)}
        triples, links = read_kg(paths)
        files = list(paths.values())
    else:
        found = recipe.knowledge_graph(data_dir(), download, log, cfg.data.options)
        if found is None:
            return None, {}, []
        triples, links, files = found
    graph = build_ckg(train, n_users, len(item_ids), item_ids, triples, links)
    meta = ckg_stats(graph, item_ids, links)
    if meta["items_with_kg_edges"] == 0:
        raise PolyrecError(f"The knowledge graph ({', '.join(map(str, files))}) reaches none of the "
                           f"{len(item_ids)} items: the link file's item ids must be the data's item ids "
                           f"(e.g. {', '.join(map(str, item_ids[:3]))}) and the linked entities must appear "
                           "in the triples.")
    return graph, meta, files


def load_topk(cfg: RunConfig, download: bool = True, log: Callable[[str], None] = print) -> TopKData:
    """The run's interactions as top-K data: indices, labels per task, splits and (optionally) the CKG."""
    assert cfg.topk is not None
    dc = cfg.data
    recipe, schema, files, _ = build_tables(dc, cfg.train.seed, download, log, kind="topk")
    where = f"The top-K data of {recipe.name}"
    check_topk_schema(schema, where)
    split_seed = dc.split_seed if dc.split_seed is not None else cfg.train.seed
    tables, notes, used = raw_splits(recipe, schema, files, dc, split_seed)
    missing = [s for s in SPLITS if s not in tables or tables[s].num_rows == 0]
    if missing:
        raise PolyrecError(f"{where}: the {missing[0]} split is empty; a top-K run trains, validates and tests on "
                           "interactions (use more data or other data.ratios).")
    ordered = [tables[s] for s in SPLITS]
    needed = [schema.user, schema.item, *schema.label_columns(), *([schema.time] if schema.time else [])]
    for name, t in zip(SPLITS, ordered):
        check_columns(t, needed, f"The {name} split of {recipe.name}")
    catalog = _catalog(recipe, files, schema.item)
    user_all, user_ids = index_ids(_strings(ordered, schema.user))
    item_all, item_ids = index_ids(_strings(ordered, schema.item), None if catalog is None else catalog[0])
    labels = []
    for name, t in zip(SPLITS, ordered):
        try:
            labels.append(_labels(t, schema))
        except PolyrecError as exc:
            raise PolyrecError(f"The {name} split of {recipe.name}: {exc}") from None
    cuts = np.cumsum([0] + [t.num_rows for t in ordered])
    splits = {s: Interactions(user_all[a:b], item_all[a:b], lab, _times(t, schema.time))
              for s, t, lab, a, b in zip(SPLITS, ordered, labels, cuts[:-1], cuts[1:])}
    titles = _titles(ordered, item_all, len(item_ids), catalog, item_ids, cfg.topk.title_column)
    graph, kg_meta, kg_files = _graph(cfg, recipe, splits["train"], len(user_ids), item_ids, download, log)
    derived = [f"{t.name} = {schema.derive[t.source] if isinstance(schema.derive.get(t.source), str) else t.source}"
               for t in schema.tasks]
    notes.append("tasks: " + ", ".join(derived) + f" (ranked by {schema.tasks[0].name})")
    if graph is not None:
        notes.append(f"CKG: {kg_meta['n_entities']} entities, {kg_meta['n_relations']} relations, "
                     f"{kg_meta['n_kg_triples']} KG triples, {kg_meta['items_with_link']}/{len(item_ids)} items linked")
    elif cfg.topk.kg:
        notes.append(f"{recipe.name} has no knowledge graph here: graph=None (KG models cannot run on it)")
    fingerprints = {p.name: sha256_file(p) for p in [*files.values(), *kg_files]}
    task_names = schema.task_names
    meta: dict[str, Any] = {
        "dataset": recipe.name, "split": used, "ratios": list(dc.ratios), "seed": split_seed,
        "counts": {name: len(s) for name, s in splits.items()},
        "positives": {name: {t: int(s.labels[:, j].sum()) for j, t in enumerate(task_names)}
                      for name, s in splits.items()},
        "notes": notes, "files": fingerprints, **({"kg": kg_meta} if kg_meta else {}),
    }
    return TopKData(dataset=recipe.name, task_names=task_names, n_users=len(user_ids), n_items=len(item_ids),
                    user_ids=user_ids, item_ids=item_ids, item_titles=titles, splits=splits, graph=graph, meta=meta)
