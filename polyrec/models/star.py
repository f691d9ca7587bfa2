"""STAR (Sheng et al., CIKM 2021, "One Model to Serve All: Star Topology Adaptive Recommender").

For a sample of scenario s (its id in batch.scenario):
    z   = PN_s(e)                                   partitioned normalisation of the input
    h_l = act((W_l ⊙ W_{l,s})^T h_{l-1} + b_l + b_{l,s})   star-topology FCN (W_{l,s} init 1, b_{l,s} init 0)
    y_t = out_{t,s}(h_L) + aux_t([e_s ; domain features])   main logit + auxiliary logit, per task t

- PN (layers.scenario.PartitionedNorm): (γ·γ_s)(z − μ_s)/sqrt(σ²_s + ε) + β + β_s. The paper trains
  on single-domain batches; our batches mix scenarios, so training uses the statistics of the
  batch's rows of the same scenario, and eval uses each scenario's moving statistics (never batch
  statistics, so eval output does not depend on the batch). Choices where the paper is silent: a
  scenario with < 2 rows in a batch uses its moving statistics; a slot never seen in training
  (the unknown scenario) uses moving statistics over all rows.
- PN is applied once, to the FCN input (the paper's figure: embedding -> pooling & concatenation
  -> PN -> star FCN). The input is InputEmbedding.fields flattened (numeric fields as value x
  learned vector), so the auxiliary net can pick named fields from the same tensor.
- Auxiliary network: the paper feeds the domain indicator and "features depicting the domain" to
  a small FCN; here the scenario-id embedding (own table) plus the fields named in
  `domain_fields` (default none), one MLP per task.
- Multi-task form (the paper is single-task): the star FCN is shared by the tasks; the output
  layer is a star layer with one column per task (task t's own W_t ⊙ W_{t,s}, b_t + b_{t,s}), and
  each task has its own auxiliary MLP; y_t is the sum of the two logits, as in the paper.
- `batch_norm` is not used: PN is STAR's normalisation.
"""

from __future__ import annotations

import torch
from torch import nn

from polyrec.data.batching import Batch
from polyrec.layers.embedding import InputEmbedding
from polyrec.layers.mlp import ParallelMLP, activation
from polyrec.layers.scenario import PartitionedNorm, StarLinear, field_index
from polyrec.models.base import ModelParams, MultiTaskModel, register
from polyrec.layers.decay import no_decay


class STARParams(ModelParams):
    fcn_dims: list[int] = [128, 64]
    aux_dims: list[int] = [32]
    domain_fields: list[str] = []  # fields describing the scenario, fed to the auxiliary net
    pn_momentum: float = 0.1


@register("star")
class STAR(MultiTaskModel):
    Params = STARParams

    def __init__(self, spec, embed_dim, params: STARParams) -> None:
        super().__init__(spec, embed_dim, params)
        p, n_scen = params, spec.n_scenarios
        self.embedding = InputEmbedding(spec, embed_dim)
        d_in = self.embedding.n_fields * embed_dim
        self.pn = PartitionedNorm(n_scen, d_in, p.pn_momentum)
        dims = [d_in, *p.fcn_dims]
        self.fcn = nn.ModuleList(StarLinear(n_scen, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.task_out = StarLinear(n_scen, dims[-1], self.n_tasks)  # column t = task t's output layer
        self.scenario_emb = no_decay(nn.Parameter(torch.randn(n_scen, embed_dim) * 0.01))
        self.domain_idx = field_index(spec, p.domain_fields, "star domain_fields")
        d_aux = embed_dim * (1 + len(self.domain_idx))
        self.task_aux = ParallelMLP(self.n_tasks, d_aux, p.aux_dims, 1, 0.0, p.activation)
        self.not_shared(self.task_out, self.task_aux)
        self.act = activation(p.activation)
        self.dropout = nn.Dropout(p.dropout) if p.dropout > 0 else nn.Identity()

    def forward(self, batch: Batch) -> torch.Tensor:
        s = batch.scenario
        e = self.embedding.fields(batch)  # [B, F, d]
        h = self.pn(e.flatten(1), s)
        for layer in self.fcn:
            h = self.dropout(self.act(layer(h, s)))
        aux_in = torch.cat([self.scenario_emb[s], e[:, self.domain_idx].flatten(1)], dim=1)
        return self.task_out(h, s) + self.task_aux(aux_in).squeeze(-1)  # [B, T]

    def last_shared_layer(self) -> nn.Parameter:
        """GradNorm's W: the shared weight of the last star-topology layer (not a per-scenario weight or bias)."""
        return self.fcn[-1].weight
