"""The graph encoder shared by kgat and waata: TransD embeddings of the collaborative knowledge graph
(CKG) + knowledge-aware attention + bi-interaction propagation (../shared/docs/specs/waa-ta.md
sections 1-2; Wang et al., KGAT, KDD 2019; Ji et al., TransD, ACL 2015).

Choices where the spec and papers are silent:
- Attention is recomputed once per training epoch (`attention_refresh="epoch"`, as KGAT's code updates
  its attentive Laplacian after each epoch) and at every evaluation, from the current TransD
  parameters; `attention_refresh="step"` recomputes it at every training step (about 1/3 more time a
  step on MovieLens-100K's CKG). As in KGAT's code, it carries no gradient by default (`attention_grad=False`): the
  attention's parameters (v_ep, v_r, v_rp) learn through the TransD loss only, and the
  recommendation loss trains the embeddings and propagation layers. `attention_grad=True` backpropagates
  the recommendation loss through the attention too (costlier: a backward pass over E x z edges).
- The TransD loss is trained jointly with the recommendation loss (summed, weight `kg_weight`),
  where KGAT alternates the two phases; each step draws `kg_batch_size` triples uniformly from every
  CKG edge (interactions and their inverses included, as KGAT's `all_kg_dict`) and corrupts each tail
  with a uniformly drawn entity (KGAT re-draws corruptions that happen to be true triples; at
  E << N^2 such a draw is rare and only adds noise, so we do not check).
- Layer sizes default to KGAT's first two ([64, 32]): 2 propagation layers, output
  d + 64 + 32 dims per entity with `combine="concat"`, d = model.embed_dim (the config's default 16, with
  which the committed top-K benches ran; KGAT's paper uses 64: `--set model.embed_dim=64`).
- Message dropout 0.1 (KGAT's default), applied after each bi-interaction layer.
- The bi-interaction biases start at 0 (`propagation_bias_init="zero"`; KGAT's code and torch's default
  draw them at random, `"default"`): with Xavier-initialised tables over tens of thousands of entities the
  random biases dominate the tiny entity vectors and, after the per-layer normalisation, every entity starts
  with nearly the same layer-1/2 vector (see polyrec.layers.kg.BiInteraction for the measured shares).
  `layer_shares()` reports the across-entity share of each block's energy.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, PositiveInt
from torch import nn

from polyrec.layers.kg import KGPropagation, KnowledgeAttention, TransD, across_entity_share
from polyrec.models.base import ModelParams
from polyrec.data.interactions import KnowledgeGraph


class GraphParams(ModelParams):
    relation_dim: int | None = Field(default=None, ge=1)  # z; default: embed_dim
    layer_dims: list[PositiveInt] = Field(default=[64, 32])  # one entry per propagation layer
    message_dropout: float = Field(default=0.1, ge=0, lt=1)
    propagation_activation: Literal["relu", "leaky_relu"] = "relu"
    combine: Literal["concat", "last"] = "concat"
    attention_grad: bool = False
    attention_refresh: Literal["epoch", "step"] = "epoch"  # ignored (every step) when attention_grad
    kg_weight: float = Field(default=1.0, ge=0)
    kg_batch_size: int = Field(default=1024, ge=1)
    propagation_bias_init: Literal["zero", "default"] = "zero"


class GraphEncoder(nn.Module):
    """encode() -> entity representations v* [n_entities, out_dim]; users/items are rows of it."""

    def __init__(self, graph: KnowledgeGraph, dim: int, p: GraphParams) -> None:
        super().__init__()
        self.n_entities, self.user_offset = graph.n_entities, graph.user_offset
        self.n_users, self.n_items = graph.n_users, graph.n_items
        self.transd = TransD(graph.n_entities, graph.n_relations, dim, p.relation_dim)
        self.attention = KnowledgeAttention()
        self.propagation = KGPropagation(dim, p.layer_dims, p.message_dropout, p.propagation_activation,
                                         p.combine, p.propagation_bias_init)
        self.out_dim = self.propagation.out_dim
        self.attention_grad = p.attention_grad
        self.reuse_attention = p.attention_refresh == "epoch" and not p.attention_grad
        self._train_weights: torch.Tensor | None = None  # this epoch's attention (training mode only)
        # edges sorted by (head, tail) for memory locality; rebuilt from the data with the model: not saved
        head, relation, tail = (torch.as_tensor(x, dtype=torch.int64) for x in (graph.head, graph.relation, graph.tail))
        order = torch.argsort(head * graph.n_entities + tail)
        for name, ids in (("head", head), ("relation", relation), ("tail", tail)):
            self.register_buffer(name, ids[order], persistent=False)

    def edge_weights(self) -> torch.Tensor:
        """Attention pi [E] over the CKG edges (softmax over each head entity's out-edges)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.attention_grad):
            return self.attention(self.transd, self.head, self.relation, self.tail, self.n_entities)

    def epoch_start(self) -> None:
        """Forget the attention so the epoch's first step recomputes it (called by the top-K trainer;
        at a resume too, so a resumed run recomputes exactly what the uninterrupted one did)."""
        self._train_weights = None

    def forward(self) -> torch.Tensor:
        if self.training and self.reuse_attention:
            if self._train_weights is None:
                self._train_weights = self.edge_weights().detach()
            weights = self._train_weights
        else:
            weights = self.edge_weights()
        return self.propagation(self.transd.entity.weight, self.head, self.tail, weights)

    @torch.no_grad()
    def layer_shares(self) -> list[float]:
        """The across-entity share of each propagation block's energy (layer 0 = the raw embedding), with the
        current attention and without message dropout: a diagnostic of whether the layers carry signal."""
        was = self.training
        self.eval()
        try:
            outs, _ = self.propagation.layer_outputs(self.transd.entity.weight, self.head, self.tail,
                                                     self.edge_weights())
        finally:
            self.train(was)
        return [across_entity_share(o) for o in outs]

    def users(self, reps: torch.Tensor) -> torch.Tensor:
        """[n_users, out_dim] rows of the users (a view)."""
        return reps[self.user_offset:self.user_offset + self.n_users]

    def items(self, reps: torch.Tensor) -> torch.Tensor:
        """[n_items, out_dim] rows of the items (a view)."""
        return reps[:self.n_items]

    def kg_loss(self, batch_size: int) -> torch.Tensor:
        """TransD loss on `batch_size` uniformly drawn CKG triples with uniformly corrupted tails."""
        n_edges = self.head.shape[0]
        if n_edges == 0:
            return self.transd.entity.weight.sum() * 0.0
        dev = self.head.device
        idx = torch.randint(n_edges, (batch_size,), device=dev)
        neg = torch.randint(self.n_entities, (batch_size,), device=dev)
        return self.transd.kg_loss(self.head[idx], self.relation[idx], self.tail[idx], neg)
