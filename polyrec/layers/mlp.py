"""Multi-layer perceptrons: a plain one, and a bank of independent ones evaluated in one batched matmul."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from polyrec.layers.decay import no_decay

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "prelu": nn.PReLU}


def activation(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


class MLP(nn.Module):
    """Linear -> [BatchNorm] -> activation -> dropout per hidden layer; optional linear output layer.

    BatchNorm is off by default: it makes eval depend on running statistics and breaks batches of one.
    """

    def __init__(
        self,
        in_dim: int,
        dims: Sequence[int],
        out_dim: int | None = None,
        dropout: float = 0.0,
        act: str = "relu",
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for d in dims:
            layers.append(nn.Linear(in_dim, d))
            if batch_norm:
                layers.append(nn.BatchNorm1d(d))
            layers.append(activation(act))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            in_dim = d
        if out_dim is not None:
            layers.append(nn.Linear(in_dim, out_dim))
            in_dim = out_dim
        self.net = nn.Sequential(*layers)
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ParallelMLP(nn.Module):
    """`n` independent MLPs (experts, towers, gates) computed together with batched matmuls.

    Input is either shared, [B, in] (every unit sees the same vector: the first layer becomes one
    wide matmul), or per unit, [B, n, in]. Output is [B, n, out]. Each unit is initialised like an
    nn.Linear stack, so n units equal n separate MLPs up to the random draw.
    """

    def __init__(
        self,
        n: int,
        in_dim: int,
        dims: Sequence[int],
        out_dim: int | None = None,
        dropout: float = 0.0,
        act: str = "relu",
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.n, self.in_dim = n, in_dim
        sizes = [in_dim, *dims] + ([out_dim] if out_dim is not None else [])
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for d_in, d_out in zip(sizes[:-1], sizes[1:]):
            bound = 1.0 / math.sqrt(d_in)
            self.weights.append(nn.Parameter(torch.empty(n, d_in, d_out).uniform_(-bound, bound)))
            self.biases.append(no_decay(nn.Parameter(torch.empty(n, 1, d_out).uniform_(-bound, bound))))
        n_hidden = len(dims)
        self.hidden = [True] * n_hidden + ([False] if out_dim is not None else [])
        self.norms = nn.ModuleList(
            [nn.BatchNorm1d(n * d) for d in dims] if batch_norm else []
        )
        self.act = activation(act)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out_dim = sizes[-1]

    def forward_units(self, x: torch.Tensor, units: slice, first: torch.Tensor | None = None) -> torch.Tensor:
        """Only units[units] (e.g. one task's experts when only its score is needed): x is [B, in]
        (shared) or [B, s, in]; `first`, when given, is the first layer's pre-activation [B, s, d1]
        computed by the caller (who may factor the first matmul), and x is then ignored.
        Equals forward(x)[:, units] (no batch norm: it has no per-unit statistics to slice)."""
        if self.norms:
            raise ValueError("forward_units does not support batch_norm")
        h = None
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            w, b = w[units], b[units]
            if i == 0 and first is not None:
                h = first.transpose(0, 1)  # [s, B, d1]
            elif i == 0 and x.dim() == 2:
                h = torch.einsum("bi,sio->sbo", x, w) + b
            else:
                h = torch.baddbmm(b, x.transpose(0, 1) if i == 0 else h, w)
            if self.hidden[i]:
                h = self.dropout(self.act(h))
        assert h is not None
        return h.transpose(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if i == 0 and x.dim() == 2:  # shared input: one [B, in] x [in, n*out] matmul
                b_sz = x.shape[0]
                h = (x @ w.permute(1, 0, 2).reshape(w.shape[1], -1)).view(b_sz, self.n, -1)
                h = h.transpose(0, 1) + b  # [n, B, out]
            else:
                if i == 0:
                    x = x.transpose(0, 1)  # [B, n, in] -> [n, B, in]
                h = torch.baddbmm(b, x, w)
            if self.hidden[i]:
                if self.norms:
                    n_, b_sz, d = h.shape
                    h = self.norms[i](h.permute(1, 0, 2).reshape(b_sz, n_ * d)).view(b_sz, n_, d).transpose(0, 1)
                h = self.dropout(self.act(h))
            x = h
        return x.transpose(0, 1)  # [B, n, out]
