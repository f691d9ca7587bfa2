"""Knowledge-graph files -> collaborative knowledge graph (CKG) edge lists, vectorised with numpy.

KGAT-style models propagate over users, items and KG entities at once, so the KG is merged with the
user-item graph here, once, in the entity layout documented on `KnowledgeGraph` (types.py).
"""

from __future__ import annotations


import numpy as np

from polyrec.data.kg_files import duplicates as _duplicates
from polyrec.errors import PolyrecError
from polyrec.data.interactions import Interactions, KnowledgeGraph

INTERACT, INTERACTED_BY = "interact", "interacted_by"


def _lookup(keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Position of each query in `keys` (any order, unique), -1 where absent."""
    if len(keys) == 0:
        return np.full(len(queries), -1, dtype=np.int64)
    sorter = np.argsort(keys, kind="stable")
    pos = np.searchsorted(keys, queries, sorter=sorter).clip(max=len(keys) - 1)
    idx = sorter[pos]
    return np.where(keys[idx] == queries, idx, -1).astype(np.int64)


def build_ckg(
    train: Interactions,
    n_users: int,
    n_items: int,
    item_ids: list[str] | np.ndarray,
    kg_triples: np.ndarray | None,
    links: dict[str, str],
) -> KnowledgeGraph:
    """The CKG of the train split plus the KG, in the layout documented on `KnowledgeGraph`.

    * entities: items 0..n_items-1 (an item's linked KG entity IS the item entity), then the other KG
      entities in sorted-id order, then the users;
    * relations: 0 interact (user->item), 1 interacted_by (item->user), then for each KG relation (sorted
      by name) the relation at 2+2k and its inverse "<name>^-1" at 3+2k;
    * edges: one interact + one interacted_by edge per distinct train (user, item) pair, then the KG triples
      (deduplicated after merging), then their inverses. Links to items outside `item_ids` are ignored.
    """
    item_ids = np.asarray(item_ids, dtype=str)
    if len(item_ids) != n_items:
        raise PolyrecError(f"build_ckg: {len(item_ids)} item ids for n_items={n_items}")
    triples = np.empty((0, 3), dtype=str) if kg_triples is None else np.asarray(kg_triples, dtype=str)
    if triples.ndim != 2 or triples.shape[1] != 3:
        raise PolyrecError(f"build_ckg: kg_triples must have shape [K, 3], got {triples.shape}")

    # linked entity -> item index (links outside the item space are dropped)
    link_items = np.asarray(list(links.keys()), dtype=str)
    link_ents = np.asarray(list(links.values()), dtype=str)
    link_idx = _lookup(item_ids, link_items)
    link_items, link_ents, link_idx = link_items[link_idx >= 0], link_ents[link_idx >= 0], link_idx[link_idx >= 0]
    dup = _duplicates(link_ents)
    if dup:
        raise PolyrecError(f"KG entities linked to more than one item (e.g. {dup}); cannot merge them into one item.")

    k = len(triples)
    ents, inv = np.unique(np.concatenate([triples[:, 0], triples[:, 2]]), return_inverse=True)
    ent_item = np.full(len(ents), -1, dtype=np.int64)
    pos = _lookup(ents, link_ents)
    ent_item[pos[pos >= 0]] = link_idx[pos >= 0]
    other = ent_item < 0
    n_other = int(other.sum())
    ent_index = np.where(other, n_items + np.cumsum(other) - 1, ent_item)
    rel_names, rel = np.unique(triples[:, 1], return_inverse=True)
    h, t = ent_index[inv[:k]], ent_index[inv[k:]]
    kg = np.unique(np.stack([h, rel.astype(np.int64), t], axis=1).reshape(-1, 3), axis=0)
    h, r, t = kg[:, 0], kg[:, 1], kg[:, 2]

    user_offset = n_items + n_other
    n_entities = user_offset + n_users
    pairs = np.unique(train.user.astype(np.int64) * n_items + train.item.astype(np.int64))
    u, i = pairs // n_items + user_offset, pairs % n_items
    head = np.concatenate([u, i, h, t]).astype(np.int64)
    tail = np.concatenate([i, u, t, h]).astype(np.int64)
    relation = np.concatenate([np.zeros(len(pairs), np.int64), np.ones(len(pairs), np.int64), 2 + 2 * r, 3 + 2 * r])
    names = [INTERACT, INTERACTED_BY] + [n for name in rel_names.tolist() for n in (name, f"{name}^-1")]
    return KnowledgeGraph(
        n_entities=n_entities, n_relations=len(names), n_users=n_users, n_items=n_items,
        head=head, relation=relation.astype(np.int64), tail=tail, relation_names=names, n_kg_triples=len(kg),
    )


def ckg_stats(graph: KnowledgeGraph, item_ids: list[str], links: dict[str, str]) -> dict[str, int]:
    """Facts for the run's meta: sizes, and how many items the KG actually reaches."""
    kg_edge = graph.relation >= 2
    touched = np.concatenate([graph.head[kg_edge], graph.tail[kg_edge]])
    items_with_kg_edges = int(np.unique(touched[touched < graph.n_items]).size)
    items_with_link = int(np.isin(np.asarray(item_ids, dtype=str), np.asarray(list(links), dtype=str)).sum())
    return {"n_entities": graph.n_entities, "n_relations": graph.n_relations, "n_kg_triples": graph.n_kg_triples,
            "n_edges": len(graph), "items_with_link": items_with_link, "items_with_kg_edges": items_with_kg_edges}
