"""M3oE (Zhang et al., SIGIR 2024, "M3oE: Multi-Domain Multi-Task Mixture-of-Experts Recommendation
Framework"): shared, scenario (domain) and task experts fused per (scenario, task) pair.

With s a scenario slot, t a task and x the flat input embedding:
    h*        = MLP_main(x (W ⊙ W_s) + b + b_s) + MLP_skip(x)                 STAR front end
    h_{s,t}   = sum_k softmax(W_{g,s,t} h*)_k E_k(h*)                          MMoE, one gate per (s, t)
    g_bar_s   = lambda_d g_s + (1 - lambda_d) mean_{j != s} g_j,  g_s = G_s(h*)    scenario experts
    q_bar_t   = lambda_t q_t + (1 - lambda_t) mean_{k != t} q_k,  q_t = Q_t(h*)    task experts
    f_{s,t}   = h_{s,t} + alpha_d g_bar_s + alpha_t q_bar_t                     two-level fusion
    logit_{s,t} = Tower_{s,t}(f_{s,t});  a sample of scenario s returns logit_{s,:}
A sample is scored and trained only through its own scenario's pair outputs: every pair is
computed (towers run as one ParallelMLP over S*T units) and each sample gathers its own row, so
the other scenarios' towers and gates get no gradient from it.

Choices where the paper is silent, or where polyrec departs from the authors' code
(github.com/Applied-Machine-Learning-Lab/M3oE, `MDMTRec`):
* STAR front end and one expert per scenario / per task, shared experts with (s, t) gates, as in
  the authors' code. W_s starts at ones and b_s at zeros (STAR's own initialisation: every scenario
  starts from the shared weights); the authors' code draws W_s with Xavier instead.
* lambda_d, lambda_t, alpha_d, alpha_t are sigmoids of free scalars that start at 1.0 (the code's
  defaults: 0.73 each), one of each shared by all scenarios / tasks (`balance_per_unit: false`,
  the code's form); `true` gives one per scenario slot and per task. lambda is squashed to
  [1e-4, 1 - 1e-4] so it stays strictly inside (0, 1) in float32 (see polyrec.layers.multiview).
  The paper tunes these fusion weights by bi-level (DARTS-style) search on validation data; here
  they are ordinary parameters trained with the rest (the trainer has one optimiser).
* With one real scenario (or one task) the "others" term is dropped: g_bar = lambda g.
* The unknown-scenario slot 0 has its own STAR weights, scenario expert and towers, initialised
  like the others; a sample of a scenario unseen in training uses them. W_0 = ones keeps the shared
  STAR weights, but G_0 and the slot-0 towers learn only from training rows of unknown scenario
  (normally none), so they stay near their random initialisation. Slot 0
  is not among the "others" of a real scenario (it has, normally, no training data); its own
  g_bar_0 mixes in the mean of all real scenarios' experts.
* Gates read h* without the authors' `.detach()` (gradients from gates reach the trunk, as in
  polyrec's MMoE/PLE); no LayerNorm in experts/towers (polyrec MLPs: Linear -> act -> dropout).
* Numeric fields enter as raw scaled values appended to the id embeddings (InputEmbedding.flat).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from polyrec.data.batching import Batch
from polyrec.data.encoders import UNKNOWN_SCENARIO
from polyrec.layers.embedding import InputEmbedding
from polyrec.layers.experts import mix
from polyrec.layers.mlp import MLP, ParallelMLP
from polyrec.layers.multiview import BalancedExperts
from polyrec.layers.scenario import StarLinear
from polyrec.models.base import ModelParams, MultiTaskModel, register
from polyrec.data.spec import ModelSpec


def real_scenario_slots(spec: ModelSpec) -> list[bool]:
    """Which scenario slots are real scenarios: all but slot 0 when slot 0 is the unknown-scenario slot
    (datasets without a scenario column have one real slot, "all")."""
    names = spec.scenario_names
    return [not (i == 0 and name == UNKNOWN_SCENARIO) for i, name in enumerate(names)]


class StarFusion(nn.Module):
    """h* = MLP_main(z_s) + MLP_skip(x), z_s = x (W ⊙ W_s) + b + b_s (polyrec.layers.scenario.StarLinear:
    W_s = ones, b_s = zeros at init). MLP_main reads z_s directly (no activation in between, as in
    M3oE's code) and ends activated; MLP_skip is one activated layer to the same width p."""

    def __init__(self, n_slots: int, in_dim: int, star_dim: int, dims: list[int], dropout: float = 0.0,
                 act: str = "relu") -> None:
        super().__init__()
        if not dims:
            raise ValueError("the STAR fusion needs at least one MLP layer (fusion_dims) after the STAR layer")
        self.star = StarLinear(n_slots, in_dim, star_dim)
        self.main = MLP(star_dim, dims, None, dropout, act)
        self.skip = MLP(in_dim, dims[-1:], None, dropout, act)
        self.out_dim = dims[-1]

    def forward(self, x: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        return self.main(self.star(x, scenario)) + self.skip(x)


class M3oEParams(ModelParams):
    star_dim: int = Field(128, ge=1)  # width of the STAR layer
    fusion_dims: list[int] = Field([64], min_length=1)  # MLP_main after the STAR layer; last size p = width of h*
    n_experts: int = Field(4, ge=1)  # shared experts (the authors' default)
    expert_dims: list[int] = [64]  # shared, scenario and task experts
    tower_dims: list[int] = [32]
    balance_per_unit: bool = False  # one lambda/alpha per scenario and per task instead of one each
    lambda_init: float = 1.0  # free parameter behind lambda (sigmoid(1) = 0.73)
    alpha_init: float = 1.0  # free parameter behind alpha


class PairExpertModel(MultiTaskModel):
    """Scaffold shared by M3oE and SAPENet: inputs -> STAR fusion -> extraction -> views -> pair towers.

    Subclasses build `self.embedding`, `self.fusion`, the extraction and the two views, and implement
    `trunk` (batch -> h*) and `extract` (h*, scenario -> [B, S or 1, T, D])."""

    n_slots: int
    towers: ParallelMLP
    scenario_view: BalancedExperts
    task_view: BalancedExperts

    def _build_views(self, p: ModelParams, d_in: int, dims: list[int], per_unit: bool, alpha: str,
                     lambda_init: float, alpha_init: float, tower_dims: list[int]) -> int:
        self.n_slots = self.spec.n_scenarios
        common = dict(per_unit=per_unit, alpha=alpha, lambda_init=lambda_init, alpha_init=alpha_init,
                      dropout=p.dropout, act=p.activation, batch_norm=p.batch_norm)
        self.scenario_view = BalancedExperts(self.n_slots, d_in, dims, real_scenario_slots(self.spec), **common)
        self.task_view = BalancedExperts(self.n_tasks, d_in, dims, None, **common)
        d = self.scenario_view.out_dim
        self.towers = ParallelMLP(self.n_slots * self.n_tasks, d, tower_dims, 1, p.dropout, p.activation,
                                  p.batch_norm)
        self.not_shared(self.towers)  # the views are shared: every task's loss reaches the task view too
        return d

    def trunk(self, batch: Batch) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extract(self, h: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _pair_mmoe(self, h: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        """One-layer MMoE with one gate per (scenario, task) pair -> [B, S, T, D]."""
        b, s, t = h.shape[0], self.n_slots, self.n_tasks
        experts = self.experts(h)  # [B, E, D]
        logits = self.pair_gates(h).view(b, s * t, -1)  # [B, S*T, E]
        if self._gates is not None:  # record the gates each sample actually uses: its own scenario's T gates
            own = logits.view(b, s, t, -1).gather(1, scenario.view(b, 1, 1, 1).expand(b, 1, t, logits.shape[-1]))
            self.record_gate("pair_gates", torch.softmax(own.squeeze(1), -1))
        return mix(logits, experts).view(b, s, t, -1)

    def forward(self, batch: Batch) -> torch.Tensor:
        sc = batch.scenario
        h = self.trunk(batch)  # [B, p]
        ext = self.extract(h, sc)  # [B, S or 1, T, D]
        g = self.scenario_view(h)  # [B, S, D]: alpha_s * g_bar_s
        q = self.task_view(h)  # [B, T, D]: alpha_t * q_bar_t
        f = ext + g.unsqueeze(2) + q.unsqueeze(1)  # [B, S, T, D]
        b, s, t = f.shape[:3]
        logits = self.towers(f.reshape(b, s * t, -1)).view(b, s, t)
        return logits.gather(1, sc.view(b, 1, 1).expand(b, 1, t)).squeeze(1)  # [B, T]: own scenario's row


@register("m3oe")
class M3oE(PairExpertModel):
    Params = M3oEParams
    deviations = (
        "fusion weights alpha trained jointly with the network, not by the paper's bi-level (DARTS-style) search on validation data",
    )
    default_loss_reduction = "scenario_task"  # the paper's L = sum_s sum_t mean BCE over (s, t)'s rows

    def __init__(self, spec, embed_dim, params: M3oEParams) -> None:
        super().__init__(spec, embed_dim, params)
        p = params
        self.embedding = InputEmbedding(spec, embed_dim, numeric_fields=False)  # flat() only
        self.fusion = StarFusion(spec.n_scenarios, self.embedding.flat_dim, p.star_dim, p.fusion_dims,
                                 p.dropout, p.activation)
        d_h = self.fusion.out_dim
        self.experts = ParallelMLP(p.n_experts, d_h, p.expert_dims, None, p.dropout, p.activation, p.batch_norm)
        self.pair_gates = nn.Linear(d_h, spec.n_scenarios * self.n_tasks * p.n_experts)
        self.not_shared(self.pair_gates)
        self._build_views(p, d_h, p.expert_dims, p.balance_per_unit, "sigmoid", p.lambda_init, p.alpha_init,
                          p.tower_dims)

    def trunk(self, batch: Batch) -> torch.Tensor:
        return self.fusion(self.embedding.flat(batch), batch.scenario)

    def extract(self, h: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        return self._pair_mmoe(h, scenario)

    def last_shared_layer(self) -> nn.Parameter:
        """GradNorm's W: the shared experts' last layer, not the per-task experts Q_t of the task view."""
        return self.experts.weights[-1]
