"""MMoE (Ma et al., KDD 2018): shared experts, one softmax gate per task, one tower per task.

    f_t(x) = sum_e softmax(W_t x)_e * expert_e(x);   y_t = tower_t(f_t(x))
Gates are a single linear map + softmax over experts, computed per sample (no batch statistics).
"""

from __future__ import annotations

import torch
from torch import nn

from polyrec.data.batching import Batch
from polyrec.layers.embedding import InputEmbedding
from polyrec.layers.experts import mix
from polyrec.layers.mlp import ParallelMLP
from polyrec.models.base import ModelParams, MultiTaskModel, register


class MMoEParams(ModelParams):
    n_experts: int = 4
    expert_dims: list[int] = [128, 64]
    tower_dims: list[int] = [32]


@register("mmoe")
class MMoE(MultiTaskModel):
    Params = MMoEParams

    def __init__(self, spec, embed_dim, params: MMoEParams) -> None:
        super().__init__(spec, embed_dim, params)
        p = params
        self.embedding = InputEmbedding(spec, embed_dim, numeric_fields=False)
        d_in = self.embedding.flat_dim
        self.experts = ParallelMLP(p.n_experts, d_in, p.expert_dims, None, p.dropout, p.activation, p.batch_norm)
        self.task_gates = nn.Linear(d_in, self.n_tasks * p.n_experts)
        self.towers = ParallelMLP(self.n_tasks, self.experts.out_dim, p.tower_dims, 1, p.dropout,
                                  p.activation, p.batch_norm)
        self.not_shared(self.task_gates, self.towers)

    def forward(self, batch: Batch) -> torch.Tensor:
        x = self.embedding.flat(batch)
        experts = self.experts(x)  # [B, E, D]
        gate_logits = self.task_gates(x).view(x.shape[0], self.n_tasks, -1)  # [B, T, E]
        self.record_gate("task_gates", torch.softmax(gate_logits, -1))
        return self.towers(mix(gate_logits, experts)).squeeze(-1)  # [B, T]

    def last_shared_layer(self) -> nn.Parameter:
        """GradNorm's W: the experts' last layer (every task's gate mixes them)."""
        return self.experts.weights[-1]
