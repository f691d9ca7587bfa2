"""Input layer: one fused embedding table for every categorical and sequence field."""

from __future__ import annotations

import torch
from torch import nn

from polyrec.data.batching import Batch
from polyrec.data.spec import ModelSpec
from polyrec.layers.decay import no_decay


class FusedEmbedding(nn.Module):
    """All fields share one nn.Embedding; field j's ids are shifted by its offset.

    One table means one lookup kernel per batch instead of one per field, and one parameter for
    optimiser param groups (no weight decay on embeddings by default).
    """

    def __init__(self, vocab_sizes: list[int], dim: int, sparse: bool = False) -> None:
        super().__init__()
        offsets = torch.tensor([0, *vocab_sizes[:-1]], dtype=torch.int64).cumsum(0) if vocab_sizes else torch.zeros(0)
        self.register_buffer("offsets", offsets.to(torch.int32), persistent=False)
        self.table = nn.Embedding(max(sum(vocab_sizes), 1), dim, sparse=sparse)
        nn.init.normal_(self.table.weight, std=0.01)
        self.dim = dim

    def forward(self, ids: torch.Tensor, field: int | None = None) -> torch.Tensor:
        """ids [B, F] of all fields -> [B, F, d]; or ids [B, L] of one field -> [B, L, d]."""
        shift = self.offsets if field is None else self.offsets[field]
        return self.table(ids + shift)


class InputEmbedding(nn.Module):
    """Turns a Batch into field embeddings [B, F, d] or one flat vector per sample.

    Fields are the categorical ids, then each sequence (masked mean of its token embeddings), then
    each numeric value (value x a learned vector, only in `fields`; `flat` appends raw values).
    """

    def __init__(self, spec: ModelSpec, dim: int, sparse: bool = False, numeric_fields: bool = True) -> None:
        """`numeric_fields=False` for models that only call `flat`: no unused numeric vectors."""
        super().__init__()
        self.spec = spec
        self.n_cat = len(spec.vocab_sizes)
        self.seq_names = list(spec.sequence_vocab)
        self.embedding = FusedEmbedding(
            spec.vocab_sizes + [spec.sequence_vocab[s] for s in self.seq_names], dim, sparse=sparse
        )
        self.n_num = len(spec.numeric_fields)
        self.numeric_vectors = (no_decay(nn.Parameter(torch.randn(self.n_num, dim) * 0.01))
                                if self.n_num and numeric_fields else None)
        self.dim = dim
        self.n_fields = self.n_cat + len(self.seq_names) + self.n_num
        self.flat_dim = (self.n_cat + len(self.seq_names)) * dim + self.n_num

    def _id_fields(self, batch: Batch) -> torch.Tensor:
        parts = []
        if self.n_cat:
            table = self.embedding.table.weight
            parts.append(nn.functional.embedding(batch.categorical + self.embedding.offsets[: self.n_cat],
                                                 table, sparse=self.embedding.table.sparse))
        for j, name in enumerate(self.seq_names):
            ids = batch.sequences[name]
            emb = self.embedding(ids, field=self.n_cat + j)  # [B, L, d]
            mask = (ids > 0).unsqueeze(-1).to(emb.dtype)
            parts.append(((emb * mask).sum(1) / mask.sum(1).clamp(min=1.0)).unsqueeze(1))
        if not parts:
            return batch.numeric.new_zeros(len(batch), 0, self.dim)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def fields(self, batch: Batch) -> torch.Tensor:
        """[B, F, d]: one vector per field, numeric fields included (for attention/FM-style models)."""
        out = self._id_fields(batch)
        if self.n_num:
            if self.numeric_vectors is None:
                raise RuntimeError("InputEmbedding built with numeric_fields=False cannot produce field vectors")
            out = torch.cat([out, batch.numeric.unsqueeze(-1) * self.numeric_vectors], dim=1)
        return out

    def flat(self, batch: Batch) -> torch.Tensor:
        """[B, flat_dim]: concatenated id-field embeddings followed by the raw (scaled) numeric values."""
        ids = self._id_fields(batch).flatten(1)
        return torch.cat([ids, batch.numeric], dim=1) if self.n_num else ids
