"""What the sequential top-K models (gru4rec, sasrec, sasrec-mt) share: inputs, scoring, training logits.

A sequence model encodes a user's item sequence (polyrec.topk.sequences; left-padded with the id n_items)
into one hidden state per position, [B, L, D]. The user's vector is the last position's state (per task,
for the multi-task variant); an item's score is its dot product with the item embedding table, which
the input embedding shares (as SASRec and RecBole's GRU4Rec). Full ranking: every item is scored.

Which input a user gets depends on the split predicted (`set_history`): "val" ranks from the training
items, "test" (the default) from training + validation items, "all" from everything (recommend).

Training (polyrec.topk.seqtrain) sees batches of users' training sequences and predicts the next item at
every position. Losses (`loss`):
* "bce" (SASRec's): per position, the next item (labels = its task labels) and one sampled negative
  (labels 0), a binary cross-entropy per head;
* "ce" (RecBole's default): softmax cross-entropy over all items at each position whose next item is a
  positive of the target task, given to the head's BCE as the logit s_pos - logsumexp(s_other), whose
  -log sigmoid is exactly -log softmax(s)_pos. Single-head models only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from polyrec.data.spec import Head
from polyrec.errors import PolyrecError
from polyrec.models.base import ModelParams
from polyrec.topk.models.base import TopKInfo, TopKModel


class SequenceParams(ModelParams):
    max_len: int = 50  # input sequences keep their last max_len items
    loss: Literal["bce", "ce"] = "bce"


@dataclass
class SequenceBatch:
    """Users' training windows: inputs [B, L] (left-padded), next items and negatives [B, L], mask [B, L]
    (positions that are trained; the rows of the logits are these positions, in row-major order)."""

    users: torch.Tensor
    inputs: torch.Tensor
    targets: torch.Tensor
    negatives: torch.Tensor | None
    mask: torch.Tensor
    scenario: None = None

    def __len__(self) -> int:
        return int(self.users.shape[0])


class SequenceModel(TopKModel):
    """Base: subclasses build their encoder and implement `encode_sequence`."""

    Params: ClassVar[type[ModelParams]] = SequenceParams
    sequential: ClassVar[bool] = True
    multi_task: ClassVar[bool] = False  # True: one head per task (per-task user vectors)

    def __init__(self, info: TopKInfo, embed_dim: int, params: SequenceParams) -> None:
        super().__init__(info, embed_dim, params)
        name = self.registry_name or type(self).__name__
        if info.sequences is None:
            raise PolyrecError(f"Model {name!r} needs the users' time-ordered item sequences (a top-K run builds "
                               "them from data.split=leave_last_out data).")
        if not self.multi_task:
            self.heads = [Head(info.target, info.target, "binary")]
        if params.loss == "ce" and len(self.heads) > 1:
            raise PolyrecError(f"Model {name!r}: loss=ce is a softmax over items for one head; the multi-task "
                               "model trains with loss=bce.")
        self.sequences = info.sequences
        self.pad = info.n_items
        self.item = nn.Embedding(info.n_items + 1, embed_dim, padding_idx=info.n_items)
        nn.init.normal_(self.item.weight[:-1], std=embed_dim ** -0.5)
        self.history = "test"

    # --- to implement ----------------------------------------------------------------------------------
    def encode_sequence(self, seq: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, L, D] of left-padded item sequences [B, L]; state t reads items <= t only."""
        raise NotImplementedError

    def user_vectors(self, states: torch.Tensor) -> torch.Tensor:
        """Per-head user vectors [P, H, D] from hidden states [P, D] (one head: the state itself)."""
        return states.unsqueeze(1)

    # --- inputs and scoring ----------------------------------------------------------------------------
    def set_history(self, split: str) -> None:
        """Score users from the input that predicts `split` (val, test, all; see polyrec.topk.sequences)."""
        self.sequences.ends(split)  # validates the name
        self.history = split

    def inputs(self, users: torch.Tensor) -> torch.Tensor:
        s = self.sequences
        seq = s.windows(users.cpu().numpy(), s.ends(self.history), self.params.max_len, self.pad)
        return torch.from_numpy(np.ascontiguousarray(seq)).to(users.device)

    def user_states(self, users: torch.Tensor) -> torch.Tensor:
        """[B, H, D]: the users' vectors from the last position of their input sequences."""
        return self.user_vectors(self.encode_sequence(self.inputs(users))[:, -1])

    def score(self, users: torch.Tensor, items: torch.Tensor, cache: Any) -> torch.Tensor:
        return (self.user_states(users) * self.item.weight[items].unsqueeze(1)).sum(-1)

    def score_all(self, users: torch.Tensor, cache: Any) -> torch.Tensor:
        return self.user_states(users)[:, self.ranking_head] @ self.item.weight[:-1].T

    def train_logits(self, batch: SequenceBatch) -> torch.Tensor:
        """Logits of the trained positions: bce [2P, H] (next items, then negatives); ce [P, 1]."""
        states = self.encode_sequence(batch.inputs)[batch.mask]  # [P, D]
        vec = self.user_vectors(states)  # [P, H, D]
        table = self.item.weight
        targets = batch.targets[batch.mask]
        if self.params.loss == "ce":
            scores = vec[:, 0] @ table[:-1].T  # [P, n_items]
            pos = scores.gather(1, targets.unsqueeze(1))
            rest = scores.scatter(1, targets.unsqueeze(1), float("-inf"))
            return pos - torch.logsumexp(rest, dim=1, keepdim=True)
        if batch.negatives is None:
            raise PolyrecError("loss=bce training batches need sampled negatives.")
        pos = (vec * table[targets].unsqueeze(1)).sum(-1)
        neg = (vec * table[batch.negatives[batch.mask]].unsqueeze(1)).sum(-1)
        return torch.cat([pos, neg])

    def last_shared_layer(self) -> nn.Parameter:
        """GradNorm's W: the item table (input embeddings and the output layer of every head)."""
        return self.item.weight


def positions_from_end(seq: torch.Tensor) -> torch.Tensor:
    """[L] position ids counted from the last slot (last = 0), so padding never shifts an item's position."""
    length = seq.shape[1]
    return torch.arange(length - 1, -1, -1, device=seq.device)

