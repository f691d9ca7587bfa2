"""Balancer interface and registry."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from polyrec.data.schema import validate_params
from polyrec.errors import PolyrecError
from polyrec.utils.registry import Registry


class BalancerParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


TASK_KINDS = ("binary", "regression")


class Balancer:
    """Combines task losses into one backward pass. `weights` is what gets logged and plotted.

    `task_kinds` gives each task's loss type ("binary": BCE, "regression": MSE), in task order;
    None means all binary. Only balancers whose formula depends on it (uncertainty) read it.
    """

    Params: ClassVar[type[BalancerParams]] = BalancerParams
    # computes each task's gradient itself (torch.autograd.grad) and combines them: its result depends on the
    # rows one process sees, so multi-process training (polyrec.train.distributed) refuses it
    per_task_gradients: ClassVar[bool] = False

    def __init__(self, task_names: Sequence[str], params: BalancerParams,
                 task_kinds: Sequence[str] | None = None) -> None:
        self.task_names = list(task_names)
        self.params = params
        kinds = list(task_kinds) if task_kinds is not None else ["binary"] * len(self.task_names)
        if len(kinds) != len(self.task_names):
            raise PolyrecError(f"task_kinds has {len(kinds)} entries for {len(self.task_names)} tasks "
                               f"{self.task_names}")
        bad = sorted({k for k in kinds if k not in TASK_KINDS})
        if bad:
            raise PolyrecError(f"Unknown task kind(s) {bad}; expected one of {list(TASK_KINDS)}")
        self.task_kinds = kinds
        self.weights = torch.ones(len(task_names))

    def parameters(self) -> list[nn.Parameter]:
        """Learnable parameters of the balancer itself (optimised with the model)."""
        return []

    def backward(self, losses: torch.Tensor, extra: torch.Tensor | None,
                 shared: Sequence[nn.Parameter]) -> torch.Tensor:
        """Run backward for losses [T] (+ an extra scalar regulariser); return the combined loss."""
        raise NotImplementedError

    def epoch_end(self, epoch: int, mean_losses: torch.Tensor) -> None:
        """Called after each training epoch with the epoch's mean loss per task (DWA uses it)."""

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weights = state["weights"]


BALANCERS: Registry[type[Balancer]] = Registry("balancer", builtins="polyrec.balance", entry_point_group="polyrec.balancers")


register_balancer: Callable[[str], Callable[[type[Balancer]], type[Balancer]]] = BALANCERS.register


def resolve_name(name: str) -> str:
    """"auto" (a config that names no balancer) is `sum` wherever the model brings none of its own."""
    return "sum" if name == "auto" else name


def balancer_params(name: str, raw: dict[str, Any]) -> BalancerParams:
    """Validated parameters of balancer `name` (unknown names and keys are errors with close matches)."""
    name = resolve_name(name)
    return validate_params(BALANCERS.get(name).Params, raw, f"balance_params for {name!r}")


def build_balancer(name: str, task_names: Sequence[str], params: dict[str, Any],
                   task_kinds: Sequence[str] | None = None) -> Balancer:
    """Balancer `name` for these tasks; `task_kinds` ("binary" | "regression" per task, default all binary)."""
    validated = balancer_params(name, params)  # unknown names and keys fail here, with close matches
    return BALANCERS[resolve_name(name)](task_names, validated, task_kinds=task_kinds)


def balancer_for_heads(name: str, heads: Sequence[Any], params: dict[str, Any]) -> Balancer:
    """Balancer `name` over a model's trained heads, each with its kind (binary / regression), so a formula
    that depends on the loss type (uncertainty weighting's regression form) gets it in a real run."""
    trained = [h for h in heads if h.train]
    return build_balancer(name, [h.name for h in trained], params, task_kinds=[h.kind for h in trained])
