"""Matrix factorisation trained with BPR (Rendle et al., "BPR: Bayesian Personalized Ranking from
Implicit Feedback", UAI 2009): score(u, i) = <p_u, q_i>.

Choices: Xavier-uniform initialisation (as KGAT's released BPRMF baseline); no L2 term inside the
model (BPR's lambda): use the optimiser's weight decay.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from polyrec.models.base import ModelParams
from polyrec.topk.models.base import DotProductModel, TopKInfo, register_topk


class MFParams(ModelParams):
    """Inherited dropout/activation/batch_norm are unused by MF."""


@register_topk("mf")
class MF(DotProductModel):
    Params = MFParams

    def __init__(self, info: TopKInfo, embed_dim: int, params: MFParams) -> None:
        super().__init__(info, embed_dim, params)
        self.user = nn.Embedding(info.n_users, embed_dim)
        self.item = nn.Embedding(info.n_items, embed_dim)
        nn.init.xavier_uniform_(self.user.weight)
        nn.init.xavier_uniform_(self.item.weight)

    def tables(self, cache: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user.weight, self.item.weight

    def last_shared_layer(self) -> nn.Parameter:
        """GradNorm's W: the item table (one pairwise head; users and items meet only in the dot product)."""
        return self.item.weight
