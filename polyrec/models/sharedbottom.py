"""Shared-Bottom (Caruana 1997): one shared MLP under per-task towers; the classic hard-sharing baseline."""

from __future__ import annotations

import torch
from torch import nn

from polyrec.data.batching import Batch
from polyrec.layers.embedding import InputEmbedding
from polyrec.layers.mlp import MLP, ParallelMLP
from polyrec.models.base import ModelParams, MultiTaskModel, register


class SharedBottomParams(ModelParams):
    bottom_dims: list[int] = [128, 64]
    tower_dims: list[int] = [32]


@register("sharedbottom")
class SharedBottom(MultiTaskModel):
    Params = SharedBottomParams

    def __init__(self, spec, embed_dim, params: SharedBottomParams) -> None:
        super().__init__(spec, embed_dim, params)
        p = params
        self.embedding = InputEmbedding(spec, embed_dim, numeric_fields=False)
        self.bottom = MLP(self.embedding.flat_dim, p.bottom_dims, None, p.dropout, p.activation, p.batch_norm)
        self.towers = ParallelMLP(self.n_tasks, self.bottom.out_dim, p.tower_dims, 1, p.dropout,
                                  p.activation, p.batch_norm)
        self.not_shared(self.towers)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.towers(self.bottom(self.embedding.flat(batch))).squeeze(-1)

    def last_shared_layer(self) -> nn.Parameter:
        """GradNorm's W: the bottom MLP's last linear layer."""
        return [m for m in self.bottom.modules() if isinstance(m, nn.Linear)][-1].weight
