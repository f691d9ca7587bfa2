"""GradNorm (Chen et al., "GradNorm: gradient normalization for adaptive loss balancing in deep
multitask networks", ICML 2018).

The model gets the gradient of L = sum_t w_t L_t (+ extra). The weights w_t learn, by their own
Adam (learning rate `lr`), to minimise

    L_grad = sum_t | G_t - mean_G * r_t^alpha |,   G_t = ||grad_W w_t L_t|| = w_t ||grad_W L_t||
    r_t = (L_t / L_t(0)) / mean_j (L_j / L_j(0))        (each task's relative inverse training rate)

with the targets mean_G * r_t^alpha held constant (one target *per task*, as in the paper), then
are renormalised to sum to T. W is `layer`: "last" (default, the paper's choice) = the last shared
weight matrix as the model declares it (`MultiTaskModel.last_shared_layer`: MMoE the last expert layer,
PLE the last level's shared experts, STAR the last shared FCN weight, M3oE/SAPENet the shared experts,
not the per-task ones); "all" = every shared parameter (costlier). alpha defaults to 1.5. Called with a
plain list of parameters (no model behind it), "last" is that list's last weight matrix.

Choices where the paper is silent:
* L_t(0) is task t's loss at the first step where it is non-zero (a task may have no sample in
  the first batch).
* A task with no sample in the batch (loss exactly 0) takes no part in that step's update: it is
  left out of mean_G, of the mean of loss ratios and of L_grad.
* The weights are kept >= 1e-4 before renormalising (an Adam step could make one negative).
* `lr` defaults to 1e-3 (the paper tunes it with the network's); `weights` logs the w_t used
  for the step's model gradient.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from polyrec.balance.base import Balancer, BalancerParams, register_balancer
from polyrec.balance.grads import EPS, task_gradients, trainable
from polyrec.balance.simple import weighted_total
from polyrec.errors import PolyrecError
from polyrec.models.base import SharedParameters

MIN_WEIGHT = 1e-4


class GradNormParams(BalancerParams):
    alpha: float = Field(1.5, ge=0)
    lr: float = Field(1e-3, gt=0)
    layer: Literal["last", "all"] = "last"


def gradnorm_layer(shared: Sequence[nn.Parameter]) -> list[nn.Parameter]:
    """W: the model's declared last shared layer, or for a plain parameter list its last weight matrix."""
    if isinstance(shared, SharedParameters):
        if shared.last_layer is None:
            raise PolyrecError("gradnorm needs a layer shared by every task, and this model shares none "
                               "(singletask): use another --balance.")
        return [shared.last_layer]
    return last_shared_layer(shared)


def last_shared_layer(shared: Sequence[nn.Parameter]) -> list[nn.Parameter]:
    """The last weight matrix among `shared` (list order): >= 2 dims and not bias-shaped [..., 1, d]."""
    params = trainable(shared)
    matrices = [p for p in params if p.dim() >= 2 and p.shape[-2] > 1]
    return matrices[-1:] if matrices else params[-1:]


@register_balancer("gradnorm")
class GradNormBalancer(Balancer):
    per_task_gradients = True
    Params = GradNormParams

    def __init__(self, task_names, params: GradNormParams, task_kinds=None) -> None:
        super().__init__(task_names, params, task_kinds)
        n = len(self.task_names)
        self.w = nn.Parameter(torch.ones(n))
        self.optimizer = torch.optim.Adam([self.w], lr=params.lr)
        self.initial = torch.zeros(n)  # L_t(0)
        self.seen = torch.zeros(n, dtype=torch.bool)
        self.targets = torch.zeros(n)  # the last step's per-task targets (for inspection and tests)

    def backward(self, losses, extra, shared) -> torch.Tensor:
        n = losses.shape[0]
        loss = losses.detach().float().cpu()
        new = ~self.seen & (loss > 0)
        self.initial = torch.where(new, loss, self.initial)
        self.seen = self.seen | new
        weights = self.w.detach().clone()
        total = weighted_total(losses, weights.to(losses), extra)
        if self.params.layer == "last":  # a short pass per task down to W, then the ordinary backward
            raw_norms = task_gradients(losses, gradnorm_layer(shared)).norms()
            total.backward()
        else:  # W = all shared parameters: the per-task passes also give every gradient of sum_t w_t L_t
            with_extra = extra is not None and extra.requires_grad
            rows = torch.cat([losses, extra.reshape(1)]) if with_extra else losses
            coef = torch.cat([weights, torch.ones(1)]) if with_extra else weights
            grads = task_gradients(rows, shared, rest_weights=coef.to(losses))
            raw_norms = torch.linalg.vector_norm(grads.flat[:n], dim=1)
            grads.write(coef.to(grads.flat) @ grads.flat)
        raw_norms = raw_norms.detach().float().cpu()  # ||grad_W L_t||
        self.weights = weights

        present = self.seen & (loss > 0)
        if present.any():
            norms = self.w * raw_norms  # G_t, differentiable in w only
            loss_ratio = torch.where(present, loss / self.initial.clamp_min(EPS), torch.zeros_like(loss))
            rate = loss_ratio / loss_ratio[present].mean().clamp_min(EPS)
            self.targets = (norms.detach()[present].mean() * rate.pow(self.params.alpha)).where(present, 0.0)
            grad_loss = (norms - self.targets).abs()[present].sum()
            self.optimizer.zero_grad(set_to_none=True)
            grad_loss.backward()
            self.optimizer.step()
        with torch.no_grad():
            self.w.clamp_(min=MIN_WEIGHT)
            self.w.mul_(n / self.w.sum())
        return total.detach()

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights.clone(), "w": self.w.detach().clone(),
                "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                "initial": self.initial.clone(), "seen": self.seen.clone(), "targets": self.targets.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weights = state["weights"].clone()
        with torch.no_grad():
            self.w.copy_(state["w"])
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.initial = state["initial"].clone()
        self.seen = state["seen"].clone()
        self.targets = state["targets"].clone()
