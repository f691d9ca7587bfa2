"""Which parameters every task's loss reaches, declared by module instead of guessed from parameter names.

Gradient balancers (PCGrad, GradNorm, MetaBalance, ...) act on the *shared* parameters. A model says which of
its parts are not shared where it builds them:

    self.towers = ParallelMLP(...)
    self.task_gates = nn.Linear(...)
    self.not_shared(self.towers, self.task_gates)

and `shared_parameters()` is every parameter outside those parts. A part is a module (all its parameters) or
one parameter; `None` is skipped, so an optional part can be passed as is. What is not shared: per-task
towers, gates and experts, modules that serve only some tasks (AITM's transfers), and parameters no loss
reaches (SARNet's unread numeric vectors). The registry-wide contract test checks the other direction:
each task's loss reaches every parameter declared shared.
"""

from __future__ import annotations

from torch import nn


class DeclaresSharing(nn.Module):
    """Mixin for models: `not_shared(...)` in __init__, `shared_parameters()` for the balancers."""

    def not_shared(self, *parts: nn.Module | nn.Parameter | None) -> None:
        """Declare modules / parameters that some task's loss does not reach (may be called several times).

        The parts themselves are kept (not their ids), so a deep copy of the model keeps its declaration."""
        self.__dict__.setdefault("_not_shared_parts", []).extend(p for p in parts if p is not None)

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every task's loss reaches (all but the parts declared `not_shared`), in module order."""
        excluded = {id(p) for part in self.__dict__.get("_not_shared_parts", [])
                    for p in (part.parameters() if isinstance(part, nn.Module) else [part])}
        return [p for p in self.parameters() if id(p) not in excluded]
