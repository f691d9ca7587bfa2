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
        if share is not None and share[1] > 1 and not shuffle:
            raise ValueError("a share of the batches is for shuffled training epochs")
        if shuffle:
            yield from self.batches_in(torch.randperm(self.n, generator=generator), batch_size, share)
        else:
            for start in range(0, self.n, batch_size):
                yield self.take(slice(start, start + batch_size))

    def batches_in(self, order: torch.Tensor, batch_size: int, share: tuple[int, int] | None = None
                   ) -> Iterator[tuple[Batch, torch.Tensor]]:
        """Consecutive batches of the rows `order` names (see `batches` for `share`)."""
        k, size = share if share is not None else (0, 1)
        order = order.to(self.scenario.device)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            if size == 1:
                yield self.take(idx)
            elif len(idx) >= size:
                yield self.take(idx[k::size])

    def label_array(self) -> np.ndarray:
        return self.labels.cpu().numpy()

    def scenario_array(self) -> np.ndarray:
        return self.scenario.cpu().numpy()

    def num_batches(self, batch_size: int) -> int:
        return (self.n + batch_size - 1) // batch_size


class BlockTable:
    """One split read from its memory-mapped columns (a chunked cache entry): memory holds one shuffle window.

    A shuffled epoch permutes the split's blocks of `block_rows` contiguous rows, reads `window_rows` worth of them
    at a time (sorted, so reads go forward) and permutes the rows within the window; rows left over when a window
    does not fill a whole last batch join the next window, so every batch but the epoch's last is full and all
    processes of a multi-process run see the same global batches. A window at least the split's size is a full
    shuffle; what a smaller one costs is measured in benchmarks/scale.py."""

    def __init__(self, data: EncodedSplit, block_rows: int = 4096, window_rows: int = 1 << 20,
                 deliver_to: torch.device | str = "cpu") -> None:
        self.data, self.n = data, len(data)
        self.block, self.window = block_rows, max(window_rows, block_rows)
        self.deliver_to = torch.device(deliver_to)
        self.pin = self.deliver_to.type == "cuda"
        self.user, self.cold = data.user, data.cold

    def __len__(self) -> int:
        return self.n

    def _table(self, rows: EncodedSplit) -> TensorTable:
        return TensorTable(rows, "cpu", deliver_to=self.deliver_to, pin=self.pin)

    def take(self, idx: slice) -> tuple[Batch, torch.Tensor]:
        return self._table(self.data.rows(idx)).take(slice(None))

    def batches(
        self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
        share: tuple[int, int] | None = None,
    ) -> Iterator[tuple[Batch, torch.Tensor]]:
        if not shuffle:
            if share is not None and share[1] > 1:
                raise ValueError("a share of the batches is for shuffled training epochs")
            for start in range(0, self.n, batch_size):
                yield self.take(slice(start, start + batch_size))
            return
        n_blocks = -(-self.n // self.block)
        order = torch.randperm(n_blocks, generator=generator).numpy()
        per_window = max(1, self.window // self.block)
        carry: EncodedSplit | None = None
        for first in range(0, n_blocks, per_window):
            blocks = np.sort(order[first:first + per_window])
            starts = blocks * self.block
            lengths = np.minimum(starts + self.block, self.n) - starts
            idx = np.repeat(starts - np.cumsum(np.r_[0, lengths[:-1]]), lengths) + np.arange(lengths.sum())
            rows = self.data.rows(idx)
            rows = rows if carry is None else carry.concat(rows)
            perm = torch.randperm(len(rows), generator=generator)
            last = first + per_window >= n_blocks
            full = len(rows) if last else len(rows) // batch_size * batch_size
            yield from self._table(rows).batches_in(perm[:full], batch_size, share)
            carry = None if last else rows.rows(perm[full:].numpy())

    def num_batches(self, batch_size: int) -> int:
        return (self.n + batch_size - 1) // batch_size

    def label_array(self) -> np.ndarray:
        return np.asarray(self.data.labels)

    def scenario_array(self) -> np.ndarray:
        return np.asarray(self.data.scenario)


SplitTable = TensorTable | BlockTable  # what training, evaluation and prediction read a split from
