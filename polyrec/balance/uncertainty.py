"""Uncertainty weighting (Kendall, Gal & Cipolla, "Multi-task learning using uncertainty to weigh
losses for scene geometry and semantics", CVPR 2018).

Each task t has a learnable log-variance s_t = log sigma_t^2 (initial value `init`, default 0),
optimised with the model. With L_t the task's mean loss:

    regression (MSE, Gaussian likelihood):          0.5 * exp(-s_t) * L_t + 0.5 * s_t
    binary (BCE, Boltzmann likelihood, temperature  exp(-s_t) * L_t + 0.5 * s_t
            sigma^2; the paper's approximation):

i.e. 1/(2 sigma^2) L + log sigma and 1/sigma^2 L + log sigma. The task types come from
`task_kinds` (default: all binary).

Choices where the paper is silent:
* s_t is *not* clamped (peer code clamps it, which silently stops the weighting from adapting).
* A task with no sample in the batch (its loss arrives as exactly 0) contributes nothing that
  step, its 0.5 * s_t term included: the term is the likelihood's normaliser, one per
  observation, and keeping it would push s_t down on every batch that lacks the task.
* `weights` logs the effective loss weights: exp(-s_t) (binary), 0.5 * exp(-s_t) (regression).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from polyrec.balance.base import Balancer, BalancerParams, register_balancer


class UncertaintyParams(BalancerParams):
    init: float = 0.0  # initial log-variance s_t of every task


@register_balancer("uncertainty")
class UncertaintyBalancer(Balancer):
    Params = UncertaintyParams

    def __init__(self, task_names, params: UncertaintyParams, task_kinds=None) -> None:
        super().__init__(task_names, params, task_kinds)
        self.log_var = nn.Parameter(torch.full((len(self.task_names),), float(params.init)))
        self.scale = torch.tensor([0.5 if k == "regression" else 1.0 for k in self.task_kinds])

    @property
    def weights(self) -> torch.Tensor:
        """The current effective loss weights c_t exp(-s_t) (derived from s, so never stale)."""
        return (self.scale * torch.exp(-self.log_var.detach())).cpu()

    @weights.setter
    def weights(self, value: torch.Tensor) -> None:  # the base class assigns ones; s decides instead
        pass

    def parameters(self) -> list[nn.Parameter]:
        return [self.log_var]

    def objective(self, losses: torch.Tensor) -> torch.Tensor:
        """sum_t [c_t exp(-s_t) L_t + 0.5 s_t] over the tasks present in the batch (c = 1 binary, 0.5 regression)."""
        present = losses.detach() != 0
        s = self.log_var.to(losses)
        # an absent task sees s = 0, a constant: its term is 0 * 1 + 0 = 0, s_t gets no gradient, and no
        # overflowing exp(-s) can meet its zero loss gradient (inf * 0 = NaN)
        s = torch.where(present, s, torch.zeros_like(s))
        return (self.scale.to(losses) * torch.exp(-s) * losses + 0.5 * s).sum()

    def backward(self, losses, extra, shared) -> torch.Tensor:
        total = self.objective(losses)
        if extra is not None:
            total = total + extra
        total.backward()
        return total.detach()

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights.clone(), "log_var": self.log_var.detach().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():  # in place: the trainer's optimiser holds this very Parameter
            self.log_var.copy_(state["log_var"])
