"""Single-task baseline: one fully independent network (own embeddings, own MLP) per task.

This is the "train one model per task" row of multi-task papers; the T networks are evaluated in
one pass only for speed. No parameter is shared, so no transfer (positive or negative) happens.
"""

from __future__ import annotations

import torch
from torch import nn

from polyrec.data.batching import Batch
from polyrec.layers.embedding import InputEmbedding
from polyrec.layers.mlp import ParallelMLP
from polyrec.models.base import ModelParams, MultiTaskModel, register


class SingleTaskParams(ModelParams):
    hidden_dims: list[int] = [128, 64]


@register("singletask")
class SingleTask(MultiTaskModel):
    Params = SingleTaskParams

    def __init__(self, spec, embed_dim, params: SingleTaskParams) -> None:
        super().__init__(spec, embed_dim, params)
        self.task_embeddings = nn.ModuleList(InputEmbedding(spec, embed_dim, numeric_fields=False) for _ in spec.tasks)
        in_dim = self.task_embeddings[0].flat_dim
        self.towers = ParallelMLP(self.n_tasks, in_dim, params.hidden_dims, 1, params.dropout,
                                  params.activation, params.batch_norm)
        self.not_shared(self.task_embeddings, self.towers)  # nothing is shared

    def forward(self, batch: Batch) -> torch.Tensor:
        x = torch.stack([emb.flat(batch) for emb in self.task_embeddings], dim=1)  # [B, T, in]
        return self.towers(x).squeeze(-1)

    def last_shared_layer(self) -> nn.Parameter | None:
        """GradNorm's W: nothing is shared."""
        return None
