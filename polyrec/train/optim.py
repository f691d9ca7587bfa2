"""Optimisers with parameter groups.

Weight decay applies to weight matrices only (polyrec.layers.decay): never to biases, normalisation and
scenario scales, multiplicative scenario weights, scenario/task embedding vectors, mixing scalars or a
balancer's own parameters. Embedding tables get no weight decay unless asked (`train.embedding_weight_decay`). Large tables
(or any, with `train.sparse_embeddings: true`) get sparse gradients and a lazy optimiser
(SparseAdam / sparse Adagrad / SGD): a step touches only the rows in the batch, instead of
decaying every row's Adam moments on every step as a dense optimiser does.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from polyrec.config import TrainConfig
from polyrec.errors import PolyrecError
from polyrec.layers.decay import decayed

SPARSE_AUTO_ROWS = 100_000  # "auto": sparse from this many embedding rows on


class CombinedOptimizer:
    """Several optimisers stepped together (dense parameters + sparse embedding tables)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for o in self.optimizers for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def state_dict(self) -> dict[str, Any]:
        return {str(i): o.state_dict() for i, o in enumerate(self.optimizers)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for i, o in enumerate(self.optimizers):
            o.load_state_dict(state[str(i)])


def _dense(groups: list[dict[str, Any]], cfg: TrainConfig) -> torch.optim.Optimizer:
    lr = cfg.lr
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr, foreach=True)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, foreach=True)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, foreach=True)
    if cfg.optimizer == "adagrad":
        return torch.optim.Adagrad(groups, lr=lr, foreach=True)
    return torch.optim.RMSprop(groups, lr=lr, momentum=cfg.momentum, foreach=True)


def _sparse(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.embedding_weight_decay:
        raise PolyrecError("train.embedding_weight_decay needs dense embeddings: set train.sparse_embeddings=false.")
    if cfg.optimizer in ("adam", "adamw"):
        return torch.optim.SparseAdam(params, lr=cfg.lr)
    if cfg.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=cfg.lr)
    if cfg.optimizer == "sgd" and cfg.momentum == 0:
        return torch.optim.SGD(params, lr=cfg.lr)
    raise PolyrecError(f"train.optimizer={cfg.optimizer} has no sparse variant here; "
                       "set train.sparse_embeddings=false.")


def embedding_modules(model: nn.Module) -> list[nn.Embedding]:
    return [m for m in model.modules() if isinstance(m, nn.Embedding)]


def use_sparse(model: nn.Module, cfg: TrainConfig) -> bool:
    if cfg.sparse_embeddings == "auto":
        rows = sum(m.num_embeddings for m in embedding_modules(model))
        return rows >= SPARSE_AUTO_ROWS and cfg.optimizer in ("adam", "adamw", "adagrad") \
            and not cfg.embedding_weight_decay
    return cfg.sparse_embeddings is True


def build_optimizer(model: nn.Module, cfg: TrainConfig,
                    extra: list[nn.Parameter] | None = None) -> torch.optim.Optimizer | CombinedOptimizer:
    embeddings = embedding_modules(model)
    emb_ids = {id(m.weight) for m in embeddings}
    emb = [m.weight for m in embeddings if m.weight.requires_grad]
    rest = [p for p in model.parameters() if id(p) not in emb_ids and p.requires_grad]
    decay = [p for p in rest if decayed(p)]
    plain = [p for p in rest if not decayed(p)] + list(extra or [])  # balancer weights / log-variances: never
    if cfg.optimizer == "adamw" and not (cfg.weight_decay or cfg.embedding_weight_decay):
        # AdamW differs from Adam only by its decoupled decay: without one, a comparison of the two compares nothing
        warnings.warn("train.optimizer=adamw with no weight decay is exactly Adam; set train.weight_decay "
                      "(PyTorch's AdamW default is 0.01).", UserWarning, stacklevel=2)
    sparse = use_sparse(model, cfg)
    for m in embeddings:
        m.sparse = sparse  # read at lookup time by the input layer
    dense = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    if sparse:
        return CombinedOptimizer([_dense([g for g in dense if g["params"]], cfg), _sparse(emb, cfg)])
    groups = [g for g in (*dense, {"params": emb, "weight_decay": cfg.embedding_weight_decay}) if g["params"]]
    return _dense(groups, cfg)


def decayed_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters `train.weight_decay` applies to (for tests and `polyrec models list`)."""
    emb_ids = {id(m.weight) for m in embedding_modules(model)}
    return [n for n, p in model.named_parameters() if id(p) not in emb_ids and decayed(p)]
