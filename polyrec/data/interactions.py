"""The data contract of top-K runs (kept free of torch so loaders stay light)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Interactions:
    """One split's interactions as parallel arrays (row i = user[i] interacted with item[i])."""

    user: np.ndarray  # int64 [N], user index in [0, n_users)
    item: np.ndarray  # int64 [N], item index in [0, n_items)
    labels: np.ndarray  # float32 [N, T], 0/1 per task, columns in TopKData.task_names order
    timestamp: np.ndarray | None = None  # int64 [N] when known

    def __len__(self) -> int:
        return int(self.user.shape[0])


@dataclass
class KnowledgeGraph:
    """Collaborative knowledge graph (CKG), kept as edge lists (never a dense matrix).

    Entity layout: items first (entity i = item index i, for i < n_items; an item without a KG link is
    still an entity, just without KG edges), then the other KG entities, then the users
    (user u = entity n_entities - n_users + u). Relation 0 is "interact" (user -> item), relation 1 its
    inverse (item -> user); the KG relations follow, each with its inverse ("<name>^-1"). Interact edges
    come from the TRAIN split only, so validation/test interactions never leak into the graph.
    """

    n_entities: int
    n_relations: int
    n_users: int
    n_items: int
    head: np.ndarray  # int64 [E]
    relation: np.ndarray  # int64 [E]
    tail: np.ndarray  # int64 [E]
    relation_names: list[str]
    n_kg_triples: int  # KG triples before inverses were added (for reports)

    @property
    def user_offset(self) -> int:
        return self.n_entities - self.n_users

    def __len__(self) -> int:
        return int(self.head.shape[0])


@dataclass
class TopKData:
    dataset: str
    task_names: list[str]  # target task first, then the auxiliary tasks (e.g. ["like", "click"])
    n_users: int
    n_items: int
    user_ids: list[str]  # raw id of each user index
    item_ids: list[str]  # raw id of each item index
    item_titles: list[str]  # "" where unknown
    splits: dict[str, Interactions]  # "train", "val", "test"
    graph: KnowledgeGraph | None = None  # None when the dataset has no KG (or it was not asked for)
    meta: dict[str, Any] = field(default_factory=dict)  # split settings, counts, notes, data fingerprints

    @property
    def target(self) -> str:
        return self.task_names[0]
