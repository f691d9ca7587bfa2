"""SAPENet — Self-Attentive Progressive Expert Network (Wang, Yu, Li, Li, Xu, "Research on a
Multi-Scenario, Multi-Task Prediction Method for E-Commerce Based on Self-Attention and Progressive
Extraction Mechanisms", E-Commerce Letters 15(6):1004-1014, 2026, DOI 10.12677/ecl.2026.156720).

Forward pass, step by step as in docs/specs/sapenet.md (s: the sample's scenario slot, t: a task):
 1. e = [e_1 .. e_F]: one d-dim vector per field (InputEmbedding.fields).
 2. e~ = e + W_o MultiHead(e): self-attention across the F fields of each sample, residual, flatten
    (FieldSelfAttention; `attention: false` skips it: the ablation "w/o self-attention").
 3. STAR fusion: z_s = e~ (W ⊙ W_s) + b + b_s (W_s = ones, b_s = zeros at init);
    h* = MLP_main(z_s) + MLP_skip(e~).
 4. PLE over h* with L levels (`n_levels`, default 2) and M experts per group per level (`n_experts`):
    each level has M shared experts and M experts per task; task t's gate is a softmax over its 2M
    experts, one gate per task (not per pair); intermediate levels keep a shared stream whose gate
    mixes all experts (polyrec.models.ple.CGCLevel). h_t^PLE is task t's stream after level L.
    `extraction: mmoe` replaces this by M3oE's single-layer MMoE with one gate per (s, t) pair over
    `mmoe_experts` shared experts (the ablation "w/o PLE").
 5. g_s = G_s(h*) for every scenario slot, q_t = Q_t(h*) for every task (one MLP each), balanced:
    g_bar_s = lambda_s g_s + (1 - lambda_s)/(S-1) sum_{j != s} g_j, likewise q_bar_t;
    lambda = sigmoid(free parameter), the others term dropped when S = 1 or T = 1.
 6. f_{s,t} = h_t^PLE + alpha_s g_bar_s + alpha_t q_bar_t; logit_{s,t} = Tower_{s,t}(f_{s,t}).
    A sample of scenario s returns logit_{s,:} (all pairs computed, each sample gathers its own row:
    the other scenarios' towers get no gradient from it); y_hat = sigmoid(logit) outside the model.
    Loss: the spec's is a BCE mean per (s, t) pair, summed over pairs: `train.loss_reduction=scenario_task`,
    this model's default (`train.loss_reduction=auto`). `task` (the bench variant `sapenet-pooled-loss`) takes
    the mean per task over the whole batch (scenarios pooled, i.e. pairs weighted by their share of the batch).

Choices where the paper/spec is silent:
* Fields: categorical ids, then sequences (masked mean of their token embeddings), then numeric
  fields as value x a learned vector — all F of them attend to each other.
* Attention: `n_heads` heads (default 2) of size ceil(d / n_heads) with an output projection W_o
  back to d (needed for the residual when heads do not divide d); no LayerNorm, no dropout on
  attention weights, no masking. Works for any F >= 1 and any d.
* STAR: polyrec.layers.scenario.StarLinear, W (F*d x `star_dim`) initialised like nn.Linear, one
  W_s/b_s row per scenario slot; MLP_main (`fusion_dims`) reads z_s directly (no activation in
  between, as in M3oE's code) and ends activated; MLP_skip is one activated layer to
  p = fusion_dims[-1]. No normalisation (STAR's partitioned norm is not part of the spec).
* PLE: reused from polyrec.models.ple (CGCLevel) with n_shared = n_task = M; expert sizes
  `expert_dims`, whose last size D is also the size of the G_s / Q_t experts (f sums them).
* lambda_s / lambda_t and alpha_s / alpha_t: one per scenario slot and one per task
  (`balance_per_unit: true`; `false` shares one of each as M3oE's code does). lambda's free
  parameter starts at 1.0 (lambda = 0.73, M3oE's default) and is squashed to [1e-4, 1 - 1e-4] so it
  stays strictly in (0, 1) in float32. alpha is an unconstrained scalar starting at 1.0.
* Scenario count in the balance: S counts the real scenarios. The unknown-scenario slot 0 (samples
  of scenarios unseen in training) has its own STAR W_0/b_0, expert G_0, lambda_0, alpha_0 and
  towers, initialised like the others, and unseen scenarios are scored with them (G_0 and the slot-0
  towers learn only from training rows of unknown scenario, normally none). Slot 0 is never
  among the "others" of a real scenario; its own g_bar_0 mixes in the mean of all real scenarios'
  experts. With one real scenario (or one task) g_bar = lambda g (M3oE's code does the same).
* Gates (PLE task gates, MMoE pair gates) are single linear maps of their input + softmax, per
  sample; `batch_norm` (if set) applies to experts and towers only.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from polyrec.data.batching import Batch
from polyrec.layers.attention import FieldSelfAttention
from polyrec.layers.embedding import InputEmbedding
from polyrec.layers.mlp import ParallelMLP
from polyrec.models.base import ModelParams, register
from polyrec.models.m3oe import PairExpertModel, StarFusion
from polyrec.models.ple import CGCLevel, PLEParams


class SAPENetParams(ModelParams):
    attention: bool = True  # step 2; false = the ablation "w/o self-attention"
    n_heads: int = Field(2, ge=1)
    star_dim: int = Field(128, ge=1)  # width of the STAR layer (h in W: m x h)
    fusion_dims: list[int] = Field([64], min_length=1)  # MLP_main after the STAR layer; last size p = width of h*
    extraction: Literal["ple", "mmoe"] = "ple"  # step 4; mmoe = the ablation "w/o PLE"
    n_levels: int = Field(2, ge=1)  # L
    n_experts: int = Field(2, ge=1)  # M: experts per group (shared / each task) per level
    mmoe_experts: int = Field(4, ge=1)  # shared experts of the MMoE used when extraction = mmoe (M3oE's default)
    expert_dims: list[int] = [64]  # PLE/MMoE experts and the scenario/task experts G_s, Q_t
    tower_dims: list[int] = [32]
    balance_per_unit: bool = True  # one lambda/alpha per scenario and per task (false: one each)
    lambda_init: float = 1.0  # free parameter behind lambda (sigmoid(1) = 0.73)
    alpha_init: float = 1.0


@register("sapenet")
class SAPENet(PairExpertModel):
    Params = SAPENetParams
    default_loss_reduction = "scenario_task"  # the paper's L = sum_s sum_t mean BCE over (s, t)'s rows

    def __init__(self, spec, embed_dim, params: SAPENetParams) -> None:
        super().__init__(spec, embed_dim, params)
        p = params
        self.embedding = InputEmbedding(spec, embed_dim)  # step 1
        self.attention = FieldSelfAttention(embed_dim, p.n_heads) if p.attention else None  # step 2
        m = self.embedding.n_fields * embed_dim
        self.fusion = StarFusion(spec.n_scenarios, m, p.star_dim, p.fusion_dims, p.dropout, p.activation)  # step 3
        d_h = self.fusion.out_dim
        if p.extraction == "ple":  # step 4
            ple = PLEParams(n_levels=p.n_levels, n_shared_experts=p.n_experts, n_task_experts=p.n_experts,
                            expert_dims=p.expert_dims, tower_dims=p.tower_dims, dropout=p.dropout,
                            activation=p.activation, batch_norm=p.batch_norm)
            levels, d_in = [], d_h
            for i in range(p.n_levels):
                levels.append(CGCLevel(self.n_tasks, d_in, ple, last=i == p.n_levels - 1))
                d_in = levels[-1].out_dim
            self.levels = nn.ModuleList(levels)
            self.not_shared(*(part for level in levels for part in level.task_parts()))
        else:
            self.experts = ParallelMLP(p.mmoe_experts, d_h, p.expert_dims, None, p.dropout, p.activation,
                                       p.batch_norm)
            self.pair_gates = nn.Linear(d_h, spec.n_scenarios * self.n_tasks * p.mmoe_experts)
            self.not_shared(self.pair_gates)
        self._build_views(p, d_h, p.expert_dims, p.balance_per_unit, "free", p.lambda_init, p.alpha_init,
                          p.tower_dims)  # steps 5 and 6

    def trunk(self, batch: Batch) -> torch.Tensor:
        e = self.embedding.fields(batch)  # [B, F, d]
        if self.attention is not None:
            e = self.attention(e)
        return self.fusion(e.flatten(1), batch.scenario)  # h*: [B, p]

    def extract(self, h: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        if self.params.extraction == "mmoe":
            return self._pair_mmoe(h, scenario)  # [B, S, T, D]
        task_in, shared_in = h, h
        for i, level in enumerate(self.levels):
            task_in, shared_in, gates = level(task_in, shared_in)
            self.record_gate(f"level{i + 1}_task_gates", gates)
        return task_in.unsqueeze(1)  # h_t^PLE, the same for every scenario: [B, 1, T, D]

    def last_shared_layer(self) -> nn.Parameter:
        """GradNorm's W: the last PLE level's shared experts (the MMoE experts with extraction=mmoe), not the
        per-task experts Q_t of the task view."""
        return self.levels[-1].shared_experts.weights[-1] if hasattr(self, "levels") else self.experts.weights[-1]
