"""Sequence encoders: one vector per sequence field from its token embeddings, chosen per sequence.

Every encoder maps (emb [B, L, d], mask bool [B, L], target [B, d] or None) -> [B, d]. Histories arrive
newest first and padded on the right (polyrec.data.history); an empty sequence (all mask False) gives the
zero vector with every encoder, and no encoder uses batch statistics, so a row's output does not depend on
the rest of its batch.

- mean: the masked mean of the tokens (the `sequence` role's original pooling).
- din: target attention (Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018):
  w_j = a([h_j, t, h_j - t, h_j * t]) with a an MLP (PReLU, DIN's [80, 40]; Dice is not implemented), output
  sum_j w_j h_j. The paper does not normalise the weights (so the output keeps the intensity of interest);
  `softmax=True` normalises them over the valid positions instead.
- gru / lstm: the final hidden state after reading the history oldest to newest, packed by length
  (torch.nn.utils.rnn.pack_padded_sequence), hidden size d.
- bst: a transformer encoder (Chen et al., "Behavior Sequence Transformer for E-commerce Recommendation in
  Alibaba", 2019) over [target, h_1, ..., h_L] with learned position embeddings (position 0 the target,
  position j the j-th most recent event: BST's position is the time order), padded keys masked. Output: the
  target position's vector (BST concatenates every position and feeds an MLP; one vector per field keeps the
  field layout every model here shares). Without a target: the masked mean of the history positions.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from torch import nn

from polyrec.errors import PolyrecError, close_matches

SequenceKind = Literal["mean", "din", "gru", "lstm", "bst"]
NEEDS_TARGET = ("din",)


class SequenceEncoderConfig(BaseModel):
    """How one sequence field is encoded (`model.sequence_encoder` / `model.sequences` in the run config)."""

    model_config = ConfigDict(extra="forbid")
    kind: SequenceKind = "mean"
    target: str | None = None  # categorical field of the candidate; default: the field the sequence shares
    softmax: bool = False  # din: normalise the attention weights
    attention_dims: list[PositiveInt] = Field(default_factory=lambda: [80, 40])  # din
    heads: PositiveInt = 2  # bst (must divide the embedding size)
    layers: PositiveInt = 1  # bst / gru / lstm
    dropout: float = Field(0.0, ge=0, lt=1)


def masked_mean(emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(emb.dtype)
    return (emb * m).sum(1) / m.sum(1).clamp(min=1.0)


class MeanPool(nn.Module):
    def forward(self, emb: torch.Tensor, mask: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        return masked_mean(emb, mask)


class TargetAttention(nn.Module):
    """DIN's activation unit; weights of padded positions are 0 (and excluded from the softmax)."""

    def __init__(self, dim: int, hidden: list[int], softmax: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = 4 * dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.PReLU(h)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.unit = nn.Sequential(*layers)
        self.softmax = softmax

    def weights(self, emb: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """[B, L] attention weights (0 on padding)."""
        t = target.unsqueeze(1).expand_as(emb)
        b, n, d = emb.shape
        score = self.unit(torch.cat([emb, t, emb - t, emb * t], dim=-1).reshape(b * n, 4 * d)).view(b, n)
        if self.softmax:
            score = score.masked_fill(~mask, float("-inf"))
            w = torch.softmax(score, dim=1)
            return torch.nan_to_num(w, nan=0.0)  # a row without history: all -inf -> zeros
        return score * mask.to(score.dtype)

    def forward(self, emb: torch.Tensor, mask: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        if target is None:
            raise ValueError("target attention needs the candidate's embedding")
        return (self.weights(emb, mask, target).unsqueeze(-1) * emb).sum(1)


def oldest_first(emb: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Newest-first rows (valid prefix of each row's length) reversed within their valid prefix."""
    b, n = emb.shape[:2]
    pos = torch.arange(n, device=emb.device).unsqueeze(0).expand(b, n)
    src = (lengths.unsqueeze(1) - 1 - pos).clamp(min=0)
    src = torch.where(pos < lengths.unsqueeze(1), src, pos)
    return emb.gather(1, src.unsqueeze(-1).expand_as(emb))


class RecurrentEncoder(nn.Module):
    """GRU or LSTM over the history oldest to newest; the last layer's final hidden state."""

    def __init__(self, dim: int, kind: Literal["gru", "lstm"], layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        cls = nn.GRU if kind == "gru" else nn.LSTM
        self.rnn = cls(dim, dim, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.kind = kind

    def forward(self, emb: torch.Tensor, mask: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        lengths = mask.sum(1)
        seq = oldest_first(emb, lengths)
        packed = nn.utils.rnn.pack_padded_sequence(seq, lengths.clamp(min=1).cpu(), batch_first=True,
                                                   enforce_sorted=False)
        _, state = self.rnn(packed)
        h = state[0] if self.kind == "lstm" else state
        return h[-1] * (lengths > 0).unsqueeze(-1).to(h.dtype)  # an empty history: zeros


class BehaviorTransformer(nn.Module):
    """BST: self-attention over the target and the history, with position embeddings."""

    def __init__(self, dim: int, max_len: int, heads: int = 2, layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"bst: {heads} heads do not divide the embedding size {dim}")
        self.positions = nn.Embedding(max_len + 1, dim)
        nn.init.normal_(self.positions.weight, std=0.01)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, emb: torch.Tensor, mask: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = emb.shape
        if target is not None:
            x = torch.cat([target.unsqueeze(1), emb], dim=1)
            valid = torch.cat([mask.new_ones(b, 1), mask], dim=1)
        else:
            x, valid = emb, mask
        pos = torch.arange(x.shape[1], device=x.device) + (0 if target is not None else 1)
        x = x + self.positions(pos).unsqueeze(0)
        # a row with nothing valid would attend to nothing (NaN): let it attend to its padding, then zero it
        empty = ~valid.any(1)
        pad_mask = ~valid & ~empty.unsqueeze(1)
        out = self.encoder(x, src_key_padding_mask=pad_mask)
        if target is not None:
            return out[:, 0]
        return masked_mean(out, mask) * (~empty).unsqueeze(-1).to(out.dtype)


def build_sequence_encoder(cfg: SequenceEncoderConfig, dim: int, max_len: int) -> nn.Module:
    if cfg.kind == "mean":
        return MeanPool()
    if cfg.kind == "din":
        return TargetAttention(dim, list(cfg.attention_dims), cfg.softmax)
    if cfg.kind in ("gru", "lstm"):
        return RecurrentEncoder(dim, cfg.kind, cfg.layers, cfg.dropout)
    return BehaviorTransformer(dim, max_len, cfg.heads, cfg.layers, cfg.dropout)


def resolve_sequence_encoders(default: SequenceKind, per_sequence: dict[str, SequenceEncoderConfig],
                              names: list[str], histories: list[str]) -> dict[str, dict]:
    """Each sequence field's encoder config (JSON, for the model spec): `per_sequence[name]`; else `default`
    for the histories' item sequences and the masked mean for other lists (e.g. genres, which have no
    candidate to attend from)."""
    unknown = sorted(set(per_sequence) - set(names))
    if unknown:
        raise PolyrecError(f"model.sequences names {unknown}, which are not sequence fields of the data "
                           f"({names}).{close_matches(unknown[0], names)}")
    out = {}
    for n in names:
        cfg = per_sequence.get(n) or SequenceEncoderConfig(kind=default if n in histories else "mean")
        out[n] = cfg.model_dump(mode="json")
    return out
