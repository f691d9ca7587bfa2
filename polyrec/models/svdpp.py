"""SVD++ (Koren, KDD 2008, eq. 15): biased MF plus an implicit-feedback term, the items the user rated:

    r_hat(u, i) = mu + b_u + b_i + q_i . (p_u + |N(u)|^-1/2 sum_{j in N(u)} y_j)

N(u) is the set of items u rated in the *training split* (built once by spec_from_training as CSR offsets over
the encoded user ids and saved in spec.json; validation and test rows never enter it, so nothing leaks).
Everything else is polyrec.models.svd's (initialisation, per-rating L2, clipping, several tasks).

Choices where the paper is silent (again scikit-surprise's SVDpp where it has one):
- y_j ~ N(0, init_std) like the factors; L2 lambda = reg on every y_j of N(u), per rating, as Surprise's
  per-sample loop does (each rating of u pulls all of u's y_j towards 0).
- an item u rated twice counts once in N(u); a user with no training rating (out of vocabulary) has N(u) empty.
- per batch, the implicit sum is computed once per distinct user (torch.unique) and gathered back, one
  index_add over the concatenated N(u) of the batch's users: no Python loop over users.
- without the implicit sets in the spec (a model built from a bare spec, e.g. as a top-K model from id pairs),
  N(u) is empty for everyone and the model is svd; it warns.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from polyrec.models.base import register
from polyrec.models.svd import SVD, SVDParams, id_columns


def implicit_sets(categorical: np.ndarray, user_col: int, item_col: int, n_users: int) -> dict[str, list[int]]:
    """Each user's distinct rated items as CSR: items[offsets[u]:offsets[u+1]] (vectorised, sorted by user)."""
    users = np.asarray(categorical[:, user_col], dtype=np.int64)
    items = np.asarray(categorical[:, item_col], dtype=np.int64)
    n_items = int(items.max()) + 1 if len(items) else 1
    pairs = np.unique(users * n_items + items)  # sorted by user, then item; duplicates counted once
    u, i = pairs // n_items, pairs % n_items
    offsets = np.concatenate([[0], np.cumsum(np.bincount(u, minlength=n_users))])
    return {"offsets": offsets.tolist(), "items": i.tolist()}


@register("svdpp")
class SVDpp(SVD):
    Params = SVDParams
    deviations = (*SVD.deviations, "L2 on y_j per rating as Surprise; the paper leaves the form open")

    @classmethod
    def spec_from_training(cls, spec, params, categorical, labels):
        """svd's label statistics, plus N(u) from the training rows (spec.extra["implicit"])."""
        spec = super().spec_from_training(spec, params, categorical, labels)
        u, i = id_columns(spec, params, "svdpp")
        sets = implicit_sets(categorical, u, i, spec.vocab_sizes[u])
        return replace(spec, extra={**spec.extra, "implicit": {**sets, "user_field": params.user_field,
                                                               "item_field": params.item_field}})

    def __init__(self, spec, embed_dim, params: SVDParams) -> None:
        super().__init__(spec, embed_dim, params)
        n_users, n_items = spec.vocab_sizes[self.user_col], spec.vocab_sizes[self.item_col]
        self.implicit_factors = nn.Embedding(n_items, embed_dim)
        nn.init.normal_(self.implicit_factors.weight, std=params.init_std)
        sets = spec.extra.get("implicit")
        if sets is None:
            warnings.warn("svdpp built without the users' implicit item sets (they come from a CTR-style run's "
                          "training split): N(u) is empty, so this is plain svd.", UserWarning, stacklevel=2)
            sets = {"offsets": [0] * (n_users + 1), "items": []}
            self.not_shared(self.implicit_factors)  # no loss reaches it
        offsets = torch.tensor(sets["offsets"], dtype=torch.int64)
        if len(offsets) != n_users + 1:
            raise ValueError(f"svdpp: implicit sets for {len(offsets) - 1} users, the spec has {n_users}")
        self.register_buffer("implicit_offsets", offsets, persistent=False)
        self.register_buffer("implicit_items", torch.tensor(sets["items"], dtype=torch.int64), persistent=False)
        self._table: torch.Tensor | None = None  # implicit_table()'s cache, and the weights' state it was built from
        self._table_key: tuple[int, int] | None = None

    def implicit_table(self) -> torch.Tensor:
        """[n_users, d]: every user's |N(u)|^-1/2 sum_j y_j, computed once per state of the weights (keyed on the
        factor table's version, so an optimiser step or a load recomputes it). Inference (evaluation, serving, the
        ONNX graph) gathers from it: a fixed-shape lookup instead of per-batch ragged sums. Detached: eval mode
        passes no gradient to the implicit factors."""
        w = self.implicit_factors.weight
        key = (w.data_ptr(), w._version)
        if self._table is None or self._table_key != key:
            w = w.detach()
            sizes = self.implicit_offsets[1:] - self.implicit_offsets[:-1]
            owner = torch.repeat_interleave(torch.arange(len(sizes), device=w.device), sizes)
            sums = w.new_zeros(len(sizes), w.shape[1]).index_add_(0, owner, w[self.implicit_items])
            self._table, self._table_key = sums * sizes.clamp(min=1).to(w.dtype).rsqrt().unsqueeze(1), key
        return self._table

    def user_vector(self, users: torch.Tensor, p_u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """p_u + |N(u)|^-1/2 sum_j y_j, and sum_j |y_j|^2 per row (its L2 term)."""
        if not self.training:  # inference needs no gradient through N(u)
            return p_u + self.implicit_table()[users.to(torch.int64)], None
        distinct, back = torch.unique(users.to(torch.int64), return_inverse=True)
        start = self.implicit_offsets[distinct]
        size = self.implicit_offsets[distinct + 1] - start  # [U]
        owner = torch.repeat_interleave(torch.arange(len(distinct), device=users.device), size)  # [nnz]
        first = torch.cumsum(size, 0) - size
        pos = start[owner] + torch.arange(len(owner), device=users.device) - first[owner]
        y = self.implicit_factors(self.implicit_items[pos])  # [nnz, d]
        sums = p_u.new_zeros(len(distinct), p_u.shape[1]).index_add_(0, owner, y)
        implicit = sums * size.clamp(min=1).to(p_u.dtype).rsqrt().unsqueeze(1)
        sq = p_u.new_zeros(len(distinct)).index_add_(0, owner, (y ** 2).sum(-1)) if self.training else None
        return p_u + implicit[back], None if sq is None else sq[back]
