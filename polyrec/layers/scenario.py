"""Per-scenario parameter banks: every row of a batch is computed with its own scenario's parameters.

A bank has one row per scenario slot (`spec.n_scenarios`, slot 0 = the unknown scenario), and a
row is selected by `batch.scenario`, never by position. Layers that need a different matrix per
scenario compute x @ W_s for every slot in one matmul and keep each row's own slot
(`scenario_matmul`): S times the FLOPs of one shared layer, but no per-row weight copies and no
host synchronisation. That suits the tens of scenarios of public data sets; hundreds of scenarios
would want grouped (sorted) matmuls instead.

Nothing here mixes samples, except PartitionedNorm in training, which (like BatchNorm) uses the
statistics of the batch's samples of the same scenario; in eval it uses moving statistics only.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from polyrec.errors import PolyrecError
from polyrec.data.spec import ModelSpec
from polyrec.layers.decay import no_decay


def scenario_matmul(x: torch.Tensor, w: torch.Tensor, scen: torch.Tensor) -> torch.Tensor:
    """Each row times its own scenario's matrix.

    x [B, in] or [B, n, in]; w [S, in, out] (one matrix per slot, shared by the n units) or
    [S, n, in, out] (one per slot and unit, x then [B, n, in]); scen int64 [B].
    Returns [B, out] or [B, n, out]: out[b] = x[b] @ w[scen[b]].
    """
    s, d_out = w.shape[0], w.shape[-1]
    if w.dim() == 3:  # one GEMM: x @ [W_0 | W_1 | ... | W_{S-1}]
        y = (x @ w.permute(1, 0, 2).reshape(w.shape[1], s * d_out)).unflatten(-1, (s, d_out))
    else:
        y = torch.einsum("bni,snio->bnso", x, w)
    idx = scen.view(-1, *[1] * (y.dim() - 1)).expand(-1, *y.shape[1:-2], 1, d_out)  # -1: batch axis stays dynamic in traced (ONNX) graphs
    return y.gather(-2, idx).squeeze(-2)


def field_index(spec: ModelSpec, names: list[str], what: str) -> list[int]:
    """Positions of named fields in InputEmbedding.fields() order (categorical, sequence, numeric, vector)."""
    order = [*spec.categorical_fields, *spec.sequence_fields, *spec.numeric_fields, *spec.vector_dims]
    unknown = [n for n in names if n not in order]
    if unknown:
        raise PolyrecError(f"{what}: unknown field(s) {unknown}; the model's fields are {order}.")
    return [order.index(n) for n in names]


class ScenarioAffine(nn.Module):
    """x ⊙ γ_s + β_s with per-slot γ (init 1) and β (init 0): the identity at init."""

    def __init__(self, n_scenarios: int, dim: int) -> None:
        super().__init__()
        self.gamma = no_decay(nn.Parameter(torch.ones(n_scenarios, dim)))
        self.beta = no_decay(nn.Parameter(torch.zeros(n_scenarios, dim)))

    def forward(self, x: torch.Tensor, scen: torch.Tensor) -> torch.Tensor:
        return x * self.gamma[scen] + self.beta[scen]


class StarLinear(nn.Module):
    """STAR's star-topology FC layer: a row of scenario s computes x (W ⊙ W_s) + b + b_s.

    W, b are shared (nn.Linear init); W_s starts at ones and b_s at zeros, so every scenario starts
    from the shared weights."""

    def __init__(self, n_scenarios: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)
        self.weight = nn.Parameter(torch.empty(in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_dim).uniform_(-bound, bound))
        self.scen_weight = no_decay(nn.Parameter(torch.ones(n_scenarios, in_dim, out_dim)))  # W_s: multiplicative, starts at 1
        self.scen_bias = no_decay(nn.Parameter(torch.zeros(n_scenarios, out_dim)))

    def forward(self, x: torch.Tensor, scen: torch.Tensor) -> torch.Tensor:
        return scenario_matmul(x, self.weight * self.scen_weight, scen) + self.bias + self.scen_bias[scen]


class PartitionedNorm(nn.Module):
    """STAR's partitioned normalisation: z' = (γ·γ_s) (z − μ_s) / sqrt(σ²_s + ε) + (β + β_s).

    Train: μ_s, σ²_s are the (biased) statistics of the batch's rows of scenario s, which also
    update that slot's moving averages (BatchNorm's momentum rule, unbiased variance). A scenario
    with fewer than 2 rows in the batch has no usable batch variance: its rows use the moving
    statistics instead and do not update them. Eval: moving statistics only, so a row's output never
    depends on the rest of its batch. A slot never updated in training (e.g. the unknown scenario)
    falls back to moving statistics over all rows.
    """

    def __init__(self, n_scenarios: int, dim: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.scen_gamma = no_decay(nn.Parameter(torch.ones(n_scenarios, dim)))
        self.scen_beta = no_decay(nn.Parameter(torch.zeros(n_scenarios, dim)))
        self.register_buffer("running_mean", torch.zeros(n_scenarios, dim))
        self.register_buffer("running_var", torch.ones(n_scenarios, dim))
        self.register_buffer("updates", torch.zeros(n_scenarios, dtype=torch.long))  # batches that updated a slot
        self.register_buffer("global_mean", torch.zeros(dim))
        self.register_buffer("global_var", torch.ones(dim))

    def moving_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-slot moving (mean, var) [S, D]; a never-updated slot gets the all-rows moving statistics."""
        seen = (self.updates > 0).unsqueeze(1)
        return (torch.where(seen, self.running_mean, self.global_mean),
                torch.where(seen, self.running_var, self.global_var))

    def forward(self, z: torch.Tensor, scen: torch.Tensor) -> torch.Tensor:
        mean, var = self.moving_stats()
        if self.training:
            mean, var = self._batch_stats(z, scen, mean, var)
        z_hat = (z - mean[scen]) * torch.rsqrt(var[scen] + self.eps)
        return self.gamma * self.scen_gamma[scen] * z_hat + self.beta + self.scen_beta[scen]

    def _batch_stats(self, z: torch.Tensor, scen: torch.Tensor, mean: torch.Tensor, var: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        n = torch.bincount(scen, minlength=mean.shape[0]).unsqueeze(1).to(z.dtype)  # rows per slot [S, 1]
        b_mean = torch.zeros_like(mean).index_add(0, scen, z) / n.clamp(min=1)
        b_var = torch.zeros_like(var).index_add(0, scen, (z - b_mean[scen]) ** 2) / n.clamp(min=1)
        use = n >= 2
        with torch.no_grad():
            m = self.momentum
            unbiased = b_var * n / (n - 1).clamp(min=1)
            self.running_mean.copy_(torch.where(use, (1 - m) * self.running_mean + m * b_mean, self.running_mean))
            self.running_var.copy_(torch.where(use, (1 - m) * self.running_var + m * unbiased, self.running_var))
            self.updates += use.squeeze(1).long()
            if z.shape[0] >= 2:
                self.global_mean.lerp_(z.mean(0), m)
                self.global_var.lerp_(z.var(0), m)
        return torch.where(use, b_mean, mean), torch.where(use, b_var, var)


class MetaLinear(nn.Module):
    """A linear map whose weights are generated from a per-scenario condition (M2M's meta unit).

    For n units (e.g. one per task): W_j(c) = W0_j + reshape(c G_j), b_j(c) = b0_j + c g_j, with c
    the condition of the row's scenario slot. The generator is linear; W0/b0 use nn.Linear's init
    and G is scaled so that c G has about W0's spread for a unit-variance condition.
    """

    def __init__(self, n: int, cond_dim: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.n, self.in_dim, self.out_dim = n, in_dim, out_dim
        bound = 1.0 / math.sqrt(in_dim)
        self.w0 = nn.Parameter(torch.empty(n, in_dim, out_dim).uniform_(-bound, bound))
        self.b0 = no_decay(nn.Parameter(torch.empty(n, out_dim).uniform_(-bound, bound)))
        self.generator = nn.Linear(cond_dim, n * (in_dim + 1) * out_dim, bias=False)
        nn.init.uniform_(self.generator.weight, -bound / math.sqrt(cond_dim), bound / math.sqrt(cond_dim))

    def generate(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cond [S, c] -> weights [S, n, in, out], biases [S, n, out]."""
        g = self.generator(cond).view(cond.shape[0], self.n, self.in_dim + 1, self.out_dim)
        return self.w0 + g[:, :, :-1], self.b0 + g[:, :, -1]

    def forward(self, x: torch.Tensor, cond: torch.Tensor, scen: torch.Tensor) -> torch.Tensor:
        """x [B, n, in]; cond [S, c], one condition per scenario slot -> [B, n, out]."""
        w, b = self.generate(cond)
        return scenario_matmul(x, w, scen) + b[scen]
