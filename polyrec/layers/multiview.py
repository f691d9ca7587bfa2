"""M3oE's domain- and task-expert views with balanced mixing (Zhang et al., SIGIR 2024).

One expert per unit i (a scenario slot, or a task) reads a shared input; unit i's view is

    bar_i = lambda_i u_i + (1 - lambda_i) / |O(i)| * sum_{j in O(i)} u_j,   lambda_i in (0, 1)

where O(i) are the *other real* units. When O(i) is empty (a single real scenario, a single task)
the others term is dropped and bar_i = lambda_i u_i (what M3oE's code computes then; never a
division by zero). The view enters the fusion scaled by a learnable weight alpha_i.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from polyrec.layers.mlp import ParallelMLP

# lambda = EPS + (1 - 2 EPS) * sigmoid(theta): a float32 sigmoid rounds to exactly 1.0 from theta ~ 17 on,
# which a large learning rate reaches; the squash keeps lambda strictly inside (0, 1) for any theta.
EPS = 1e-4


def others_matrix(real: Sequence[bool]) -> torch.Tensor:
    """[n, n]: row i holds 1/|O(i)| at the real units j != i (O(i)), zeros elsewhere; a zero row when O(i) is empty."""
    n = len(real)
    mask = torch.tensor(real, dtype=torch.bool).unsqueeze(0).expand(n, n) & ~torch.eye(n, dtype=torch.bool)
    counts = mask.sum(1, keepdim=True)
    return mask.float() / counts.clamp(min=1).float()


class BalancedExperts(nn.Module):
    """Experts u_i = MLP_i(x) for n units plus M3oE's balanced mixing and fusion weight.

    `real[i]` says whether unit i counts among the "others" of the rest (False for the
    unknown-scenario slot, which still gets its own expert and mixes in the real units' mean).
    `per_unit`: one lambda and one alpha per unit (True) or one of each shared by all units (False,
    as in M3oE's code). `alpha`: "free" (an unconstrained scalar) or "sigmoid" (in (0, 1), as in
    M3oE's code). Free parameters start at `lambda_init` / `alpha_init` (before any squashing).
    """

    def __init__(self, n: int, in_dim: int, dims: Sequence[int], real: Sequence[bool] | None = None,
                 per_unit: bool = True, alpha: str = "free", lambda_init: float = 1.0, alpha_init: float = 1.0,
                 dropout: float = 0.0, act: str = "relu", batch_norm: bool = False) -> None:
        super().__init__()
        if alpha not in ("free", "sigmoid"):
            raise ValueError(f"alpha must be 'free' or 'sigmoid', not {alpha!r}")
        real = [True] * n if real is None else list(real)
        if len(real) != n:
            raise ValueError(f"real has {len(real)} entries for {n} units")
        self.n, self.alpha_kind = n, alpha
        self.experts = ParallelMLP(n, in_dim, list(dims), None, dropout, act, batch_norm)
        self.out_dim = self.experts.out_dim
        k = n if per_unit else 1
        self.balance_logit = nn.Parameter(torch.full((k,), float(lambda_init)))
        self.alpha_param = nn.Parameter(torch.full((k,), float(alpha_init)))
        self.register_buffer("others", others_matrix(real), persistent=False)

    def balance(self) -> torch.Tensor:
        """lambda for every unit, [n], strictly inside (0, 1)."""
        return (EPS + (1 - 2 * EPS) * torch.sigmoid(self.balance_logit)).expand(self.n)

    def alpha(self) -> torch.Tensor:
        """The fusion weight of every unit, [n]."""
        a = self.alpha_param if self.alpha_kind == "free" else torch.sigmoid(self.alpha_param)
        return a.expand(self.n)

    def mixing(self) -> torch.Tensor:
        """[n, n]: bar = mixing @ u, i.e. diag(lambda) + (1 - lambda) * others (rows of others may be zero)."""
        lam = self.balance()
        return torch.diag(lam) + (1 - lam).unsqueeze(1) * self.others

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, in] -> alpha_i * bar_i for every unit, [B, n, D]."""
        u = self.experts(x)  # [B, n, D]
        weights = self.alpha().unsqueeze(1) * self.mixing()  # row i: alpha_i * (lambda_i e_i + (1 - lambda_i) O_i)
        return torch.einsum("ij,bjd->bid", weights, u)
