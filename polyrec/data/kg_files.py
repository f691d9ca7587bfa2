"""Knowledge-graph files: triples (head, relation, tail) and item -> entity links, read as strings.

The collaborative graph built from them lives in polyrec.topk.kg; recipes read their own KG formats
and hand over the same (triples, links) pair.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from polyrec.data.io import read_delimited
from polyrec.errors import PolyrecError


def kg_paths(folder: str | Path, name: str | None = None) -> dict[str, Path]:
    """`<folder>/<name>.kg` and `<name>.link` (name defaults to the folder's name, RecBole's convention)."""
    folder = Path(folder)
    name = name or folder.name
    return {"kg": folder / f"{name}.kg", "link": folder / f"{name}.link"}


def load_kg_files(folder: str | Path, name: str | None = None) -> tuple[np.ndarray, dict[str, str]]:
    """Read RecBole atomic `.kg` (head_id, relation_id, tail_id) and `.link` (item_id, entity_id) files.

    Returns the triples as a str array [K, 3] (head, relation, tail) and the links as {item_id: entity_id}.
    Both files have a typed header line (``head_id:token ...``), which is skipped.
    """
    paths = kg_paths(folder, name)
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise PolyrecError(
            f"Knowledge-graph files missing: {', '.join(missing)}. RecBole ships them for ml-100k "
            "(recbole 1.2.1 wheel, recbole/dataset_example/ml-100k/): allow downloads and polyrec fetches them, "
            "copy them there yourself, or run without the KG (--set topk.kg=false)."
        )
    return read_kg(paths)


def read_kg(paths: dict[str, Path]) -> tuple[np.ndarray, dict[str, str]]:
    """`paths["kg"]` (head, relation, tail) and `paths["link"]` (item, entity): tab-separated, one header line."""
    missing = [f"{role} file {p}" for role, p in paths.items() if not Path(p).exists()]
    if missing:
        raise PolyrecError(f"Knowledge-graph input not found: {', '.join(missing)}.")
    kg = read_delimited(paths["kg"], "\t", ["head_id", "relation_id", "tail_id"], header=True)
    triples = np.stack([kg[c].to_numpy(zero_copy_only=False).astype(str) for c in kg.column_names], axis=1)
    link = read_delimited(paths["link"], "\t", ["item_id", "entity_id"], header=True)
    items = link["item_id"].to_numpy(zero_copy_only=False).astype(str)
    entities = link["entity_id"].to_numpy(zero_copy_only=False).astype(str)
    links = dict(zip(items.tolist(), entities.tolist()))
    if len(links) != len(items):
        dup = duplicates(items)
        raise PolyrecError(f"{paths['link']}: items linked more than once (e.g. {dup}); one entity per item.")
    return triples.reshape(-1, 3), links


def duplicates(values: np.ndarray, n: int = 3) -> list[str]:
    uniq, counts = np.unique(values, return_counts=True)
    return uniq[counts > 1][:n].tolist()
