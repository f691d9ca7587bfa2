"""KGAT (Wang et al., "KGAT: Knowledge Graph Attention Network for Recommendation", KDD 2019), with
TransD in place of TransR (as WAA-TA, ../shared/docs/specs/waa-ta.md sections 1-2).

encode() propagates the TransD entity embeddings over the CKG with knowledge-aware attention
(polyrec.topk.models.graph); score(u, i) = <v_u*, v_i*>, trained with BPR on the target task;
extra_loss = kg_weight * TransD loss on a fresh random batch of CKG triples. See graph.py for the
choices where the paper is silent (joint rather than alternating training, detached attention).
"""

from __future__ import annotations

import torch
from torch import nn

from polyrec.topk.models.base import DotProductModel, TopKInfo, register_topk, sum_parts
from polyrec.topk.models.graph import GraphEncoder, GraphParams


class KGATParams(GraphParams):
    """Inherited dropout/activation/batch_norm are unused (see message_dropout, propagation_activation)."""


@register_topk("kgat")
class KGAT(DotProductModel):
    Params = KGATParams
    needs_graph = True

    def __init__(self, info: TopKInfo, embed_dim: int, params: KGATParams) -> None:
        super().__init__(info, embed_dim, params)
        self.graph = GraphEncoder(info.graph, embed_dim, params)

    def encode(self) -> torch.Tensor:
        return self.graph()

    def tables(self, cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.graph.users(cache), self.graph.items(cache)

    def extra_loss(self, logits, labels, cache) -> torch.Tensor | None:
        p = self.params
        parts = {"kg": p.kg_weight * self.graph.kg_loss(p.kg_batch_size)} if p.kg_weight > 0 else {}
        return sum_parts(self, parts)

    def last_shared_layer(self) -> nn.Parameter:
        """GradNorm's W: the last propagation layer's W1 (its sum branch)."""
        return self.graph.propagation.layers[-1].sum.weight
