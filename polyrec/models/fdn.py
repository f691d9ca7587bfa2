"""FDN (Zhou et al., "Feature Decomposition for Reducing Negative Transfer: A Novel Multi-task
Learning Method for Recommender System", AAAI 2023 student abstract, arXiv 2302.05031), in the form
used by WAA-TA (docs/specs/waa-ta.md, section 4).

Features are decomposed into task-shared and task-specific parts. For each task k there are M
decomposition pairs (f_s^m, f_p^{k,m}) of extractors over the shared embedding X:
    S_m = f_s^m(X),  P_{k,m} = f_p^{k,m}(X)                     batch matrices [B, D]
    y_k = tower_k([S_1, ..., S_M, P_{k,1}, ..., P_{k,M}])
    L_o   = sum_k sum_m || S_m^T P_{k,m} ||_F^2                 (orthogonality: push the parts apart)
    L_aux = sum_k sum_m loss_k(y_k, head_{k,m}(P_{k,m}))        (each specific part predicts its task)
    L = sum_k loss_k(y_k, tower output) + w_o L_o + w_aux L_aux    (w_o L_o + w_aux L_aux via extra_loss)

Choices where the paper (an abstract) and the spec are silent:
- The M shared extractors are shared by every task: pair (k, m) is (f_s^m, f_p^{k,m}), as the spec's
  L_o indexes f_s by m only (the paper's figure draws a shared expert inside each task's pair).
- Extractors are MLPs (`expert_dims`, activation after the last layer, like MMoE experts); the tower
  of task k reads the concatenation of all M shared features and its own M specific ones (no gate).
- L_o follows the difference loss of Domain Separation Networks (Bousmalis et al. 2016), which this
  constraint comes from, in the form of its reference code: each batch matrix is centred over the
  batch and every row L2-normalised before ||S^T P||_F^2, which is then divided by B^2. Raw products
  grow as B^2 and are minimised by shrinking the features (and, for ReLU features, only zero when no
  sample has both parts active); the normalised form measures cross-correlation, lies in [0, 1] per
  pair, does not grow with B, and is 0 for a batch of one.
- head_{k,m} is one Linear(D, 1); loss_k is BCE-with-logits for binary tasks, MSE for regression,
  averaged over the rows of the task's sample space (like its head), summed over pairs and tasks.
- Both terms exist only for training-mode forwards; weights default to 1 (the spec's L_total).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from polyrec.data.batching import Batch
from polyrec.layers.embedding import InputEmbedding
from polyrec.layers.mlp import ParallelMLP
from polyrec.models.base import ModelParams, MultiTaskModel, register


class FDNParams(ModelParams):
    n_pairs: int = Field(default=2, ge=1)  # M
    expert_dims: list[int] = Field(default=[64], min_length=1)
    tower_dims: list[int] = [32]
    orthogonal: bool = True
    auxiliary: bool = True
    orthogonal_weight: float = Field(default=1.0, ge=0)
    auxiliary_weight: float = Field(default=1.0, ge=0)


def orthogonality(shared: torch.Tensor, specific: torch.Tensor) -> torch.Tensor:
    """sum over pairs of ||S^T P||_F^2 / B^2; shared, specific: [B, K, D] (K pairs), each centred over
    the batch and L2-normalised per row first. 0 iff every shared column is orthogonal to every specific one."""
    s = F.normalize(shared - shared.mean(0), dim=-1)
    p = F.normalize(specific - specific.mean(0), dim=-1)
    return torch.einsum("bkd,bke->kde", s, p).div(s.shape[0]).pow(2).sum()


@register("fdn")
class FDN(MultiTaskModel):
    Params = FDNParams
    deviations = (
        "orthogonality loss on batch-centred, row-normalised parts divided by B^2 (cross-correlation in [0, 1]), not the raw ||S^T P||_F^2",
    )

    def __init__(self, spec, embed_dim, params: FDNParams) -> None:
        super().__init__(spec, embed_dim, params)
        p, t, m = params, self.n_tasks, params.n_pairs
        mlp = dict(dims=p.expert_dims, dropout=p.dropout, act=p.activation, batch_norm=p.batch_norm)
        self.embedding = InputEmbedding(spec, embed_dim, numeric_fields=False)
        self.shared_extractors = ParallelMLP(m, self.embedding.flat_dim, **mlp)  # f_s^m
        self.task_extractors = ParallelMLP(t * m, self.embedding.flat_dim, **mlp)  # f_p^{k,m}, k-major
        d = self.shared_extractors.out_dim
        self.task_aux_heads = ParallelMLP(t * m, d, [], 1)  # head_{k,m}
        self.towers = ParallelMLP(t, 2 * m * d, p.tower_dims, 1, p.dropout, p.activation, p.batch_norm)
        self.not_shared(self.task_extractors, self.task_aux_heads, self.towers)
        self.register_buffer("binary", torch.tensor([x.type == "binary" for x in spec.tasks]), persistent=False)
        names = spec.task_names
        self.spaces = [(k, names.index(x.space)) for k, x in enumerate(spec.tasks) if x.space]
        self._aux_logits: torch.Tensor | None = None  # [B, T, M] of the last training forward

    def forward(self, batch: Batch) -> torch.Tensor:
        p, t, m = self.params, self.n_tasks, self.params.n_pairs
        x = self.embedding.flat(batch)
        s = self.shared_extractors(x)  # [B, M, D]
        b, _, d = s.shape
        sp = self.task_extractors(x).view(b, t, m, d)  # [B, T, M, D]
        train = self.training
        self._aux_loss = p.orthogonal_weight * orthogonality(s.repeat(1, t, 1), sp.view(b, t * m, d)) \
            if train and p.orthogonal else None
        self._aux_logits = self.task_aux_heads(sp.view(b, t * m, d)).view(b, t, m) \
            if train and p.auxiliary else None
        tower_in = torch.cat([s.reshape(b, 1, m * d).expand(b, t, m * d), sp.reshape(b, t, m * d)], dim=-1)
        return self.towers(tower_in).squeeze(-1)  # [B, T]

    def auxiliary_loss(self, aux_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """sum_k sum_m mean over task k's rows of loss_k(y_k, head_{k,m}); aux_logits [B, T, M], labels [B, T]."""
        y = labels.unsqueeze(-1).expand_as(aux_logits)
        per_row = torch.where(self.binary[:, None], F.binary_cross_entropy_with_logits(aux_logits, y, reduction="none"),
                              (aux_logits - y) ** 2)
        mask = torch.ones_like(labels)
        for k, space in self.spaces:
            mask[:, k] = (labels[:, space] == 1).to(mask.dtype)
        mask = mask.unsqueeze(-1)
        return ((per_row * mask).sum(0) / mask.sum(0).clamp(min=1.0)).sum()

    def extra_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        terms = [] if self._aux_loss is None else [self._aux_loss]
        if self._aux_logits is not None:
            terms.append(self.params.auxiliary_weight * self.auxiliary_loss(self._aux_logits, labels))
        return torch.stack(terms).sum() if terms else None

    def last_shared_layer(self) -> nn.Parameter:
        """GradNorm's W: the shared extractors' last layer."""
        return self.shared_extractors.weights[-1]
