"""Multi-head self-attention over the fields of one sample (AutoInt / SAPENet style).

The F field embeddings of a sample are the sequence: attention never crosses samples of a batch
(peers that hand a [B, D] matrix to a Transformer attend across the batch; this layer cannot).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class FieldSelfAttention(nn.Module):
    """e~ = e + W_o · MultiHead(e) for e = [B, F, d]; any F (>= 1) and any d, any number of heads.

    Each head projects the d-dim field vectors to d_k = ceil(d / n_heads) dims (d / n_heads when it
    divides), attends with softmax(Q K^T / sqrt(d_k)) V over the F fields, and W_o maps the
    concatenated heads (n_heads * d_k) back to d so the residual can be added. No masking (every
    field is present in every sample), no dropout on attention weights, no normalisation layer:
    the output of a sample depends on that sample only.
    """

    def __init__(self, dim: int, n_heads: int = 2, residual: bool = True) -> None:
        super().__init__()
        if dim < 1 or n_heads < 1:
            raise ValueError(f"FieldSelfAttention needs dim >= 1 and n_heads >= 1 (got {dim}, {n_heads})")
        self.dim, self.n_heads, self.residual = dim, n_heads, residual
        self.head_dim = math.ceil(dim / n_heads)
        inner = self.head_dim * n_heads
        self.qkv = nn.Linear(dim, 3 * inner)
        self.out = nn.Linear(inner, dim)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        """e: [B, F, d] -> [B, F, d]."""
        b, f, _ = e.shape
        q, k, v = self.qkv(e).view(b, f, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x [B, H, F, dk]
        att = F.scaled_dot_product_attention(q, k, v)  # softmax(QK^T / sqrt(dk)) V, per sample and head
        out = self.out(att.transpose(1, 2).reshape(b, f, self.n_heads * self.head_dim))
        return e + out if self.residual else out
