"""PEPNet (Chang et al., KDD 2023, "PEPNet: Parameter and Embedding Personalized Network for Infusing
with Personalized Prior Information").

    Gate NU:  δ = γ · sigmoid(W2 relu(W1 x + b1) + b2),  γ = 2: values in (0, 2), 1 is neutral
    EPNet:    δ_domain = U_ep([E(F_d) ; ∅(E)]),   O_ep = δ_domain ⊗ E         (one scale per field)
    PPNet:    δ_t^l = U_pp^{t,l}([∅(E(F_prior)) ; ∅(O_ep)]),
              H_t^{l+1} = f(W_t^l (δ_t^l ⊗ H_t^l) + b_t^l),  H_t^0 = O_ep    (per task t, layer l)
∅ is stop-gradient (detach): the gates read the embeddings but cannot move them; the embeddings
learn from the main path only.

- E = InputEmbedding.fields [B, F, d] (categorical, pooled sequences, numeric value x vector);
  δ_domain has one entry per field, broadcast over the embedding dimension (paper: δ_domain ∈ R^k
  for k fields).
- Domain features F_d = the scenario-id embedding (own table, not detached: it learns only
  through the gate) plus the fields named in `domain_fields` (default none).
- Prior features: the paper uses user, item and author id embeddings; the schema does not mark
  them, so `prior_fields` defaults to every categorical field (set e.g. [user_id, item_id] to
  follow the paper). The brief of this library detaches them as well as O_ep, because here they
  are the same embeddings the main path trains (the paper's eq. 7 writes ∅ on O_ep only).
- PPNet gates the input of every tower layer, i.e. O_ep and each hidden layer's output, with its
  own Gate NU per (task, layer), as in the paper's O_pp^l = δ^l ⊗ H^l; the last gated vector feeds
  the per-task output layer.
- Multi-task: PPNet is the multi-task part (one tower per task); EPNet is shared.
- `batch_norm` is not used (the towers are built layer by layer around the gates).
"""

from __future__ import annotations

import torch
from torch import nn

from polyrec.data.batching import Batch
from polyrec.layers.embedding import InputEmbedding
from polyrec.layers.mlp import ParallelMLP, activation
from polyrec.layers.scenario import field_index
from polyrec.models.base import ModelParams, MultiTaskModel, register
from polyrec.layers.decay import no_decay


class PEPNetParams(ModelParams):
    tower_dims: list[int] = [128, 64]
    gate_hidden: int = 64
    gate_scale: float = 2.0  # γ of the Gate NU
    domain_fields: list[str] = []  # extra domain-side fields for EPNet, besides the scenario embedding
    prior_fields: list[str] | None = None  # None: every categorical field


class GateNU(nn.Module):
    """n independent Gate NUs: γ · sigmoid(MLP(x)) with one relu hidden layer; [B, in] -> [B, n, out]."""

    def __init__(self, n: int, in_dim: int, hidden: int, out_dim: int, scale: float) -> None:
        super().__init__()
        self.mlp = ParallelMLP(n, in_dim, [hidden], out_dim, act="relu")
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.sigmoid(self.mlp(x))


@register("pepnet")
class PEPNet(MultiTaskModel):
    Params = PEPNetParams
    deviations = (
        "the prior embeddings fed to the PPNet gates are detached (stop-gradient) as well as the EPNet output",
    )

    def __init__(self, spec, embed_dim, params: PEPNetParams) -> None:
        super().__init__(spec, embed_dim, params)
        p, d = params, embed_dim
        self.embedding = InputEmbedding(spec, d)
        n_fields = self.embedding.n_fields
        self.scenario_emb = no_decay(nn.Parameter(torch.randn(spec.n_scenarios, d) * 0.01))
        self.domain_idx = field_index(spec, p.domain_fields, "pepnet domain_fields")
        prior = spec.categorical_fields if p.prior_fields is None else p.prior_fields
        self.prior_idx = field_index(spec, prior, "pepnet prior_fields")
        self.ep_gate = GateNU(1, d * (1 + len(self.domain_idx) + n_fields), p.gate_hidden, n_fields, p.gate_scale)
        dims = [n_fields * d, *p.tower_dims, 1]
        d_prior = d * len(self.prior_idx) + n_fields * d
        self.task_gates = nn.ModuleList(GateNU(self.n_tasks, d_prior, p.gate_hidden, a, p.gate_scale)
                                        for a in dims[:-1])
        self.towers = nn.ModuleList(ParallelMLP(self.n_tasks, a, [], b) for a, b in zip(dims[:-1], dims[1:]))
        self.not_shared(self.task_gates, self.towers)
        self.act = activation(p.activation)
        self.dropout = nn.Dropout(p.dropout) if p.dropout > 0 else nn.Identity()

    def forward(self, batch: Batch) -> torch.Tensor:
        e = self.embedding.fields(batch)  # E: [B, F, d]
        domain = torch.cat([self.scenario_emb[batch.scenario], e[:, self.domain_idx].flatten(1)], dim=1)
        delta = self.ep_gate(torch.cat([domain, e.detach().flatten(1)], dim=1))  # [B, 1, F]
        o_ep = (delta.transpose(1, 2) * e).flatten(1)  # EPNet: one scale per field
        prior = torch.cat([e[:, self.prior_idx].detach().flatten(1), o_ep.detach()], dim=1)
        h = o_ep.unsqueeze(1)  # [B, 1, F*d], broadcast to the T task towers by the first gate
        for i, (gate, layer) in enumerate(zip(self.task_gates, self.towers)):
            h = layer(gate(prior) * h)  # [B, T, .]
            if i < len(self.towers) - 1:
                h = self.dropout(self.act(h))
        return h.squeeze(-1)

    def last_shared_layer(self) -> nn.Parameter:
        """GradNorm's W: EPNet's gate, the last module every task passes through (the towers and PPNet gates are per task)."""
        return self.ep_gate.mlp.weights[-1]
