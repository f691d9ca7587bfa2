"""Training the sequential top-K models with the one training loop (polyrec.train.trainer.Trainer).

Next to PairTrainable / PairwiseTable (polyrec.topk.trainer), which train on (user, item) pairs, the
sequence models train on whole users: `SequenceTable` yields batches of users' training windows (the last
max_len + 1 training items: inputs = all but the last, targets = all but the first), with one negative per
position drawn every epoch (never among the user's training items; seeded by (seed, epoch), so a resumed
run draws the same ones). `SequenceTrainable` presents the model to the loop; its logits' rows are the
trained positions (see SequenceModel.train_logits) and the table gives the matching labels.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from polyrec.errors import PolyrecError
from polyrec.topk.models.seqbase import SequenceBatch, SequenceModel
from polyrec.topk.negatives import NegativeSampler
from polyrec.topk.sequences import UserSequences
from polyrec.topk.trainer import ModelTrainable


class SequenceTable:
    """Users with at least two training items, as windows; labels [rows of the logits, T]."""

    def __init__(self, sequences: UserSequences, sampler: NegativeSampler | None, max_len: int, pad: int,
                 loss: str = "bce") -> None:
        self.s, self.sampler, self.max_len, self.loss = sequences, sampler, max_len, loss
        if loss == "bce" and sampler is None:
            raise PolyrecError("loss=bce needs a negative sampler.")
        self.users = np.flatnonzero(sequences.n_train >= 2).astype(np.int64)
        if not len(self.users):
            raise PolyrecError("No user has two training items: a next-item model has nothing to learn from.")
        ends = sequences.ends("train")
        window = sequences.windows(self.users, ends, max_len + 1, -1)  # -1: no item
        pos = ends[self.users][:, None] - max_len - 1 + np.arange(max_len + 1)[None, :]
        valid = window >= 0
        self.inputs = torch.from_numpy(np.where(valid[:, :-1], window[:, :-1], pad))
        self.targets = torch.from_numpy(np.where(valid[:, 1:], window[:, 1:], 0))
        self.mask = torch.from_numpy(valid[:, :-1] & valid[:, 1:])
        labels = sequences.labels[np.clip(pos[:, 1:], 0, None)]  # [U, L, T]
        self.labels = torch.from_numpy(labels)
        if loss == "ce":  # softmax positions: next items that are positives of the target task
            self.mask &= self.labels[..., 0] == 1

    def __len__(self) -> int:
        return len(self.users)

    def num_batches(self, batch_size: int) -> int:
        return (len(self) + batch_size - 1) // batch_size

    def batches(self, batch_size: int, shuffle: bool = True,
                generator: torch.Generator | None = None) -> Iterator[tuple[SequenceBatch, torch.Tensor]]:
        negatives = None
        if self.loss == "bce":
            rng = np.random.default_rng(generator.initial_seed() if generator is not None else 0)
            negatives = torch.from_numpy(self.sampler.sample(self.users, self.max_len, rng).astype(np.int64))
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for start in range(0, len(self), batch_size):
            idx = order[start:start + batch_size]
            mask = self.mask[idx]
            pos = self.labels[idx][mask]  # [P, T]
            labels = torch.ones_like(pos) if self.loss == "ce" else torch.cat([pos, torch.zeros_like(pos)])
            yield SequenceBatch(torch.from_numpy(self.users)[idx], self.inputs[idx], self.targets[idx],
                                None if negatives is None else negatives[idx], mask), labels


class SequenceTrainable(ModelTrainable):
    """A SequenceModel as the training loop's Trainable (state-dict keys as PairTrainable's: model.*)."""

    def __init__(self, model: SequenceModel) -> None:
        super().__init__(model)
        self.heads = list(model.heads)
        self.task_names = list(model.info.task_names)

    def forward(self, batch: SequenceBatch) -> torch.Tensor:
        return self.model.train_logits(batch)

    def extra_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        return None
