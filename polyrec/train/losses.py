"""Per-head losses on logits: BCE-with-logits for binary heads, MSE for regression heads.

Each head's loss is the mean over the rows of its sample space in the batch; a head with no such
row contributes 0 (not NaN) and no gradient. With `per_scenario=True` (train.loss_reduction =
scenario_task, the SAPENet paper's L = sum_s sum_t mean BCE over scenario s's samples) a head's loss is
instead the sum over the scenarios present in the batch of the mean over that scenario's rows, so a
small scenario weighs as much as a large one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from polyrec.data.spec import Head


class HeadLosses:
    def __init__(self, heads: Sequence[Head], task_names: Sequence[str], per_scenario: bool = False,
                 mean_count: Callable[[torch.Tensor], torch.Tensor] | None = None, n_scenarios: int | None = None
                 ) -> None:
        """`mean_count` (multi-process training): the mean over processes of a tensor of row counts. A head's loss is
        then this process's sum over the mean count, so that DDP's average of the processes' gradients is the
        gradient of the global batch's mean, even when the processes' shares hold different numbers of a head's
        rows (a last batch that K does not divide, a conditional head's sample space). `n_scenarios` fixes the
        number of per-scenario slots, which all processes must agree on."""
        self.per_scenario, self.mean_count, self.n_scenarios = per_scenario, mean_count, n_scenarios
        trained = [i for i, h in enumerate(heads) if h.train]
        self.names = [heads[i].name for i in trained]
        self.head_idx = torch.tensor(trained, dtype=torch.long)
        self.label_idx = torch.tensor([task_names.index(heads[i].task) for i in trained], dtype=torch.long)
        space = [task_names.index(heads[i].space) if heads[i].space else -1 for i in trained]
        self.space_idx = torch.tensor(space, dtype=torch.long)
        self.has_space = any(s >= 0 for s in space)
        self.binary = torch.tensor([heads[i].kind == "binary" for i in trained])
        self.all_binary = bool(self.binary.all())

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor,
                 scenario: torch.Tensor | None = None) -> torch.Tensor:
        """logits [B, H], labels [B, T] (, scenario ids [B] when per_scenario) -> losses [H_trained]."""
        out = logits.index_select(1, self.head_idx) if len(self.head_idx) != logits.shape[1] else logits
        y = labels.index_select(1, self.label_idx)
        if self.all_binary:
            per_row = F.binary_cross_entropy_with_logits(out, y, reduction="none")
        else:
            binary = self.binary.to(out.device)
            per_row = torch.where(binary, F.binary_cross_entropy_with_logits(out, y, reduction="none"),
                                  (out - y) ** 2)
        if not self.has_space and not self.per_scenario:
            if self.mean_count is None:
                return per_row.mean(0)
            return per_row.sum(0) / self._denominator(per_row.new_tensor(float(len(per_row))))
        mask = torch.ones_like(per_row)
        if self.has_space:
            cols = self.space_idx >= 0
            space_labels = labels.index_select(1, self.space_idx.clamp(min=0).to(labels.device))
            mask = torch.where(cols.to(labels.device), (space_labels == 1).to(per_row.dtype), mask)
        if not self.per_scenario:
            return (per_row * mask).sum(0) / self._denominator(mask.sum(0))
        if scenario is None:
            raise ValueError("per-scenario loss reduction needs the batch's scenario ids")
        n_slots = self.n_scenarios or (int(scenario.max()) + 1 if scenario.numel() else 1)
        sums = per_row.new_zeros(n_slots, per_row.shape[1]).index_add_(0, scenario, per_row * mask)
        counts = mask.new_zeros(n_slots, mask.shape[1]).index_add_(0, scenario, mask)
        return (sums / self._denominator(counts)).sum(0)  # scenarios absent from the batch (count 0) add 0

    def _denominator(self, counts: torch.Tensor) -> torch.Tensor:
        """The counts a mean divides by (those of all processes' rows, per process, in multi-process training);
        1 where there is no row, so an empty head or cell adds 0."""
        if self.mean_count is not None:
            counts = self.mean_count(counts)
            return torch.where(counts > 0, counts, torch.ones_like(counts))
        return counts.clamp(min=1.0)
