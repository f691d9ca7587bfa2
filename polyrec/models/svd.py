"""Biased matrix factorisation, "SVD" (Funk 2006; Koren, Bell & Volinsky, IEEE Computer 2009, eq. 4-5):

    r_hat(u, i) = mu + b_u + b_i + q_i . p_u
    min  sum_{(u,i) in K} (r_ui - r_hat)^2 + lambda (b_u^2 + b_i^2 + |p_u|^2 + |q_i|^2)

trained here on the rows' labels with MSE (regression tasks) or BCE on the same score as a logit (binary tasks).

Choices where the papers are silent (the defaults are scikit-surprise's SVD, so the two can be compared):
- factors: `model.embed_dim` of them (Surprise: 100; set `--set model.embed_dim=100`), initialised
  N(0, init_std = 0.1); biases start at 0; mu is fixed at the training mean of the label (binary tasks: its
  logit; 0 without label statistics), as Koren and Surprise fix it. A learned mu would also be a stability
  limit: its gradient is the batch's mean error, not divided among rows, so SGD with lr >= 1 makes it oscillate.
- L2 with lambda = reg (0.02) on factors and reg_bias (default: reg) on biases, added per *rating* as in the sum
  above (a batch adds reg * mean over its rows of |p_u|^2 + |q_i|^2 + ...): frequent users and items are pulled
  harder, exactly as per-sample SGD (Funk, Surprise) does. train.weight_decay is not used.
- the optimiser is the trainer's (minibatch SGD or Adam, `train.optimizer`, `train.lr`, `train.batch_size`),
  not Funk's per-sample loop; the number of epochs comes from train.epochs and early stopping on validation.
- predictions of a regression head are clipped to the training labels' [min, max] in eval mode only, as
  Surprise clips at prediction time (the loss in training sees the raw value).
- ids unseen in training map to the encoders' out-of-vocabulary row (id 1) like every polyrec model; Surprise
  drops the unknown side's terms instead. In a random k-fold split these are a handful of test rows.
- several tasks (click + like + rating): p_u and q_i are shared; each task has its own mu, b_u, b_i and a
  per-task scale vector on the factor product (starts at 1), r_hat_t = mu_t + b_ut + b_it + (p_u * q_i) . w_t.
  With one task there is no scale vector: it is exactly the model above.
The model reads only the user and item ids (`user_field`, `item_field`; other features are ignored: id_only).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from pydantic import Field
from torch import nn

from polyrec.data.batching import Batch
from polyrec.data.spec import ModelSpec
from polyrec.errors import PolyrecError
from polyrec.layers.decay import no_decay
from polyrec.models.base import ModelParams, MultiTaskModel, register


class SVDParams(ModelParams):
    init_std: float = Field(0.1, gt=0)
    reg: float = Field(0.02, ge=0)  # L2 on p_u, q_i per rating
    reg_bias: float | None = Field(None, ge=0)  # L2 on b_u, b_i per rating; None: same as reg
    clip: bool = True  # clip regression predictions to the training label range (eval only)
    user_field: str = "user_id"
    item_field: str = "item_id"


def id_columns(spec: ModelSpec, params: SVDParams, model: str) -> tuple[int, int]:
    """Column indices of the user and item ids among the categorical fields (one clear error if absent)."""
    fields = spec.categorical_fields
    missing = [f for f in (params.user_field, params.item_field) if f not in fields]
    if missing:
        raise PolyrecError(f"{model} reads the user and item ids from the categorical fields "
                           f"{params.user_field!r} and {params.item_field!r}; {missing[0]!r} is not one of "
                           f"{fields}: set model.user_field / model.item_field.")
    return fields.index(params.user_field), fields.index(params.item_field)


def label_stats(spec: ModelSpec, labels: np.ndarray) -> dict[str, dict[str, float]]:
    """Per task: mean, min and max of the training labels (the start of mu and the clipping range)."""
    out = {}
    for k, t in enumerate(spec.tasks):
        y = np.asarray(labels[:, k], dtype=np.float64)
        if len(y):
            out[t.name] = {"mean": float(y.mean()), "min": float(y.min()), "max": float(y.max())}
    return out


@register("svd")
class SVD(MultiTaskModel):
    Params = SVDParams
    id_only = True
    deviations = ("minibatch training with the trainer's optimiser, not per-sample SGD",
                  "unseen ids use the out-of-vocabulary row instead of dropping their terms")

    @classmethod
    def spec_from_training(cls, spec, params, categorical, labels):
        """Adds the training labels' mean/min/max per task (spec.extra["label_stats"])."""
        id_columns(spec, params, cls.__name__.lower())
        return replace(spec, extra={**spec.extra, "label_stats": label_stats(spec, labels)})

    def __init__(self, spec, embed_dim, params: SVDParams) -> None:
        super().__init__(spec, embed_dim, params)
        self.user_col, self.item_col = id_columns(spec, params, type(self).__name__.lower())
        n_users, n_items, t = spec.vocab_sizes[self.user_col], spec.vocab_sizes[self.item_col], self.n_tasks
        self.user_factors = nn.Embedding(n_users, embed_dim)
        self.item_factors = nn.Embedding(n_items, embed_dim)
        nn.init.normal_(self.user_factors.weight, std=params.init_std)
        nn.init.normal_(self.item_factors.weight, std=params.init_std)
        self.user_bias = nn.Embedding(n_users, t)
        self.item_bias = nn.Embedding(n_items, t)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)
        stats = spec.extra.get("label_stats", {})
        mu, lo, hi = [], [], []
        for task in spec.tasks:
            s = stats.get(task.name)
            if task.type == "regression":
                mu.append(s["mean"] if s else 0.0)
                clip = s is not None and params.clip
                lo.append(s["min"] if clip else -float("inf"))
                hi.append(s["max"] if clip else float("inf"))
            else:  # a logit: start at the positive rate's log-odds
                rate = min(max(s["mean"], 1e-4), 1 - 1e-4) if s else 0.5
                mu.append(float(np.log(rate / (1 - rate))))
                lo.append(-float("inf"))
                hi.append(float("inf"))
        self.register_buffer("global_mean", torch.tensor(mu, dtype=torch.float32))  # fixed, as in Koren / Surprise
        self.register_buffer("low", torch.tensor(lo), persistent=False)
        self.register_buffer("high", torch.tensor(hi), persistent=False)
        self.task_scale = no_decay(nn.Parameter(torch.ones(t, embed_dim))) if t > 1 else None
        self.not_shared(self.user_bias, self.item_bias, self.task_scale)

    def user_vector(self, users: torch.Tensor, p_u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The user's side of the dot product, and a per-row L2 term beyond |p_u|^2 (SVD++ adds its implicit part)."""
        return p_u, None

    def forward(self, batch: Batch) -> torch.Tensor:
        users = batch.categorical[:, self.user_col]
        items = batch.categorical[:, self.item_col]
        p_u, q_i = self.user_factors(users), self.item_factors(items)  # [B, d]
        b_u, b_i = self.user_bias(users), self.item_bias(items)  # [B, T]
        user, extra_sq = self.user_vector(users, p_u)
        product = user * q_i
        dot = product @ self.task_scale.t() if self.task_scale is not None else product.sum(-1, keepdim=True)
        out = self.global_mean + b_u + b_i + dot  # [B, T]
        if self.training:
            p = self.params
            sq = (p_u ** 2).sum(-1) + (q_i ** 2).sum(-1) + (0 if extra_sq is None else extra_sq)
            reg_b = p.reg if p.reg_bias is None else p.reg_bias
            self._aux_loss = p.reg * sq.mean() + reg_b * ((b_u ** 2) + (b_i ** 2)).sum(-1).mean()
            return out
        self._aux_loss = None
        return torch.maximum(torch.minimum(out, self.high), self.low)

    def last_shared_layer(self) -> nn.Parameter:
        """GradNorm's W: the item factors (every task's score goes through q_i)."""
        return self.item_factors.weight
