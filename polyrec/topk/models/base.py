"""Top-K model interface and registry.

A top-K model scores (user, item) pairs. Training calls `encode()` once per step (graph models
propagate their embeddings there; others return None), then `score` on the batch's pairs and
`extra_loss` for regularisers. Evaluation calls `encode()` once and `score_all` per block of users.

- pairwise models (mf, kgat) have one head, the target task, trained with BPR on (user, positive,
  negative) triples;
- pointwise models (waata, the CTR adapter) have one head per task (as polyrec.models.base.Head),
  each trained with BCE on observed pairs plus sampled negatives (all labels 0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from polyrec.data.spec import Head
from polyrec.errors import PolyrecError
from polyrec.models.base import ModelParams
from polyrec.models.sharing import DeclaresSharing
from polyrec.data.interactions import KnowledgeGraph, TopKData
from polyrec.utils.registry import Registry


@dataclass
class TopKInfo:
    """What a model needs to know about the data."""

    n_users: int
    n_items: int
    task_names: list[str]  # target first (e.g. ["like", "click"])
    graph: KnowledgeGraph | None = None
    sequences: Any = None  # polyrec.topk.sequences.UserSequences, for the sequential models only

    @classmethod
    def from_data(cls, data: TopKData) -> "TopKInfo":
        return cls(data.n_users, data.n_items, list(data.task_names), data.graph)

    @property
    def target(self) -> str:
        return self.task_names[0]


def check_graph(info: TopKInfo) -> None:
    """The graph's layout must match the data's users and items (see KnowledgeGraph's docstring)."""
    g = info.graph
    if g is None:
        return
    if g.n_users != info.n_users or g.n_items != info.n_items:
        raise PolyrecError(f"The knowledge graph has {g.n_users} users and {g.n_items} items, the data "
                           f"{info.n_users} and {info.n_items}: rebuild the graph from this data.")
    if g.n_entities < g.n_users + g.n_items:
        raise PolyrecError(f"The knowledge graph has {g.n_entities} entities, fewer than its users + items.")
    for name, ids, n in (("head", g.head, g.n_entities), ("tail", g.tail, g.n_entities),
                         ("relation", g.relation, g.n_relations)):
        if len(ids) and (ids.min() < 0 or ids.max() >= n):
            raise PolyrecError(f"Knowledge graph {name} ids out of range [0, {n}).")


class TopKModel(DeclaresSharing):
    """Base class; subclasses set `Params` (and the flags), declare their task-specific parts with
    `not_shared(...)` (polyrec.models.sharing) and implement `score`."""

    Params: ClassVar[type[ModelParams]] = ModelParams
    pairwise: ClassVar[bool] = False  # True: BPR on the target task only; False: BCE per head
    needs_graph: ClassVar[bool] = False
    registry_name: ClassVar[str] = ""
    score_all_pairs: ClassVar[int] = 1 << 16  # pairs per `score` call in the default `score_all`
    default_balance: ClassVar[str | None] = None  # balancer used when the config names none (target = task 0)

    def __init__(self, info: TopKInfo, embed_dim: int, params: ModelParams) -> None:
        super().__init__()
        if self.needs_graph and info.graph is None:
            raise PolyrecError(f"Model {self.registry_name or type(self).__name__!r} needs a knowledge graph, "
                               "but the data has none (use a dataset with a KG, or ask for the graph).")
        check_graph(info)
        self.info, self.embed_dim, self.params = info, embed_dim, params
        self.heads: list[Head] = [Head(t, t, "binary") for t in (info.task_names[:1] if self.pairwise
                                                                  else info.task_names)]
        self.ranking_head = 0
        self.last_loss_parts: dict[str, torch.Tensor] = {}  # detached terms of the last extra_loss

    @property
    def n_items(self) -> int:
        return self.info.n_items

    def encode(self) -> Any:
        """Once per training step / per evaluation (e.g. propagated entity embeddings); None by default."""
        return None

    def epoch_start(self) -> None:
        """Called before every training epoch (graph models refresh their attention there)."""
        graph = getattr(self, "graph", None)
        if graph is not None and hasattr(graph, "epoch_start"):
            graph.epoch_start()

    def score(self, users: torch.Tensor, items: torch.Tensor, cache: Any) -> torch.Tensor:
        """Logits [B, H] of the pairs (users[b], items[b])."""
        raise NotImplementedError

    def forward(self, users: torch.Tensor, items: torch.Tensor, cache: Any = None) -> torch.Tensor:
        return self.score(users, items, self.encode() if cache is None else cache)

    def score_all(self, users: torch.Tensor, cache: Any) -> torch.Tensor:
        """Ranking-head scores [b, n_items] of each user against every item (for evaluation).

        Default: expand the pairs and call `score`, a few users at a time so that one call sees at
        most `score_all_pairs` pairs (bounded memory); dot-product models override with a matmul.
        """
        n = self.n_items
        items = torch.arange(n, device=users.device)
        step = max(1, self.score_all_pairs // max(n, 1))
        out = []
        for start in range(0, users.shape[0], step):
            u = users[start:start + step]
            logits = self.score(u.repeat_interleave(n), items.repeat(u.shape[0]), cache)
            out.append(logits[:, self.ranking_head].view(u.shape[0], n))
        return torch.cat(out) if out else torch.zeros(0, n, device=users.device)

    def extra_loss(self, logits: torch.Tensor, labels: torch.Tensor | None, cache: Any) -> torch.Tensor | None:
        """A scalar added to the head losses (regularisers, auxiliary heads), or None. `logits` are the
        last training `score` call's, `labels` [B, T] in task order (pointwise models)."""
        return None

    def last_shared_layer(self) -> nn.Parameter | None:
        """GradNorm's W (see polyrec.models.base.MultiTaskModel.last_shared_layer); each model declares it."""
        raise NotImplementedError(f"{type(self).__name__} does not declare last_shared_layer()")


def sum_parts(model: TopKModel, parts: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """Record the (weighted) loss terms in `model.last_loss_parts` and return their sum (None if empty)."""
    model.last_loss_parts = {k: v.detach() for k, v in parts.items()}
    return torch.stack(list(parts.values())).sum() if parts else None


class DotProductModel(TopKModel):
    """score = <user vector, item vector>; pairwise (BPR). Subclasses give the two tables."""

    pairwise = True

    def tables(self, cache: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """User vectors [n_users, D] and item vectors [n_items, D]."""
        raise NotImplementedError

    def score(self, users: torch.Tensor, items: torch.Tensor, cache: Any) -> torch.Tensor:
        u, i = self.tables(cache)
        return (u[users] * i[items]).sum(-1, keepdim=True)

    def score_all(self, users: torch.Tensor, cache: Any) -> torch.Tensor:
        u, i = self.tables(cache)
        return u[users] @ i.T


TOPK_MODELS: Registry[type[TopKModel]] = Registry("top-K model", builtins="polyrec.topk.models", entry_point_group="polyrec.topk_models")


register_topk: Callable[[str], Callable[[type[TopKModel]], type[TopKModel]]] = TOPK_MODELS.register
