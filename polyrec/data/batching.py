"""Whole-split tensors and batches as index slices: no per-row Dataset or collate on the hot path."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from polyrec.data.encoders import EncodedSplit


@dataclass
class Batch:
    """Model inputs for a batch. Labels travel separately so a model can never read them."""

    categorical: torch.Tensor  # int32 [B, F_cat]
    numeric: torch.Tensor  # float32 [B, F_num]
    sequences: dict[str, torch.Tensor]  # name -> int32 [B, L]
    scenario: torch.Tensor  # int64 [B]

    def __len__(self) -> int:
        return self.scenario.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Batch(move(self.categorical), move(self.numeric), {k: move(v) for k, v in self.sequences.items()},
                     move(self.scenario))


def _tensor(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.array(a, copy=True)).to(dtype)


class TensorTable:
    """One split held as whole-column tensors (optionally on an accelerator)."""

    def __init__(self, data: EncodedSplit, device: torch.device | str = "cpu",
                 deliver_to: torch.device | str | None = None, pin: bool = False) -> None:
        """Tensors stored on `device`; batches delivered on `deliver_to` (default: `device`). Host storage for a
        GPU model: `device="cpu", pin=True, deliver_to="cuda"` (each batch copied with non_blocking=True)."""
        def put(t: torch.Tensor) -> torch.Tensor:
            t = t.to(device)
            return t.pin_memory() if pin else t

        self.categorical = put(_tensor(data.categorical, torch.int32))
        self.numeric = put(_tensor(data.numeric, torch.float32))
        self.sequences = {k: put(_tensor(v, torch.int32)) for k, v in data.sequences.items()}
        self.scenario = put(_tensor(data.scenario, torch.int64))
        self.labels = put(_tensor(data.labels, torch.float32))
        target = torch.device(deliver_to) if deliver_to is not None else self.scenario.device
        self.deliver_to = None if target == self.scenario.device else target
        self.user = data.user
        self.cold = data.cold  # role -> bool [N] (numpy): only metrics read it
        self.n = len(data)

    def __len__(self) -> int:
        return self.n

    def take(self, idx: torch.Tensor | slice) -> tuple[Batch, torch.Tensor]:
        """A batch by index tensor (a gather) or by slice (a view, zero copy)."""
        if isinstance(idx, slice):
            pick = lambda t: t[idx]  # noqa: E731
        else:
            pick = lambda t: t.index_select(0, idx)  # noqa: E731
        batch = Batch(pick(self.categorical), pick(self.numeric),
                      {k: pick(v) for k, v in self.sequences.items()}, pick(self.scenario))
        labels = pick(self.labels)
        if self.deliver_to is not None:  # host storage, accelerator model: one copy per batch
            return batch.to(self.deliver_to, non_blocking=True), labels.to(self.deliver_to, non_blocking=True)
        return batch, labels

    def batches(
        self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
        share: tuple[int, int] | None = None,
    ) -> Iterator[tuple[Batch, torch.Tensor]]:
        """`share=(k, K)`: process k of K takes rows k, k+K, ... of every global batch of the (shared) epoch
        permutation, and skips a last batch with fewer than K rows (multi-process training)."""
        k, size = share if share is not None else (0, 1)
        if size > 1 and not shuffle:
            raise ValueError("a share of the batches is for shuffled training epochs")
        if shuffle:
            perm = torch.randperm(self.n, generator=generator).to(self.scenario.device)
            for start in range(0, self.n, batch_size):
                idx = perm[start:start + batch_size]
                if size == 1:
                    yield self.take(idx)
                elif len(idx) >= size:
                    yield self.take(idx[k::size])
        else:
            for start in range(0, self.n, batch_size):
                yield self.take(slice(start, start + batch_size))

    def num_batches(self, batch_size: int) -> int:
        return (self.n + batch_size - 1) // batch_size
