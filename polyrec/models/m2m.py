"""M2M (Zhang et al., WSDM 2022, "Leaving No One Behind: A Multi-Scenario Multi-Task Meta Learning
Approach for Advertiser Modeling").

With e_s the scenario-knowledge embedding of the sample's scenario and τ_t a task embedding:
    E_i     = expert_i(x),  i = 1..K                                  expert view representations
    a_{t,i} = softmax_i( v_t · act(Meta_s([E_i ; τ_t])) )             meta attention, per sample
    R_t     = sum_i a_{t,i} E_i
    h_t^l   = h_t^{l-1} + act(Meta_{t,s}^l(h_t^{l-1})),  h_t^0 = R_t    meta tower with residual
    y_t     = w_t · h_t^L + c_t
Meta_s is a meta unit (layers.scenario.MetaLinear): a linear map whose weights W(e_s), b(e_s) are
generated from the scenario embedding.

- The attention is over the sample's OWN K expert outputs (softmax over experts, never over the
  samples of a batch; the peer pitfall was feeding [B, D] to a Transformer).
  Meta_s([E_i ; τ_t]) = W_E(e_s) E_i + W_T(e_s) τ_t + b(e_s) is computed in those two parts.
- Scenario knowledge = the scenario-id embedding only (the paper also feeds scenario attribute
  features; the schema marks none), so the generated weights depend on the slot alone: they are
  generated once per slot per batch and each row picks its own (scenario_matmul).
- Meta units are linear generators (W = W0 + reshape(e_s G)); the scenario embedding starts at
  unit variance so that it moves the generated weights from the start.
- The attention meta unit is shared by the tasks (the task enters through τ_t) with a scoring
  vector v_t per task; each task has its own meta tower (its own generators) and output layer.
- The paper encodes the behaviour sequence with a Transformer over the sample's own tokens; here
  sequences use the library's masked-mean pooling (InputEmbedding).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from polyrec.data.batching import Batch
from polyrec.layers.embedding import InputEmbedding
from polyrec.layers.experts import mix
from polyrec.layers.mlp import ParallelMLP, activation
from polyrec.layers.scenario import MetaLinear, scenario_matmul
from polyrec.models.base import ModelParams, MultiTaskModel, register
from polyrec.layers.decay import no_decay


class M2MParams(ModelParams):
    n_experts: int = 4
    expert_dims: list[int] = [64]
    attention_dim: int = 32
    tower_layers: int = 2


@register("m2m")
class M2M(MultiTaskModel):
    Params = M2MParams

    def __init__(self, spec, embed_dim, params: M2MParams) -> None:
        super().__init__(spec, embed_dim, params)
        p, d, n_t = params, embed_dim, self.n_tasks
        self.embedding = InputEmbedding(spec, d, numeric_fields=False)
        self.scenario_emb = no_decay(nn.Parameter(torch.randn(spec.n_scenarios, d)))
        self.task_emb = no_decay(nn.Parameter(torch.randn(n_t, d)))
        self.experts = ParallelMLP(p.n_experts, self.embedding.flat_dim, p.expert_dims, None, p.dropout,
                                   p.activation, p.batch_norm)
        dim = self.experts.out_dim
        self.meta_attention = MetaLinear(1, d, dim + d, p.attention_dim)
        bound = 1.0 / math.sqrt(p.attention_dim)
        self.task_query = no_decay(nn.Parameter(torch.empty(n_t, p.attention_dim).uniform_(-bound, bound)))  # v_t
        self.towers = nn.ModuleList(MetaLinear(n_t, d, dim, dim) for _ in range(p.tower_layers))
        self.towers_out = ParallelMLP(n_t, dim, [], 1)
        self.not_shared(self.task_emb, self.task_query, self.towers, self.towers_out)
        self.act = activation(p.activation)
        self.dropout = nn.Dropout(p.dropout) if p.dropout > 0 else nn.Identity()

    def forward(self, batch: Batch) -> torch.Tensor:
        s = batch.scenario
        experts = self.experts(self.embedding.flat(batch))  # [B, K, D]
        w, b = self.meta_attention.generate(self.scenario_emb)  # [S, 1, D + d, h], [S, 1, h]
        w_e, w_t = w[:, 0, : experts.shape[-1]], w[:, 0, experts.shape[-1]:]
        by_expert = scenario_matmul(experts, w_e, s)  # W_E(e_s) E_i: [B, K, h]
        by_task = (self.task_emb @ w_t + b)[s]  # W_T(e_s) τ_t + b(e_s): [S, T, h] -> [B, T, h]
        hidden = self.act(by_task.unsqueeze(2) + by_expert.unsqueeze(1))  # [B, T, K, h]
        scores = (hidden * self.task_query.unsqueeze(1)).sum(-1)  # [B, T, K]
        self.record_gate("meta_attention", torch.softmax(scores, -1))
        h = mix(scores, experts)  # R_t: [B, T, D]
        for layer in self.towers:
            h = h + self.dropout(self.act(layer(h, self.scenario_emb, s)))
        return self.towers_out(h).squeeze(-1)

    def last_shared_layer(self) -> nn.Parameter:
        """GradNorm's W: the experts' last layer (meta attention and towers are generated per task)."""
        return self.experts.weights[-1]
