"""ESMM (Ma et al., SIGIR 2018): entire-space multi-task model for the click -> conversion funnel.

Two towers over one shared embedding give pCTR and pCVR; the model is trained on all impressions
with two losses: CTR on the click label and CTCVR on the (click and conversion) label, where
pCTCVR = pCTR * pCVR (a product of probabilities, never of logits). The CVR tower therefore learns
through the CTCVR loss, over the entire space, with no selection bias.

Heads (named so the spaces cannot be confused):
  <ctr_task>                  pCTR, trained and scored on all rows
  <ctcvr_task>_ctcvr          pCTCVR, trained and scored on all rows against the ctcvr label
  <ctcvr_task>_cvr_on_<ctr>   pCVR, not trained directly; scored only on rows with ctr label 1
Any further tasks of the dataset get ordinary towers on the shared embedding.
The ctcvr label must imply the ctr label (e.g. like => click, purchase => click).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from polyrec.data.batching import Batch
from polyrec.errors import PolyrecError
from polyrec.layers.embedding import InputEmbedding
from polyrec.layers.mlp import ParallelMLP
from polyrec.data.spec import Head
from polyrec.models.base import ModelParams, MultiTaskModel, register


class ESMMParams(ModelParams):
    ctr_task: str | None = None  # default: the first task
    ctcvr_task: str | None = None  # default: the second task
    tower_dims: list[int] = [128, 64]


def logit_of_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """logit(sigmoid(a) * sigmoid(b)), computed in log space so it stays finite for large |a|, |b|."""
    log_p = F.logsigmoid(a) + F.logsigmoid(b)  # log p, p = pCTR * pCVR, always < 0
    # log(1 - p) = log(-expm1(log p)) for log p > -ln 2, else log1p(-exp(log p)) (stable log1mexp)
    log_1mp = torch.where(log_p > -0.6931471805599453, torch.log(-torch.expm1(log_p)), torch.log1p(-torch.exp(log_p)))
    return log_p - log_1mp


@register("esmm")
class ESMM(MultiTaskModel):
    Params = ESMMParams

    def __init__(self, spec, embed_dim, params: ESMMParams) -> None:
        super().__init__(spec, embed_dim, params)
        names = spec.task_names
        if len(names) < 2:
            raise PolyrecError("ESMM needs two binary tasks (ctr and ctcvr); the dataset has one.")
        ctr = params.ctr_task or names[0]
        ctcvr = params.ctcvr_task or names[1]
        for role, task in (("ctr_task", ctr), ("ctcvr_task", ctcvr)):
            if task not in names:
                raise PolyrecError(f"ESMM {role}={task!r} is not a task of this dataset ({names}).")
            if spec.tasks[names.index(task)].type != "binary":
                raise PolyrecError(f"ESMM {role}={task!r} must be a binary task.")
        if ctr == ctcvr:
            raise PolyrecError("ESMM ctr_task and ctcvr_task must differ.")
        self.ctr_idx, self.ctcvr_idx = names.index(ctr), names.index(ctcvr)
        heads = []
        for i, t in enumerate(spec.tasks):
            if i == self.ctcvr_idx:
                heads.append(Head(f"{ctcvr}_ctcvr", ctcvr, "binary"))
            else:
                heads.append(Head(t.name, t.name, t.type, t.space))
        heads.append(Head(f"{ctcvr}_cvr_on_{ctr}", ctcvr, "binary", space=ctr, train=False))
        self.heads = heads
        p = params
        self.embedding = InputEmbedding(spec, embed_dim, numeric_fields=False)
        # one tower per task; the ctcvr task's tower is the CVR tower
        self.towers = ParallelMLP(self.n_tasks, self.embedding.flat_dim, p.tower_dims, 1, p.dropout,
                                  p.activation, p.batch_norm)
        self.not_shared(self.towers)

    def forward(self, batch: Batch) -> torch.Tensor:
        logits = self.towers(self.embedding.flat(batch)).squeeze(-1)  # [B, T]
        ctr, cvr = logits[:, self.ctr_idx], logits[:, self.ctcvr_idx]
        out = logits.clone()
        out[:, self.ctcvr_idx] = logit_of_product(ctr, cvr)
        return torch.cat([out, cvr.unsqueeze(1)], dim=1)

    def last_shared_layer(self) -> nn.Parameter:
        """GradNorm's W: ESMM shares only the embedding: its table is W."""
        return self.embedding.embedding.table.weight
