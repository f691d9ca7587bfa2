"""WAA-TA (Huang et al., "A multi-task recommendation algorithm fusing weighted auxiliary task
awareness"), ../shared/docs/specs/waa-ta.md: KGAT-style graph encoder with TransD (sections 1-2),
a gated shared / task-specific multi-task layer (section 3) built from FDN-style decomposed features
(section 4). The gradient balancing of section 5 is MetaBalance (polyrec.balance.metabalance) acting
on `shared_parameters()`, wired by the training loop.

    v* = encode()                                   (graph.py: TransD + attention + propagation)
    X  = [v_u* ; v_i* ; v_u* ⊙ v_i*]
    S_m = f_s^m(X)       m = 1..M                   shared extractors (shared by all tasks)
    P_{k,m} = f_p^{k,m}(X)                          task k's specific extractors
    f_s = [S_1, ..., S_M],  f_t^k = [P_{k,1}, ..., P_{k,M}]              (concatenations, M*D dims)
    g_k = sigmoid(W_g^k [f_s ; f_t^k] + b_g^k),  X_k = g_k ⊙ f_s + (1 - g_k) ⊙ f_t^k
    logit_k = Tower_k(X_k) + <v_u*, v_i*>            (section 2's matching score, `matching_score=True`)
    extra = w_aux L_aux + w_o L_o + w_kg L_TransD
    L_aux = sum_k sum_m mean BCE(y_k, head_{k,m}(P_{k,m})),  L_o = FDN's orthogonality over pairs (S_m, P_{k,m})

Choices where the spec is silent:
- Sections 3 and 4 combine by concatenation: f_s of section 3 is the concatenation of the M shared
  extractors and f_t^k that of task k's M specific ones, so the element-wise gate mixes pair m's shared
  feature with pair m's specific feature (the pairs the orthogonality constraint separates). Pair
  (k, m) is (f_s^m, f_p^{k,m}): shared extractors are shared across tasks, as in polyrec.models.fdn.
- X also holds v_u* ⊙ v_i* (`product_feature=True`, default): MLPs over a concatenation learn a dot
  product poorly (Rendle et al., "Neural Collaborative Filtering vs. Matrix Factorization Revisited",
  RecSys 2020), and the product lets the towers recover KGAT's matching score <v_u*, v_i*>, which the
  spec's section 2 defines. `product_feature=False` gives the spec's literal X = [v_u* ; v_i*].
- Section 2's matching score <v_u*, v_i*> is added to every task's logit (`matching_score=True`, default):
  the spec defines it but not how it meets section 3's towers; a sum makes the towers learn a residual on top
  of KGAT's scorer, with no extra parameters. Without it (`False`, the committed benches up to 2026-12) the
  towers fit popularity first and 2 of 5 seeds stopped on that plateau (docs/results/waata-ml100k-random).
- Extractors are MLPs [64, 32] (the article's "32 units per expert"; section 3's shared bottom has
  "several layers"), ending activated; M = 2 pairs (FDN's default here); towers [32]; gates one linear
  layer per task; heads_{k,m} one Linear(32, 1). 2 propagation layers by default; the embedding size is
  model.embed_dim (the config's default 16, with which the committed benches ran; the article's 64 is
  `--set model.embed_dim=64`).
- L_o is polyrec.models.fdn.orthogonality (batch-centred, row-normalised ||S^T P||_F^2 / B^2, the Domain
  Separation Networks form; see fdn.py for why not the raw product). Both L_o and L_aux are computed on
  the last training-mode `score` call's pairs (observed pairs and sampled negatives alike).
- Ablations: `auxiliary=False` (WAA-TA1) builds no auxiliary heads and adds no L_aux (the training loop
  also switches the balancer to a plain sum); `decomposition=False` (WAA-TA2) uses one shared and one
  specific extractor per task (M = 1, `n_pairs` ignored), no auxiliary heads, no L_o: section 3 alone;
  `orthogonal=False` (WAA-TA3) drops L_o.
- shared_parameters: the graph encoder (embeddings, attention, propagation) and the shared extractors;
  gates, task extractors, auxiliary heads and towers are task-specific.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from pydantic import Field, PositiveInt

from polyrec.errors import PolyrecError
from polyrec.layers.mlp import ParallelMLP
from polyrec.models.fdn import orthogonality
from polyrec.topk.models.base import TopKInfo, TopKModel, register_topk, sum_parts
from polyrec.topk.models.graph import GraphEncoder, GraphParams


class WAATAParams(GraphParams):
    n_pairs: int = Field(default=2, ge=1)  # M
    expert_dims: list[PositiveInt] = Field(default=[64, 32], min_length=1)
    tower_dims: list[PositiveInt] = [32]
    product_feature: bool = True
    auxiliary: bool = True  # False: WAA-TA1
    decomposition: bool = True  # False: WAA-TA2
    orthogonal: bool = True  # False: WAA-TA3
    auxiliary_weight: float = Field(default=1.0, ge=0)
    orthogonal_weight: float = Field(default=1.0, ge=0)
    matching_score: bool = True  # + <v_u*, v_i*> on every task's logit


@register_topk("waata")
class WAATA(TopKModel):
    Params = WAATAParams
    needs_graph = True
    # section 5 of the spec: MetaBalance on the shared parameters, the target task's gradient against the
    # auxiliary tasks'. Used when the config does not name a balancer (a run that sets train.balance,
    # e.g. WAA-TA1 with `sum`, gets what it asks for).
    default_balance = "metabalance"

    def __init__(self, info: TopKInfo, embed_dim: int, params: WAATAParams) -> None:
        super().__init__(info, embed_dim, params)
        p = params
        self.n_tasks = t = len(info.task_names)
        self.n_pairs = m = p.n_pairs if p.decomposition else 1
        self.use_aux = p.decomposition and p.auxiliary
        self.use_orth = p.decomposition and p.orthogonal
        self.graph = GraphEncoder(info.graph, embed_dim, p)
        x_dim = self.graph.out_dim * (3 if p.product_feature else 2)
        mlp = dict(dims=p.expert_dims, dropout=p.dropout, act=p.activation, batch_norm=p.batch_norm)
        self.shared_extractors = ParallelMLP(m, x_dim, **mlp)  # f_s^m
        self.task_extractors = ParallelMLP(t * m, x_dim, **mlp)  # f_p^{k,m}, k-major
        d = self.shared_extractors.out_dim
        self.task_gates = ParallelMLP(t, 2 * m * d, [], m * d)  # W_g^k, b_g^k
        self.task_aux_heads = ParallelMLP(t * m, d, [], 1) if self.use_aux else None  # head_{k,m}
        self.towers = ParallelMLP(t, m * d, p.tower_dims, 1, p.dropout, p.activation, p.batch_norm)
        self.not_shared(self.task_extractors, self.task_gates, self.task_aux_heads, self.towers)
        self._features: tuple[torch.Tensor, torch.Tensor] | None = None  # (S, P) of the last training score

    def encode(self) -> torch.Tensor:
        return self.graph()

    def inputs(self, users: torch.Tensor, items: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
        """X [B, x_dim] of the pairs."""
        return self._inputs(self.graph.users(cache)[users], self.graph.items(cache)[items])

    def _inputs(self, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return torch.cat([u, i, u * i] if self.params.product_feature else [u, i], dim=-1)

    def score(self, users: torch.Tensor, items: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
        u, i = self.graph.users(cache)[users], self.graph.items(cache)[items]
        x = self._inputs(u, i)
        t, m = self.n_tasks, self.n_pairs
        s = self.shared_extractors(x)  # [B, M, D]
        b, _, d = s.shape
        sp = self.task_extractors(x).view(b, t, m, d)  # [B, T, M, D]
        f_s = s.reshape(b, 1, m * d).expand(b, t, m * d)
        f_t = sp.reshape(b, t, m * d)
        g = torch.sigmoid(self.task_gates(torch.cat([f_s, f_t], dim=-1)))  # [B, T, M*D]
        logits = self.towers(g * f_s + (1 - g) * f_t).squeeze(-1)  # [B, T]
        if self.params.matching_score:
            logits = logits + (u * i).sum(-1, keepdim=True)
        # kept only for the training loss (never in evaluation, which runs without grad)
        self._features = (s, sp) if self.training and torch.is_grad_enabled() else None
        return logits

    def score_all(self, users: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
        """The ranking head against every item, for evaluation: equal to `score` on the expanded pairs, but
        only the ranking task's units run, and the extractors' first layer is factored, W [u; i; u⊙i] =
        W_u u + W_i i + W_p (u⊙i), so the user and item parts are computed once per user and once per item
        (about 3x fewer FLOPs per pair on MovieLens-100K than `score`)."""
        if self.params.batch_norm:
            return super().score_all(users, cache)
        k, m = self.ranking_head, self.n_pairs
        u_all, i_all = self.graph.users(cache)[users], self.graph.items(cache)  # [b, D], [n, D]
        n, dim = i_all.shape
        extractors = [(self.shared_extractors, slice(0, m)), (self.task_extractors, slice(k * m, (k + 1) * m))]
        item_parts = [torch.einsum("nd,sdh->nsh", i_all, mlp.weights[0][sel][:, dim:2 * dim])
                      for mlp, sel in extractors]
        step = max(1, self.score_all_pairs // max(n, 1))
        out = []
        for start in range(0, u_all.shape[0], step):
            u = u_all[start:start + step]
            feats = []
            for (mlp, sel), item_part in zip(extractors, item_parts):
                w, bias = mlp.weights[0][sel], mlp.biases[0][sel]  # [s, 3D or 2D, H], [s, 1, H]
                pre = (torch.einsum("bd,sdh->bsh", u, w[:, :dim]) + bias.transpose(0, 1)).unsqueeze(1) \
                    + item_part.unsqueeze(0)  # [b, n, s, H]
                if self.params.product_feature:
                    prod = (u.unsqueeze(1) * i_all.unsqueeze(0)).reshape(-1, dim)  # [b*n, D]
                    pre = pre + (prod @ w[:, 2 * dim:].permute(1, 0, 2).reshape(dim, -1)).view(pre.shape)
                s_, h = pre.shape[2], pre.shape[3]
                feats.append(mlp.forward_units(None, sel, first=pre.reshape(-1, s_, h)))  # [b*n, M, d]
            f_s, f_t = (f.reshape(f.shape[0], -1) for f in feats)  # [b*n, M*d] each
            g = torch.sigmoid(self.task_gates.forward_units(torch.cat([f_s, f_t], -1), slice(k, k + 1)))[:, 0]
            logit = self.towers.forward_units((g * f_s + (1 - g) * f_t).unsqueeze(1), slice(k, k + 1))
            logit = logit.view(u.shape[0], n)
            out.append(logit + u @ i_all.T if self.params.matching_score else logit)
        return torch.cat(out) if out else torch.zeros(0, n, device=users.device)

    def extra_loss(self, logits: torch.Tensor, labels: torch.Tensor | None, cache: Any) -> torch.Tensor | None:
        p, parts = self.params, {}
        if self._features is not None and (self.use_orth or self.use_aux):
            s, sp = self._features
            b, t, m, d = sp.shape
            if self.use_orth and p.orthogonal_weight > 0:
                parts["orthogonal"] = p.orthogonal_weight * orthogonality(s.repeat(1, t, 1), sp.view(b, t * m, d))
            if self.use_aux and p.auxiliary_weight > 0:
                if labels is None or labels.shape != (b, t):
                    raise PolyrecError(f"WAA-TA extra_loss needs labels [{b}, {t}] of the last scored batch, "
                                       f"got {None if labels is None else tuple(labels.shape)}.")
                aux = self.task_aux_heads(sp.view(b, t * m, d)).view(b, t, m)
                y = labels.unsqueeze(-1).expand_as(aux)
                parts["auxiliary"] = p.auxiliary_weight * F.binary_cross_entropy_with_logits(
                    aux, y, reduction="none").mean(0).sum()
        if p.kg_weight > 0:
            parts["kg"] = p.kg_weight * self.graph.kg_loss(p.kg_batch_size)
        return sum_parts(self, parts)

    def last_shared_layer(self) -> nn.Parameter:
        """GradNorm's W: the shared extractors' last layer (the towers and task extractors are per task)."""
        return self.shared_extractors.weights[-1]
