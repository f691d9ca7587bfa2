"""SAR-Net (Shen et al., CIKM 2021, "SAR-Net: A Scenario-Aware Ranking Network for Personalized Fair
Recommendation in Hundreds of Travel Scenarios").

For a sample of scenario s with scenario embedding e_s (own table):
  1. Cross-scenario behaviour transfer: the paper multiplies an item attention (target item vs.
     behaviours) by a scenario attention (current scenario context vs. each behaviour's scenario
     context). Both distributions are softmaxes over the same behaviours, so their renormalised
     product is one softmax of the summed scores; with the scenario part of the key folded into the
     query:   a_l = softmax_l(q · k_l / sqrt(d)),  q = A [categorical field embeddings] + B e_s,
     v = sum_l a_l k_l over the valid (non-padding) tokens k_l of every sequence field.
     Choices where our data differ from the paper's: behaviours carry no scenario tag, so the
     scenario query meets the behaviour embedding itself; the target item is not marked in the
     schema, so all categorical fields form the item query; every sequence field is treated as a
     behaviour sequence. Without any sequence field the same attention runs over the sample's own
     field embeddings (InputEmbedding.fields). An empty sequence reads as a zero vector.
  2. Scenario-specific linear transformation:  z = [x ; v ; e_s] ⊙ γ_s + β_s  (γ_s init 1, β_s init 0).
  3. Mixture of experts: n_shared_experts shared experts plus n_scenario_experts experts owned by
     each scenario slot (a row only runs through its own scenario's experts); task t's gate is a
     softmax over [own-scenario experts ; shared experts] from a linear map of z, which carries
     the scenario through γ_s, β_s and e_s (no batch statistics).
  4. Debias expert: the paper's bias net reads "fairness coefficient" (exposure-bias) features, is
     added to the experts' output in training only and is removed at serving, so ranking is not
     driven by exposure bias. Here it is one linear logit per task, without intercept, on the fields
     named in `debias_fields` (e.g. a position feature), added to the logits in training mode only;
     validation, test and serving (eval mode) use the main network alone. With no `debias_fields`
     (the default) there is no bias feature to debias, so there is no debias expert: the faithful
     reading, since the scenario is not an exposure-bias feature. `debias_scenario=true` also feeds
     e_s to it (polyrec before 2026-12): it then learns per-scenario offsets of the label rate that
     evaluation throws away. Measured both ways on MovieLens-100K to convergence (3 seeds,
     docs/results/sarnet-debias): no significant difference (overall AUC 0.8374 vs 0.8368, p 0.23;
     LogLoss 0.4815 vs 0.4803, p 0.50), so the faithful form is the default.
Multi-task form (the paper has one CTR output): one gate per task over the shared and own-scenario
experts (step 3) and one tower per task on the mixed representation.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from polyrec.data.batching import Batch
from polyrec.layers.embedding import InputEmbedding
from polyrec.layers.experts import mix
from polyrec.layers.mlp import ParallelMLP
from polyrec.layers.scenario import ScenarioAffine, field_index
from polyrec.models.base import ModelParams, MultiTaskModel, register
from polyrec.layers.decay import no_decay


class SARNetParams(ModelParams):
    n_shared_experts: int = 2
    n_scenario_experts: int = 1  # per scenario slot
    expert_dims: list[int] = [64]
    tower_dims: list[int] = [32]
    debias_fields: list[str] = []  # exposure-bias features for the (train-only) debias expert
    debias_scenario: bool = False  # also feed e_s to the debias expert (its offsets are dropped at evaluation)


def attend(q: torch.Tensor, keys: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """sum_l softmax_l(q·k_l/sqrt(d)) k_l per sample, over its valid keys: q [B, d], keys [B, L, d] -> [B, d]."""
    scores = (keys @ q.unsqueeze(-1)).squeeze(-1) / math.sqrt(q.shape[-1])
    if valid is not None:
        scores = scores.masked_fill(~valid, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1)
    if valid is not None:
        weights = weights * valid  # all-padding rows: 0 instead of a uniform read of padding
    return (weights.unsqueeze(1) @ keys).squeeze(1)


@register("sarnet")
class SARNet(MultiTaskModel):
    Params = SARNetParams
    deviations = (
        "no debias expert unless exposure-bias fields are named (debias_fields); the paper's bias features are not in these datasets",
    )

    def __init__(self, spec, embed_dim, params: SARNetParams) -> None:
        super().__init__(spec, embed_dim, params)
        p, n_scen, d = params, spec.n_scenarios, embed_dim
        self.embedding = InputEmbedding(spec, d)
        self.scenario_emb = no_decay(nn.Parameter(torch.randn(n_scen, d) * 0.01))
        self.n_cat = self.embedding.n_cat
        self.query = nn.Linear(self.n_cat * d + d, d)
        n_reads = max(len(self.embedding.seq_names), 1)
        d_z = self.embedding.flat_dim + n_reads * d + d
        self.transform = ScenarioAffine(n_scen, d_z)
        mlp = dict(dims=p.expert_dims, dropout=p.dropout, act=p.activation, batch_norm=p.batch_norm)
        self.shared_experts = ParallelMLP(p.n_shared_experts, d_z, **mlp)
        self.scenario_experts = ParallelMLP(n_scen * p.n_scenario_experts, d_z, **mlp)
        self.task_gates = ParallelMLP(self.n_tasks, d_z, [], p.n_scenario_experts + p.n_shared_experts)
        self.towers = ParallelMLP(self.n_tasks, self.shared_experts.out_dim, p.tower_dims, 1, p.dropout,
                                  p.activation, p.batch_norm)
        self.debias_idx = field_index(spec, p.debias_fields, "sarnet debias_fields")
        d_bias = d * (int(p.debias_scenario) + len(self.debias_idx))  # no intercept: the base rate is the main net's
        self.task_debias = (nn.Parameter(torch.empty(d_bias, self.n_tasks).uniform_(-d_bias ** -0.5, d_bias ** -0.5))
                            if d_bias else None)
        # the numeric field vectors and vector projections are unread when no attention reads them (flat()
        # uses the raw values)
        unread = (self.embedding.numeric_vectors, self.embedding.vector_projections) if self.embedding.seq_names \
            else (None,)
        self.not_shared(self.task_gates, self.towers, self.task_debias, *unread)

    def behaviour_reads(self, batch: Batch, x: torch.Tensor, e_s: torch.Tensor) -> list[torch.Tensor]:
        q = self.query(torch.cat([x[:, : self.n_cat * self.embed_dim], e_s], dim=1))  # flat starts with the cat fields
        reads = []
        for j in range(len(self.embedding.seq_names)):
            reads.append(attend(q, *self.embedding.sequence_tokens(batch, j)))
        return reads or [attend(q, self.embedding.fields(batch), None)]

    def forward(self, batch: Batch) -> torch.Tensor:
        s, ns = batch.scenario, self.params.n_scenario_experts
        x, e_s = self.embedding.flat(batch), self.scenario_emb[s]
        z = self.transform(torch.cat([x, *self.behaviour_reads(batch, x, e_s), e_s], dim=1), s)
        own = self.scenario_experts(z).unflatten(1, (-1, ns))[torch.arange(s.shape[0], device=s.device), s]  # [B, ns, D]; shape[0]: dynamic when traced
        experts = torch.cat([own, self.shared_experts(z)], dim=1)
        gate_logits = self.task_gates(z)  # [B, T, ns + n_shared]
        self.record_gate("task_gates", torch.softmax(gate_logits, -1))
        logits = self.towers(mix(gate_logits, experts)).squeeze(-1)  # [B, T]
        if self.training and self.task_debias is not None:  # debias expert: training only, as in the paper
            bias_in = [e_s] if self.params.debias_scenario else []
            if self.debias_idx:
                bias_in.append(self.embedding.fields(batch)[:, self.debias_idx].flatten(1))
            logits = logits + torch.cat(bias_in, dim=1) @ self.task_debias
        return logits

    def last_shared_layer(self) -> nn.Parameter:
        """GradNorm's W: the shared experts' last layer (scenario experts serve one scenario's rows)."""
        return self.shared_experts.weights[-1]
