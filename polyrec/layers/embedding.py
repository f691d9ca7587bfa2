"""Input layer: one fused embedding table for every categorical and sequence field."""

from __future__ import annotations

import torch
from torch import nn

from polyrec.data.batching import Batch
from polyrec.data.spec import ModelSpec
from polyrec.errors import PolyrecError
from polyrec.layers.decay import no_decay
from polyrec.layers.sequence import NEEDS_TARGET, SequenceEncoderConfig, build_sequence_encoder


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

    Fields are the categorical ids, then each sequence (one vector from its encoder: masked mean by
    default, or target attention / GRU / LSTM / transformer, polyrec.layers.sequence, per the spec's
    `sequence_encoders`), then each numeric value (value x a learned vector, only in `fields`; `flat`
    appends raw values), then each dense vector feature (a learned projection to d in `fields`; its raw
    values in `flat`). A sequence that shares a categorical field's vocabulary (a history of items next
    to the candidate item) reads that field's rows of the table, so both live in one embedding space. A
    history's side fields (event category, behaviour, time gap) are summed into its event embeddings
    (DIN concatenates them; a sum keeps every field at the embedding size), so encoders see one vector per
    event.
    """

    def __init__(self, spec: ModelSpec, dim: int, sparse: bool = False, numeric_fields: bool = True) -> None:
        """`numeric_fields=False` for models that only call `flat`: no unused numeric vectors."""
        super().__init__()
        self.spec = spec
        self.n_cat = len(spec.vocab_sizes)
        self.seq_names = spec.sequence_fields
        shares = spec.sequence_shares
        own = [s for s in spec.sequence_vocab if s not in shares]
        self.embedding = FusedEmbedding(spec.vocab_sizes + [spec.sequence_vocab[s] for s in own], dim, sparse=sparse)
        fields = spec.categorical_fields
        block = {s: fields.index(shares[s]) if s in shares else self.n_cat + own.index(s) for s in spec.sequence_vocab}
        self.seq_fields = [block[s] for s in self.seq_names]
        self.seq_sides = [[(side, block[side]) for side in spec.sequence_sides.get(s, [])] for s in self.seq_names]
        self.seq_targets: list[int | None] = []
        encoders = []
        for s in self.seq_names:
            cfg = SequenceEncoderConfig(**spec.sequence_encoders.get(s, {}))
            target = cfg.target or shares.get(s)
            if target is not None and target not in fields:
                raise PolyrecError(f"Sequence {s!r}: target {target!r} is not a categorical field ({fields}).")
            if target is None and cfg.kind in NEEDS_TARGET:
                raise PolyrecError(f"Sequence {s!r}: the {cfg.kind} encoder needs a target (the candidate's "
                                   "categorical field): share its vocabulary (`vocab:`) or set `target:`.")
            self.seq_targets.append(None if target is None else fields.index(target))
            encoders.append(build_sequence_encoder(cfg, dim, spec.sequence_lengths.get(s, 1)))
        self.seq_encoders = nn.ModuleList(encoders)
        self.n_num = len(spec.numeric_fields)
        self.numeric_vectors = (no_decay(nn.Parameter(torch.randn(self.n_num, dim) * 0.01))
                                if self.n_num and numeric_fields else None)
        # vector features: the numeric matrix's last columns; one projected field each (flat: the raw values)
        self.vector_dims = list(spec.vector_dims.values())
        self.vector_projections = (nn.ModuleList(nn.Linear(d, dim) for d in self.vector_dims)
                                   if numeric_fields else None)
        self.dim = dim
        self.n_fields = self.n_cat + len(self.seq_names) + self.n_num + len(self.vector_dims)
        self.flat_dim = (self.n_cat + len(self.seq_names)) * dim + self.n_num + sum(self.vector_dims)

    def _id_fields(self, batch: Batch) -> torch.Tensor:
        parts = []
        if self.n_cat:
            table = self.embedding.table.weight
            parts.append(nn.functional.embedding(batch.categorical + self.embedding.offsets[: self.n_cat],
                                                 table, sparse=self.embedding.table.sparse))
        for j, (target, encoder) in enumerate(zip(self.seq_targets, self.seq_encoders)):
            emb, mask = self.sequence_tokens(batch, j)
            parts.append(encoder(emb, mask, None if target is None else parts[0][:, target]).unsqueeze(1))
        if not parts:
            return batch.numeric.new_zeros(len(batch), 0, self.dim)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def sequence_tokens(self, batch: Batch, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequence field j's token (event) embeddings [B, L, d] and its mask [B, L] (False = padding)."""
        ids = batch.sequences[self.seq_names[j]]
        emb = self.embedding(ids, field=self.seq_fields[j])
        for side, side_field in self.seq_sides[j]:  # an event = its item + its side fields (same positions)
            emb = emb + self.embedding(batch.sequences[side], field=side_field)
        return emb, ids > 0

    def fields(self, batch: Batch) -> torch.Tensor:
        """[B, F, d]: one vector per field, numeric fields included (for attention/FM-style models)."""
        out = self._id_fields(batch)
        if self.n_num or self.vector_dims:
            if self.numeric_vectors is None and self.vector_projections is None:
                raise RuntimeError("InputEmbedding built with numeric_fields=False cannot produce field vectors")
            parts = [out]
            if self.n_num:
                parts.append(batch.numeric[:, : self.n_num].unsqueeze(-1) * self.numeric_vectors)
            start = self.n_num
            for d, proj in zip(self.vector_dims, self.vector_projections):
                parts.append(proj(batch.numeric[:, start:start + d]).unsqueeze(1))
                start += d
            out = torch.cat(parts, dim=1)
        return out

    def flat(self, batch: Batch) -> torch.Tensor:
        """[B, flat_dim]: concatenated id-field embeddings followed by the raw (scaled) numeric values."""
        ids = self._id_fields(batch).flatten(1)
        return torch.cat([ids, batch.numeric], dim=1) if self.n_num or self.vector_dims else ids
