"""OMoE, the one-gate mixture of experts (the "OMoE" baseline of Ma et al., KDD 2018, MMoE paper).

Shared experts, ONE softmax gate shared by every task, one tower per task:
    f(x) = sum_e softmax(W x)_e * expert_e(x);   y_t = tower_t(f(x))
Every task's tower reads the same mixture f(x); this is what MMoE's per-task gates generalise.
The gate is a single linear map + softmax over experts, per sample (no batch statistics).
"""

from __future__ import annotations

import torch
from torch import nn

from polyrec.data.batching import Batch
from polyrec.layers.embedding import InputEmbedding
from polyrec.layers.experts import mix
from polyrec.layers.mlp import ParallelMLP
from polyrec.models.base import ModelParams, MultiTaskModel, register


class OMoEParams(ModelParams):
    n_experts: int = 4
    expert_dims: list[int] = [128, 64]
    tower_dims: list[int] = [32]


@register("omoe")
class OMoE(MultiTaskModel):
    Params = OMoEParams

    def __init__(self, spec, embed_dim, params: OMoEParams) -> None:
        super().__init__(spec, embed_dim, params)
        p = params
        self.embedding = InputEmbedding(spec, embed_dim, numeric_fields=False)
        d_in = self.embedding.flat_dim
        self.experts = ParallelMLP(p.n_experts, d_in, p.expert_dims, None, p.dropout, p.activation, p.batch_norm)
        self.gate = nn.Linear(d_in, p.n_experts)  # the one gate
        self.towers = ParallelMLP(self.n_tasks, self.experts.out_dim, p.tower_dims, 1, p.dropout,
                                  p.activation, p.batch_norm)
        self.not_shared(self.towers)

    def forward(self, batch: Batch) -> torch.Tensor:
        x = self.embedding.flat(batch)
        gate_logits = self.gate(x)  # [B, E]
        self.record_gate("gate", torch.softmax(gate_logits, -1).unsqueeze(1))  # [B, 1, E]: one gate
        return self.towers(mix(gate_logits, self.experts(x))).squeeze(-1)  # shared input [B, D] -> [B, T]

    def last_shared_layer(self) -> nn.Parameter:
        """GradNorm's W: the experts' last layer."""
        return self.experts.weights[-1]
