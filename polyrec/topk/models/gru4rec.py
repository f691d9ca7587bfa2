"""GRU4Rec (Hidasi et al., "Session-based Recommendations with Recurrent Neural Networks", ICLR 2016),
as a next-item model over each user's time-ordered training items (polyrec.topk.models.seqbase).

item embedding -> dropout -> GRU (n_layers, hidden size = embed_dim) -> hidden state per position; the
score of item i is <h_t, e_i> with the input embedding table (weight tying).

Choices where the paper is silent or differs: one user = one sequence (the paper's sessions); no
session-parallel mini-batches: a batch is whole users' windows, padded; the loss defaults to full
softmax cross-entropy over all items at every position (loss=ce, as RecBole's GRU4Rec; the paper's
TOP1/BPR over in-batch samples are not implemented), loss=bce gives one sampled negative per position;
embedding dropout only (the paper tunes dropout on the hidden layer); max_len 50 (RecBole's default).
Padding: sequences are packed, so the GRU never reads a padding slot.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from polyrec.topk.models.base import TopKInfo, register_topk
from polyrec.topk.models.seqbase import SequenceModel, SequenceParams


class GRU4RecParams(SequenceParams):
    """`dropout` applies to the input embeddings; activation/batch_norm are unused."""

    n_layers: int = 1
    loss: Literal["bce", "ce"] = "ce"


@register_topk("gru4rec")
class GRU4Rec(SequenceModel):
    Params = GRU4RecParams

    def __init__(self, info: TopKInfo, embed_dim: int, params: GRU4RecParams) -> None:
        super().__init__(info, embed_dim, params)
        self.drop = nn.Dropout(params.dropout)
        self.gru = nn.GRU(embed_dim, embed_dim, num_layers=params.n_layers, batch_first=True)

    def encode_sequence(self, seq: torch.Tensor) -> torch.Tensor:
        length = seq.shape[1]
        valid = seq != self.pad
        lengths = valid.sum(1).clamp(min=1)
        shift = (length - lengths).unsqueeze(1)  # padding slots on the left
        cols = torch.arange(length, device=seq.device).unsqueeze(0)
        right = seq.gather(1, (cols + shift) % length)  # left-padded -> right-padded
        packed = pack_padded_sequence(self.drop(self.item(right)), lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        out, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=length)
        back = (cols - shift) % length
        return out.gather(1, back.unsqueeze(-1).expand(-1, -1, out.shape[-1])) * valid.unsqueeze(-1)
