"""Model base class, output heads and the by-name registry.

A model maps a Batch to logits [B, H], one column per output head. By default there is one head
per task; a model may add heads (ESMM's CVR on the clicked space) or mark some as not trained.
The trainer, metrics and predictor only ever look at heads, never at model classes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from polyrec.data.batching import Batch
from polyrec.data.schema import validate_params
from polyrec.data.spec import Head, ModelSpec
from polyrec.models.sharing import DeclaresSharing
from polyrec.utils.registry import Registry


class ModelParams(BaseModel):
    """Base for each model's hyper-parameters; unknown keys are errors.

    Every integer parameter (a count or a size, alone or in a list of layer sizes) must be >= 1, so
    `n_experts=-2` is a config error naming the key instead of a "negative dimension" deep in torch;
    a model whose integer may legitimately be 0 lists it in `may_be_zero`. Rates lie in [0, 1)."""

    model_config = ConfigDict(extra="forbid")
    may_be_zero: ClassVar[tuple[str, ...]] = ()
    dropout: float = Field(0.0, ge=0, lt=1)
    activation: str = "relu"
    batch_norm: bool = False  # in experts/towers only; never in gates

    @model_validator(mode="after")
    def _sizes_positive(self) -> "ModelParams":
        for name in type(self).model_fields:
            value = getattr(self, name)
            values = value if isinstance(value, (list, tuple)) else [value]
            ints = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
            least = 0 if name in self.may_be_zero else 1
            if any(v < least for v in ints):
                raise ValueError(f"{name}={value}: {'counts and sizes' if least else 'this value'} must be "
                                 f">= {least}")
        return self


class MultiTaskModel(DeclaresSharing):
    """Base class. Subclasses set `Params`, build layers in __init__ (declaring with `not_shared(...)` the parts
    some task's loss does not reach: towers, task gates, ...; see polyrec.models.sharing) and implement forward."""

    Params: ClassVar[type[ModelParams]] = ModelParams
    # the loss form of the model's paper, used when train.loss_reduction is auto: "task" (each head's mean over
    # the batch) or "scenario_task" (the sum over scenarios of each scenario's mean)
    default_loss_reduction: ClassVar[str] = "task"
    # choices that change numbers against the model's paper (or the authors' release): one sentence each,
    # printed under every bench table that has the model (the docstring explains them at length)
    deviations: ClassVar[tuple[str, ...]] = ()
    # True for models that by design read only the user and item ids (matrix factorisation: svd, svdpp); the
    # contract tests then check that the other inputs do not change the output instead of that they do
    id_only: ClassVar[bool] = False

    @classmethod
    def spec_from_training(cls, spec: ModelSpec, params: ModelParams, categorical: np.ndarray,
                           labels: np.ndarray) -> ModelSpec:
        """The spec with what this model needs from the training split (and only from it) in `spec.extra`:
        label statistics, each user's rated items, ... It is saved with the run (spec.json), so a reloaded or
        exported model needs no data. `categorical` [N, F_cat] and `labels` [N, T] are the encoded training rows.
        Default: the spec unchanged."""
        return spec

    def __init__(self, spec: ModelSpec, embed_dim: int, params: ModelParams) -> None:
        super().__init__()
        self.spec = spec
        self.embed_dim = embed_dim
        self.params = params
        self.heads: list[Head] = [Head(t.name, t.name, t.type, t.space) for t in spec.tasks]
        self._aux_loss: torch.Tensor | None = None
        self._gates: dict[str, torch.Tensor] | None = None  # filled only while recording

    def record_gate(self, name: str, weights: torch.Tensor) -> None:
        """Keep a gate's softmax weights [B, G, E] (G gates, e.g. tasks; E experts) for reports.

        Costs nothing unless a caller enabled recording (see polyrec.train.gates)."""
        if self._gates is not None:
            self._gates[name] = weights.detach()

    @property
    def n_tasks(self) -> int:
        return len(self.spec.tasks)

    @property
    def task_names(self) -> list[str]:
        """Label columns in order (a head's `task` indexes into these)."""
        return self.spec.task_names

    def epoch_start(self) -> None:
        """Called by the training loop before every epoch; nothing by default."""

    def forward(self, batch: Batch) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """A scalar added to the task losses: regularisers stored during forward (`self._aux_loss`,
        e.g. orthogonality) or label-dependent terms (calibrators, counterfactual regularisers).
        `labels` is [B, T] in task order. Default: the stored regulariser, or None."""
        return self._aux_loss

    def last_shared_layer(self) -> nn.Parameter | None:
        """The last weight matrix every task's loss passes through: GradNorm's W (Chen et al. normalise the
        gradients there). Each model declares its own (a registry-wide test checks it is shared, is a matrix
        and is reached by every task); None for a model that shares nothing."""
        raise NotImplementedError(f"{type(self).__name__} does not declare last_shared_layer()")


class SharedParameters(list):
    """The parameters every task's loss reaches, carrying the model's declared last shared layer, so a
    balancer that needs one layer (GradNorm) never guesses it from parameter order or shape."""

    def __init__(self, params: list[nn.Parameter], last_layer: nn.Parameter | None = None) -> None:
        super().__init__(params)
        self.last_layer = last_layer


MODELS: Registry[type[MultiTaskModel]] = Registry("model", builtins="polyrec.models", entry_point_group="polyrec.models")


register: Callable[[str], Callable[[type[MultiTaskModel]], type[MultiTaskModel]]] = MODELS.register


def model_params(name: str, raw: dict[str, Any]) -> ModelParams:
    """Validated parameters of model `name` (unknown names and keys are errors with close matches)."""
    return validate_params(get_model_class(name).Params, raw, f"parameters for model {name!r}")


def get_model_class(name: str) -> type[MultiTaskModel]:
    return MODELS.get(name)


def build_model(name: str, spec: ModelSpec, embed_dim: int, params: dict[str, Any]) -> MultiTaskModel:
    cls = get_model_class(name)
    return cls(spec, embed_dim, model_params(name, params))
