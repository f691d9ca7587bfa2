"""Ratings -> top-K data: user/item indices, per-task implicit labels, train/val/test splits, the CKG.

Reuses the MovieLens recipes for finding/downloading and parsing the files, so the top-K runs read
exactly the rows the CTR runs read. Tasks are implicit feedback derived from the rating:
  like  = rating >= like_threshold (the target by default)
  click = every rated item (the auxiliary signal WAA-TA learns from)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from polyrec.errors import PolyrecError, unknown_name
from polyrec.recipes.prepare import get_recipe, locate_or_download
from polyrec.settings import data_dir
from polyrec.topk.kg import build_ckg, ckg_stats, kg_paths, load_kg_files, read_kg
from polyrec.topk.types import Interactions, TopKData
from polyrec.utils.download import sha256_file

TASKS = ("like", "click")
SPLITS = ("train", "val", "test")
SUPPORTED = ("movielens-100k", "movielens-1m")


def check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    """Three positive fractions summing to 1 (every split must exist for top-K training and evaluation)."""
    r = np.asarray(ratios, dtype=np.float64).ravel()
    if r.size != 3:
        raise PolyrecError(f"split ratios must be three numbers (train, val, test), got {list(ratios)}")
    if not np.isfinite(r).all() or (r <= 0).any():
        raise PolyrecError(f"split ratios must all be positive, got {list(ratios)}")
    if abs(r.sum() - 1.0) > 1e-6:
        raise PolyrecError(f"split ratios must sum to 1, got {list(ratios)} (sum {r.sum():g})")
    return float(r[0]), float(r[1]), float(r[2])


def random_split(n: int, ratios: Sequence[float], seed: int) -> np.ndarray:
    """Split id (0 train, 1 val, 2 test) per interaction: a seeded permutation cut at round(n * cumulative)."""
    r = check_ratios(ratios)
    perm = np.random.default_rng(seed).permutation(n)
    a, b = int(round(n * r[0])), int(round(n * (r[0] + r[1])))
    part = np.empty(n, dtype=np.int8)
    part[perm[:a]], part[perm[a:b]], part[perm[b:]] = 0, 1, 2
    return part


def temporal_split(user: np.ndarray, timestamp: np.ndarray, ratios: Sequence[float]) -> np.ndarray:
    """Split id per interaction: per user, the earliest go to train, the next to val, the latest to test.

    Rows are ranked within their user by (timestamp, row order), so ties keep file order. A user with c
    interactions gets train = ranks [0, a), val = [a, b), test = [b, c) where a = round(c * r_train) and
    b = round(c * (r_train + r_val)), rounding halves up. Then, where possible, no split is left empty:
    c >= 3 clamps a to [1, c-2] and b to [a+1, c-1]; c == 2 gives one train and one test (the test split is
    the one that is evaluated); c == 1 is train only.
    """
    r = check_ratios(ratios)
    n = len(user)
    order = np.lexsort((np.arange(n), timestamp, user))
    u = user[order]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]]) if n else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, n])
    group = np.repeat(np.arange(len(starts)), sizes)
    rank = np.arange(n) - starts[group]
    c = sizes.astype(np.float64)
    a = np.floor(c * r[0] + 0.5 + 1e-9)
    b = np.floor(c * (r[0] + r[1]) + 0.5 + 1e-9)
    a = np.where(c >= 3, np.clip(a, 1, c - 2), 1)
    b = np.where(c >= 3, np.clip(b, a + 1, c - 1), 1)
    part_sorted = np.where(rank < a[group], 0, np.where(rank < b[group], 1, 2)).astype(np.int8)
    part = np.empty(n, dtype=np.int8)
    part[order] = part_sorted
    return part


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


def _catalog(recipe: Any, files: dict[str, Path]) -> tuple[np.ndarray, np.ndarray]:
    """(item ids, titles) of the dataset's item file: the item index space includes never-rated items."""
    items = recipe.items(files)
    as_str = lambda col: items[col].to_numpy(zero_copy_only=False).astype(str)  # noqa: E731
    return as_str("item_id"), as_str("title")


def _pick_tasks(tasks: list[str] | None) -> list[str]:
    names = list(TASKS) if tasks is None else list(tasks)
    bad = [t for t in names if t not in TASKS]
    if bad or not names:
        raise PolyrecError(f"Unknown top-K task(s) {bad or names}: choose from {', '.join(TASKS)} "
                           "(the first one is the target).")
    if len(set(names)) != len(names):
        raise PolyrecError(f"Top-K tasks listed twice: {names}")
    return names


def load_topk(
    dataset: str,
    *,
    tasks: list[str] | None = None,
    like_threshold: float = 4.0,
    split: Literal["random", "temporal"] = "random",
    ratios: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    with_kg: bool = True,
    download: bool = True,
    log: Callable[[str], None] = print,
    kg_files: tuple[str | Path, str | Path] | None = None,
) -> TopKData:
    """Interactions of a MovieLens dataset as top-K data: indices, labels per task, splits, optional CKG.

    `split="random"` is a seeded split over all interactions (the WAA-TA paper's protocol);
    `split="temporal"` cuts each user's history by time (see `temporal_split`). `kg_files` (triples, links)
    replaces the dataset's own knowledge graph, and gives one to a dataset that has none.
    """
    if dataset not in SUPPORTED:
        raise unknown_name("top-K dataset", dataset, SUPPORTED)
    task_names = _pick_tasks(tasks)
    if split not in ("random", "temporal"):
        raise PolyrecError(f"Unknown split {split!r}: use 'random' or 'temporal'.")
    ratios = check_ratios(ratios)
    recipe = get_recipe(dataset)
    files = locate_or_download(recipe, download, log)
    raw = recipe.load(files, {})
    table: pa.Table = raw.table
    notes = [*(raw.notes or []), f"like = rating >= {like_threshold:g}, click = every rating"]

    rating = pc.cast(table["rating"], pa.float64()).to_numpy(zero_copy_only=False)  # nulls become NaN
    if np.isnan(rating).any():
        raise PolyrecError(f"{dataset}: {int(np.isnan(rating).sum())} ratings are missing or NaN; every interaction "
                           "needs a rating to derive the 'like' task. Fix the ratings file.")
    ts_col = table["timestamp"]
    if ts_col.null_count:
        raise PolyrecError(f"{dataset}: {ts_col.null_count} interactions have no timestamp.")
    timestamp = ts_col.to_numpy(zero_copy_only=False).astype(np.int64)

    cat_ids, cat_titles = _catalog(recipe, files)
    user, user_ids = index_ids(table["user_id"].to_numpy(zero_copy_only=False))
    item, item_ids = index_ids(table["item_id"].to_numpy(zero_copy_only=False), cat_ids)
    n_users, n_items = len(user_ids), len(item_ids)
    titles = np.full(n_items, "", dtype=object)
    # index_ids over (catalog ids + all item ids) sees exactly the item id set, so it yields item indices
    titles[index_ids(cat_ids, np.asarray(item_ids))[0]] = cat_titles
    rated_titles = table["title"].to_numpy(zero_copy_only=False).astype(str)
    unknown = titles[item] == ""
    titles[item[unknown]] = rated_titles[unknown]

    label = {"like": rating >= like_threshold, "click": np.ones(len(rating), dtype=bool)}
    labels = np.stack([label[t] for t in task_names], axis=1).astype(np.float32)
    part = random_split(len(user), ratios, seed) if split == "random" else temporal_split(user, timestamp, ratios)
    splits = {}
    for k, name in enumerate(SPLITS):
        idx = np.flatnonzero(part == k)
        splits[name] = Interactions(user[idx], item[idx], labels[idx], timestamp[idx])

    fingerprints = {p.name: sha256_file(p) for p in files.values()}
    graph, kg_meta = None, {}
    if with_kg and (kg_files is not None or recipe.kg_name is not None):
        if kg_files is not None:
            paths = {"kg": Path(kg_files[0]), "link": Path(kg_files[1])}
            triples, links = read_kg(paths)
        else:
            folder = data_dir() / recipe.folder
            paths = kg_paths(folder, recipe.kg_name)
            if download and not all(p.exists() for p in paths.values()):
                recipe.download_kg(data_dir(), log)
            triples, links = load_kg_files(folder, recipe.kg_name)
        fingerprints.update({p.name: sha256_file(p) for p in paths.values()})
        graph = build_ckg(splits["train"], n_users, n_items, item_ids, triples, links)
        kg_meta = ckg_stats(graph, item_ids, links)
        if kg_meta["items_with_kg_edges"] == 0:
            raise PolyrecError(f"The knowledge graph ({paths['kg']}, {paths['link']}) reaches none of {dataset}'s "
                               f"{n_items} items: the link file's item ids must be the dataset's item ids "
                               f"(e.g. {', '.join(map(str, item_ids[:3]))}) and the linked entities must appear "
                               "in the triples.")
        notes.append(f"CKG: {kg_meta['n_entities']} entities, {kg_meta['n_relations']} relations, "
                     f"{kg_meta['n_kg_triples']} KG triples, {kg_meta['items_with_link']}/{n_items} items linked")
    elif with_kg:
        notes.append(f"{dataset} has no knowledge graph here: graph=None (KG models cannot run on it)")

    meta: dict[str, Any] = {
        "dataset": dataset, "split": split, "ratios": list(ratios), "seed": seed, "like_threshold": like_threshold,
        "counts": {name: len(s) for name, s in splits.items()},
        "positives": {name: {t: int(s.labels[:, j].sum()) for j, t in enumerate(task_names)}
                      for name, s in splits.items()},
        "notes": notes, "files": fingerprints, **({"kg": kg_meta} if kg_meta else {}),
    }
    return TopKData(dataset=dataset, task_names=task_names, n_users=n_users, n_items=n_items, user_ids=user_ids,
                    item_ids=item_ids, item_titles=titles.astype(str).tolist(), splits=splits, graph=graph, meta=meta)
