"""Optimisers with parameter groups: embedding tables get no weight decay unless asked."""

from __future__ import annotations

import torch
from torch import nn

from polyrec.config import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig, extra: list[nn.Parameter] | None = None) -> torch.optim.Optimizer:
    emb_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    emb = [p for p in model.parameters() if id(p) in emb_ids and p.requires_grad]
    rest = [p for p in model.parameters() if id(p) not in emb_ids and p.requires_grad]
    rest += list(extra or [])
    groups = [g for g in (
        {"params": rest, "weight_decay": cfg.weight_decay},
        {"params": emb, "weight_decay": cfg.embedding_weight_decay},
    ) if g["params"]]
    lr = cfg.lr
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr, foreach=True)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, foreach=True)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, foreach=True)
    if cfg.optimizer == "adagrad":
        return torch.optim.Adagrad(groups, lr=lr, foreach=True)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, momentum=cfg.momentum, foreach=True)
    raise ValueError(cfg.optimizer)  # unreachable: validated by TrainConfig
