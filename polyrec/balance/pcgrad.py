"""PCGrad, projecting conflicting gradients (Yu et al., "Gradient surgery for multi-task
learning", NeurIPS 2020).

On the shared parameters, with g_t task t's gradient (flattened):

    for each task i:  g_i' = g_i;  for each j != i in random order:
        if g_i' . g_j < 0:  g_i' -= (g_i' . g_j) / ||g_j||^2 * g_j
    shared gradient = sum_i g_i'

Every other parameter gets its ordinary gradient of sum_t L_t (+ extra).

Choices where the paper is silent:
* Each task i draws its own order of the other tasks (as the authors' code does), from a torch
  generator seeded with `seed`; its state is in `state_dict`, so a resumed run projects in the
  same orders. Projections use the *original* g_j, as in the paper's algorithm.
* The model's regulariser `extra` is not a task: its gradient is added unprojected.
* `weights` logs ||g_i'|| / ||g_i|| (1 for a task whose gradient is zero, e.g. no sample).
"""

from __future__ import annotations

from typing import Any

import torch

from polyrec.balance.base import Balancer, BalancerParams, register_balancer
from polyrec.balance.grads import EPS, ratio, task_gradients


class PCGradParams(BalancerParams):
    seed: int = 0


def project_conflicts(g: torch.Tensor, orders: list[list[int]]) -> torch.Tensor:
    """PCGrad on rows of g [T, P]: orders[i] lists the tasks j that task i is projected against, in order."""
    sq = (g * g).sum(1).clamp_min(EPS)
    out = g.clone()
    for i, order in enumerate(orders):
        gi = out[i]
        for j in order:
            dot = torch.dot(gi, g[j])
            if dot < 0:
                gi -= (dot / sq[j]) * g[j]
    return out


@register_balancer("pcgrad")
class PCGradBalancer(Balancer):
    per_task_gradients = True
    Params = PCGradParams

    def __init__(self, task_names, params: PCGradParams, task_kinds=None) -> None:
        super().__init__(task_names, params, task_kinds)
        self.generator = torch.Generator().manual_seed(params.seed)

    def _orders(self, n: int) -> list[list[int]]:
        return [[j for j in torch.randperm(n, generator=self.generator).tolist() if j != i] for i in range(n)]

    def backward(self, losses, extra, shared) -> torch.Tensor:
        n = losses.shape[0]
        with_extra = extra is not None and extra.requires_grad
        rows = torch.cat([losses, extra.reshape(1)]) if with_extra else losses
        grads = task_gradients(rows, shared, rest_weights=torch.ones(len(rows)))  # the rest: grad of the sum
        g = grads.flat[:n]
        projected = project_conflicts(g, self._orders(n))
        combined = projected.sum(0)
        if with_extra:
            combined = combined + grads.flat[n]
        grads.write(combined)
        total = losses.sum() + extra if extra is not None else losses.sum()
        self.weights = ratio(torch.linalg.vector_norm(projected, dim=1), torch.linalg.vector_norm(g, dim=1)).cpu()
        return total.detach()

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights.clone(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weights = state["weights"].clone()
        self.generator.set_state(state["generator"])
