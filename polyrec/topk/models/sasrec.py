"""SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018) and its multi-task
variant `sasrec-mt`, next-item models over each user's time-ordered training items
(polyrec.topk.models.seqbase).

As the paper: item embeddings (shared with the output layer) + learned position embeddings, dropout;
n_layers blocks of causal self-attention and a point-wise two-layer ReLU feed-forward net, each as
x + Dropout(f(LayerNorm(x))), then a final LayerNorm; training with binary cross-entropy on the next
item and one sampled negative at every position (loss=bce, the default; loss=ce is full softmax
cross-entropy); ML-1M settings max_len 200, 2 blocks, 1 head, dropout 0.2.

Choices where the paper is silent: positions count from the last slot (the last item is position 0), so
the amount of left padding never changes an output (the released code pads on the left, which is the
same for a fixed max_len); padded slots attend only to themselves and are zeroed after every block, so
no real position reads them; item embeddings are scaled by sqrt(d) as the released code does; queries,
keys and values all come from the normalised input.

`sasrec-mt` (the "list generation" task): the same encoder; the last state h feeds one linear head per
task, v_k = W_k h + b_k, and task k scores item i as <v_k, e_i>. Every head is trained with BCE on the next
item (its label for task k) and a sampled negative (0 for every task); items are ranked by the target.

Measured on the synthetic chain "k is followed by k+1" (tests/test_topk_seq.py, 40 users, 30 epochs): with
the user's own items excluded from the ranking, as the evaluation does, loss=ce reaches Recall@1 1.0 and
loss=bce 0.65-0.9 (GRU4Rec 1.0). Without that exclusion bce gives 0.26: its negatives are never the user's
own items (as in the released code), so the residual path from the input item makes the item just read the
top score. Not yet checked: the ML-1M next-item figures against the paper's and RecBole's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from polyrec.topk.models.base import TopKInfo, register_topk
from polyrec.topk.models.seqbase import SequenceModel, SequenceParams, positions_from_end


class SASRecParams(SequenceParams):
    """activation/batch_norm are unused."""

    max_len: int = 200
    n_layers: int = 2
    n_heads: int = 1
    dropout: float = Field(0.2, ge=0, lt=1)


class CausalBlock(nn.Module):
    """x + Dropout(Attention(LN(x))), then x + Dropout(FFN(LN(x))); padded rows zeroed."""

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by n_heads {n_heads}")
        self.n_heads, self.p = n_heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ff1, self.ff2 = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, length, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, length, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=self.p if self.training else 0.0)
        x = x + self.drop(self.out(a.transpose(1, 2).reshape(b, length, d)))
        x = x + self.drop(self.ff2(self.drop(F.relu(self.ff1(self.norm2(x))))))
        return x * keep


@register_topk("sasrec")
class SASRec(SequenceModel):
    Params = SASRecParams

    def __init__(self, info: TopKInfo, embed_dim: int, params: SASRecParams) -> None:
        super().__init__(info, embed_dim, params)
        self.position = nn.Embedding(params.max_len, embed_dim)
        self.drop = nn.Dropout(params.dropout)
        self.blocks = nn.ModuleList(CausalBlock(embed_dim, params.n_heads, params.dropout)
                                    for _ in range(params.n_layers))
        self.norm = nn.LayerNorm(embed_dim)

    def encode_sequence(self, seq: torch.Tensor) -> torch.Tensor:
        length = seq.shape[1]
        valid = seq != self.pad
        keep = valid.unsqueeze(-1).to(self.item.weight.dtype)
        x = self.item(seq) * math.sqrt(self.embed_dim) + self.position(positions_from_end(seq))
        x = self.drop(x) * keep
        causal = torch.ones(length, length, dtype=torch.bool, device=seq.device).tril()
        eye = torch.eye(length, dtype=torch.bool, device=seq.device)
        allowed = (causal & (valid.unsqueeze(1) | eye)).unsqueeze(1)  # [B, 1, L(query), L(key)]
        for block in self.blocks:
            x = block(x, allowed, keep)
        return self.norm(x) * keep


@register_topk("sasrec-mt")
class SASRecMT(SASRec):
    multi_task = True

    def __init__(self, info: TopKInfo, embed_dim: int, params: SASRecParams) -> None:
        super().__init__(info, embed_dim, params)
        n = len(self.heads)
        self.task_weight = nn.Parameter(torch.eye(embed_dim).repeat(n, 1, 1))  # starts as the identity
        self.task_bias = nn.Parameter(torch.zeros(n, embed_dim))
        self.not_shared(self.task_weight, self.task_bias)

    def user_vectors(self, states: torch.Tensor) -> torch.Tensor:
        return torch.einsum("pd,hed->phe", states, self.task_weight) + self.task_bias
