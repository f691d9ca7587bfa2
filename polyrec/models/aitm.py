"""AITM (Xi et al., KDD 2021): "Modeling the Sequential Dependence among Audience Multi-step
Conversions with Multi-task Learning".

The binary tasks form a funnel t = 1..K (e.g. click -> like). Per-task towers over the shared
embedding give q_t; an Adaptive Information Transfer (AIT) module lets task t read what task t-1 learnt:
    p_{t-1} = g_{t-1}(z_{t-1})                                      transfer MLP
    w_u     = softmax_u( <h1(u), h2(u)> / sqrt(d) ),  u in {q_t, p_{t-1}}   (the two candidates of ONE sample)
    z_t     = sum_u w_u h3(u);          z_1 = q_1
    y_t     = sigmoid(out_t(z_t))
and the behavioural expectation calibrator (returned by `extra_loss`, the task BCEs come from the heads):
    L_lc = alpha * (1/N) sum_i sum_{t>1} max(y_t - y_{t-1}, 0)

Choices where the paper is silent (or only its code speaks):
- g is one Linear(d, d) + activation (+ dropout), as in the authors' code; h1, h2, h3 are single
  d -> d linear maps (with a bias; the authors' code has none).
- The transferred vector is p_{t-1} = g(z_{t-1}), the previous task's AIT output as in the paper's
  equations (for the first task z_1 = q_1, its tower output; with two tasks the two readings agree).
- Each funnel step has its own g and AIT parameters. No batch statistics anywhere in them.
- `task_order` names the funnel (default: the dataset's binary tasks in dataset order); tasks outside
  it (e.g. regression) keep a plain tower and output layer, with no transfer and no calibrator term.
- Defaults follow the paper's experiments: towers [128, 64, 32] (d = 32), alpha = 0.6.
- The AIT weights [B, 1, 2] (own q_t, transferred p_{t-1}) are recorded as gate "ait_<task>".
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from polyrec.data.batching import Batch
from polyrec.errors import PolyrecError
from polyrec.layers.embedding import InputEmbedding
from polyrec.layers.mlp import MLP, ParallelMLP
from polyrec.models.base import ModelParams, MultiTaskModel, register


class AITMParams(ModelParams):
    tower_dims: list[int] = Field(default=[128, 64, 32], min_length=1)  # last size = d, the AIT width
    task_order: list[str] | None = None  # the funnel; default: binary tasks in dataset order
    calibrator_weight: float = Field(default=0.6, ge=0)  # the paper's alpha


class AdaptiveInformationTransfer(nn.Module):
    """Self-attention over {own q_t, transferred p_{t-1}} of each sample: returns z_t [B, d], weights [B, 2]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.h = ParallelMLP(3, dim, [], dim)  # h1, h2, h3: one linear map each
        self.scale = dim ** -0.5

    def forward(self, own: torch.Tensor, transferred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cand = torch.stack([own, transferred], dim=1)  # [B, 2, d]
        b, _, d = cand.shape
        h = self.h(cand.reshape(b * 2, d)).view(b, 2, 3, d)  # h[:, u, j] = h_{j+1}(u)
        w = torch.softmax((h[:, :, 0] * h[:, :, 1]).sum(-1) * self.scale, dim=1)  # [B, 2]
        return (w.unsqueeze(-1) * h[:, :, 2]).sum(1), w


@register("aitm")
class AITM(MultiTaskModel):
    Params = AITMParams

    def __init__(self, spec, embed_dim, params: AITMParams) -> None:
        super().__init__(spec, embed_dim, params)
        p, names = params, spec.task_names
        order = p.task_order if p.task_order is not None else [t.name for t in spec.tasks if t.type == "binary"]
        for task in order:
            if task not in names:
                raise PolyrecError(f"AITM task_order names {task!r}, not a task of this dataset ({names}).")
            if spec.tasks[names.index(task)].type != "binary":
                raise PolyrecError(f"AITM task_order: {task!r} is not a binary task (the funnel is of binary tasks).")
        if len(set(order)) != len(order) or len(order) < 2:
            raise PolyrecError(f"AITM needs a funnel of at least two distinct binary tasks; got {order}.")
        self.chain = [names.index(t) for t in order]  # funnel position -> task column
        self.embedding = InputEmbedding(spec, embed_dim, numeric_fields=False)
        self.towers = ParallelMLP(self.n_tasks, self.embedding.flat_dim, p.tower_dims, None, p.dropout,
                                  p.activation, p.batch_norm)
        d = self.towers.out_dim
        self.transfer = nn.ModuleList(MLP(d, [d], None, p.dropout, p.activation) for _ in order[1:])
        self.ait = nn.ModuleList(AdaptiveInformationTransfer(d) for _ in order[1:])
        self.task_outputs = ParallelMLP(self.n_tasks, d, [], 1)
        # only the embedding reaches every task: towers, transfers and AITs serve some tasks of the funnel
        self.not_shared(self.towers, self.transfer, self.ait, self.task_outputs)

    def forward(self, batch: Batch) -> torch.Tensor:
        q = self.towers(self.embedding.flat(batch))  # [B, T, d]
        z = list(q.unbind(1))
        for k, (prev, t) in enumerate(zip(self.chain, self.chain[1:])):
            z[t], w = self.ait[k](q[:, t], self.transfer[k](z[prev]))
            self.record_gate(f"ait_{self.spec.task_names[t]}", w.unsqueeze(1))
        return self.task_outputs(torch.stack(z, dim=1)).squeeze(-1)  # [B, T]

    def extra_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """alpha * sum_{t>1} mean_i max(y_t - y_{t-1}, 0), y = sigmoid(logit), t along the funnel."""
        if self.params.calibrator_weight == 0:
            return None
        y = torch.sigmoid(logits[:, self.chain])
        return self.params.calibrator_weight * torch.relu(y[:, 1:] - y[:, :-1]).mean(0).sum()

    def last_shared_layer(self) -> nn.Parameter:
        """GradNorm's W: only the embedding reaches every task: its table is W."""
        return self.embedding.embedding.table.weight
