"""Run a registered multi-task CTR model (polyrec.models: mmoe, ple, fdn, esmm, escm2, ...) as a
top-K model on (user, item) pairs: the article's baselines (MMoE, PLE, FDN, ESMM, ESCM2).

The wrapped model sees a ModelSpec with two categorical fields, user_id and item_id (ids shifted by
2: polyrec's encoders reserve 0 for padding and 1 for out-of-vocabulary, so the vocabularies hold
n_users + 2 and n_items + 2 rows), no numeric or sequence field, one scenario ("all", id 0, as the
encoders give data without a scenario column) and one binary task per top-K task, in task order.
It is pointwise: each head trained with BCE on observed pairs and sampled negatives.

Choices:
- esmm/escm2 (any model with ctr_task/ctcvr_task parameters): unless set, ctcvr_task = the target
  (e.g. like) and ctr_task = "click" when there is such a task, else the second task. A like implies
  an interaction, as ESMM's funnel requires.
- ranking_head: the head of the target task over the entire space (space None), e.g. ESMM's
  "like_ctcvr" (pCTR x pCVR) rather than its "like_cvr_on_click" (pCVR, trained only through pCTCVR).
"""

from __future__ import annotations

from typing import Any

import torch

from polyrec.data.batching import Batch
from polyrec.errors import PolyrecError
from polyrec.models.base import build_model, get_model_class
from polyrec.data.spec import ModelSpec, TaskInfo
from polyrec.topk.models.base import TopKInfo, TopKModel

ID_OFFSET = 2  # 0 = padding, 1 = out-of-vocabulary in polyrec's encoders


def pair_spec(info: TopKInfo) -> ModelSpec:
    return ModelSpec(
        vocab_sizes=[info.n_users + ID_OFFSET, info.n_items + ID_OFFSET],
        categorical_fields=["user_id", "item_id"],
        numeric_fields=[],
        sequence_vocab={},
        scenario_names=["all"],
        tasks=[TaskInfo(t, "binary") for t in info.task_names],
    )


def funnel_defaults(name: str, info: TopKInfo, params: dict[str, Any]) -> dict[str, Any]:
    """ESMM-style models: ctcvr_task = the target, ctr_task = "click" (or the second task) unless set."""
    fields = get_model_class(name).Params.model_fields
    out = dict(params)
    if "ctcvr_task" in fields and "ctr_task" in fields and len(info.task_names) >= 2:
        ctcvr = out.get("ctcvr_task") or info.target
        out.setdefault("ctcvr_task", ctcvr)
        if out.get("ctr_task") is None:
            others = [t for t in info.task_names if t != ctcvr]
            out["ctr_task"] = "click" if "click" in others else others[0]
    return out


class CTRAdapter(TopKModel):
    """A CTR model scoring pairs; built by build_topk_model for CTR model names."""

    def __init__(self, name: str, info: TopKInfo, embed_dim: int, params: dict[str, Any] | None = None) -> None:
        raw = funnel_defaults(name, info, params or {})
        model = build_model(name, pair_spec(info), embed_dim, raw)  # validates params (PolyrecError)
        super().__init__(info, embed_dim, model.params)
        self.registry_name = name
        self.model = model
        self.heads = list(model.heads)
        ranking = [k for k, h in enumerate(self.heads) if h.task == info.target and h.space is None]
        if not ranking:
            raise PolyrecError(f"Model {name!r} has no head for the target task {info.target!r} over all pairs.")
        self.ranking_head = ranking[0]

    def batch(self, users: torch.Tensor, items: torch.Tensor) -> Batch:
        ids = torch.stack([users, items], dim=1).add(ID_OFFSET).to(torch.int32)
        n = users.shape[0]
        return Batch(ids, torch.zeros(n, 0, device=users.device), {},
                     torch.zeros(n, dtype=torch.int64, device=users.device))

    def score(self, users: torch.Tensor, items: torch.Tensor, cache: Any) -> torch.Tensor:
        return self.model(self.batch(users, items))

    def extra_loss(self, logits: torch.Tensor, labels: torch.Tensor | None, cache: Any) -> torch.Tensor | None:
        out = self.model.extra_loss(logits, labels)
        self.last_loss_parts = {} if out is None else {"model": out.detach()}
        return out

    def shared_parameters(self) -> list[torch.nn.Parameter]:
        return self.model.shared_parameters()

    def last_shared_layer(self) -> torch.nn.Parameter | None:
        return self.model.last_shared_layer()
