"""Loss-level balancers: plain sum and fixed per-task weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from polyrec.balance.base import Balancer, BalancerParams, register_balancer
from polyrec.errors import PolyrecError


def weighted_total(losses: torch.Tensor, weights: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
    total = (losses * weights).sum()
    return total + extra if extra is not None else total


@register_balancer("sum")
class SumBalancer(Balancer):
    """L = sum_t L_t: every task weighted 1 (no averaging, so adding a task does not rescale others)."""

    def backward(self, losses, extra, shared: Sequence[nn.Parameter]) -> torch.Tensor:
        total = weighted_total(losses, self.weights.to(losses), extra)
        total.backward()
        return total.detach()


class FixedParams(BalancerParams):
    weights: dict[str, float]


@register_balancer("fixed")
class FixedBalancer(Balancer):
    """L = sum_t w_t L_t with user-given weights (tasks not named keep weight 1)."""

    Params = FixedParams

    def __init__(self, task_names, params: FixedParams, task_kinds=None) -> None:
        super().__init__(task_names, params, task_kinds)
        unknown = sorted(set(params.weights) - set(task_names))
        if unknown:
            raise PolyrecError(f"fixed balancer weights name unknown tasks {unknown}; tasks are {task_names}")
        self.weights = torch.tensor([params.weights.get(t, 1.0) for t in task_names], dtype=torch.float32)

    def backward(self, losses, extra, shared) -> torch.Tensor:
        total = weighted_total(losses, self.weights.to(losses), extra)
        total.backward()
        return total.detach()
