"""Dynamic Weight Average (Liu, Johns & Davison, "End-to-end multi-task learning with attention",
CVPR 2019).

    w_t(e) = T * softmax_t(r_t(e - 1) / temperature),   r_t(e - 1) = L_t(e - 1) / L_t(e - 2)

where L_t(e) is task t's mean training loss over epoch e (the trainer's `epoch_end`), and
L = sum_t w_t L_t. Epochs 1 and 2 use w_t = 1 (the paper's initialisation). temperature
defaults to 2 (the paper's value).

Choices where the paper is silent: a task whose epoch-mean loss L_t(e - 2) is 0 (it had no
sample in that epoch) gets r_t = 1, i.e. "no change", instead of dividing by zero; the regulariser
`extra` is added with weight 1.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from polyrec.balance.base import Balancer, BalancerParams, register_balancer
from polyrec.balance.simple import weighted_total


class DWAParams(BalancerParams):
    temperature: float = Field(2.0, gt=0)


@register_balancer("dwa")
class DWABalancer(Balancer):
    Params = DWAParams

    def __init__(self, task_names, params: DWAParams, task_kinds=None) -> None:
        super().__init__(task_names, params, task_kinds)
        self.history: list[torch.Tensor] = []  # the last two epochs' mean losses, oldest first

    def backward(self, losses, extra, shared) -> torch.Tensor:
        total = weighted_total(losses, self.weights.to(losses), extra)
        total.backward()
        return total.detach()

    def epoch_end(self, epoch: int, mean_losses: torch.Tensor) -> None:
        self.history = (self.history + [mean_losses.detach().float().cpu().clone()])[-2:]
        if len(self.history) == 2:
            before, last = self.history
            r = torch.where(before > 0, last / before.clamp_min(1e-12), torch.ones_like(last))
            self.weights = len(self.task_names) * torch.softmax(r / self.params.temperature, 0)

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights.clone(), "history": [h.clone() for h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weights = state["weights"].clone()
        self.history = [h.clone() for h in state["history"]]
