"""MetaBalance (He et al., "MetaBalance: improving multi-task recommendations via adapting
gradient magnitudes of auxiliary tasks", WWW 2022); ../shared/docs/specs/waa-ta.md section 5.

On the shared parameters theta only, at every step, with G_tar the target task's gradient and
G_j auxiliary task j's:

    m_tar <- beta m_tar + (1 - beta) ||G_tar||,   m_j <- beta m_j + (1 - beta) ||G_j||
    G_j   <- r * G_j * (m_tar / m_j) + (1 - r) * G_j          (relax factor r)
    grad_theta = G_tar + sum_j G_j

so the adapted G_j has norm ||G_j|| (r m_tar / m_j + 1 - r). `mode`: "all" adapts every
auxiliary gradient; "larger" only those with m_j > m_tar; "smaller" only those with m_j < m_tar
(the others keep their raw gradient). Every non-shared parameter gets its ordinary gradient of
sum_t L_t (+ extra). Defaults: beta 0.9, r 0.7, mode "all", target = the first task.

Choices where the paper is silent or its code differs from its text:
* `target` may name several tasks; their losses are summed into one target loss. The model's
  extra losses (`extra`: orthogonality, auxiliary heads, TransD, ...) are their own term: their
  gradient is added unscaled and is no part of G_tar, so m_tar measures the target task alone.
  (Until 2026-12 `extra` was added to the target loss; on WAA-TA the TransD and regulariser terms
  then dominated ||G_tar|| and click's gradient was scaled x192 instead of x8 on the first step.)
* `norm`: "global" (default, the spec's formula) takes ||.|| over all shared parameters at once;
  "parameter" keeps one moving average per shared parameter tensor and rescales each separately,
  as the authors' released optimiser does.
* Moving averages start at 0 (as in the authors' code). The bias this causes cancels in
  m_tar / m_j, because every average has been updated the same number of times, except that an
  average is *not* updated on a step where its gradient is exactly zero (a task with no sample in
  the batch), so a missing task does not drag its average down. An auxiliary gradient is adapted
  only once both averages are positive.
* "larger"/"smaller" compare the moving averages (the quantities the rescaling uses).
* `weights` logs ||adapted G_j|| / ||G_j|| per auxiliary task (1 for targets and zero gradients).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from polyrec.balance.base import Balancer, BalancerParams, register_balancer
from polyrec.balance.grads import EPS, ratio, task_gradients
from polyrec.errors import PolyrecError, close_matches


class MetaBalanceParams(BalancerParams):
    target: str | list[str] | None = None  # default: the first task
    beta: float = Field(0.9, ge=0, lt=1)
    relax: float = Field(0.7, ge=0, le=1)
    mode: Literal["all", "larger", "smaller"] = "all"
    norm: Literal["global", "parameter"] = "global"


@register_balancer("metabalance")
class MetaBalanceBalancer(Balancer):
    per_task_gradients = True
    Params = MetaBalanceParams

    def __init__(self, task_names, params: MetaBalanceParams, task_kinds=None) -> None:
        super().__init__(task_names, params, task_kinds)
        names = self.task_names
        targets = [params.target] if isinstance(params.target, str) else list(params.target or names[:1])
        for t in targets:
            if t not in names:
                raise PolyrecError(f"metabalance target {t!r} is not a trained task.{close_matches(t, names)} "
                                   f"Tasks: {names}")
        if not targets:
            raise PolyrecError("metabalance needs at least one target task")
        self.target_idx = [names.index(t) for t in dict.fromkeys(targets)]
        self.aux_idx = [i for i in range(len(names)) if i not in self.target_idx]
        self.averages: torch.Tensor | None = None  # [1 + A, S]: target first, then the auxiliary tasks

    def backward(self, losses, extra, shared) -> torch.Tensor:
        p = self.params
        target_loss = losses[self.target_idx].sum()
        with_extra = extra is not None and extra.requires_grad
        rows = torch.cat([target_loss.reshape(1), losses[self.aux_idx], *([extra.reshape(1)] if with_extra else [])])
        grads = task_gradients(rows, shared, rest_weights=torch.ones(len(rows)))  # the rest: grad of the sum
        n_tasks = 1 + len(self.aux_idx)
        g = grads.flat  # [1 + A (+ 1 for extra), P]
        if p.norm == "global":
            segments, norms = [slice(0, g.shape[1])], grads.norms().unsqueeze(1)
        else:
            segments, norms = grads.segments(), grads.segment_norms()
        norms = norms[:n_tasks].detach()
        if self.averages is None or self.averages.shape != norms.shape:
            self.averages = torch.zeros_like(norms)
        self.averages = torch.where(norms > 0, p.beta * self.averages + (1 - p.beta) * norms, self.averages)
        m_tar, m_aux = self.averages[:1], self.averages[1:]
        scale = p.relax * m_tar / m_aux.clamp_min(EPS) + (1 - p.relax)  # [A, S]
        adapt = (m_tar > 0) & (m_aux > 0)
        if p.mode == "larger":
            adapt &= m_aux > m_tar
        elif p.mode == "smaller":
            adapt &= m_aux < m_tar
        scale = torch.where(adapt, scale, torch.ones_like(scale))
        adapted = g[1:n_tasks].clone()
        for k, seg in enumerate(segments):
            adapted[:, seg] *= scale[:, k:k + 1]
        grads.write(g[0] + adapted.sum(0) + (g[n_tasks] if with_extra else 0))

        total = losses.sum() + extra if extra is not None else losses.sum()
        weights = torch.ones(len(self.task_names))
        weights[self.aux_idx] = ratio(torch.linalg.vector_norm(adapted, dim=1),
                                      torch.linalg.vector_norm(g[1:n_tasks], dim=1)).float().cpu()
        self.weights = weights
        self.last_scale = scale  # [A, S], for inspection and tests
        return total.detach()

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights.clone(),
                "averages": self.averages.clone() if self.averages is not None else torch.zeros(0)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weights = state["weights"].clone()
        avg = state["averages"]
        self.averages = avg.clone() if avg.numel() else None
