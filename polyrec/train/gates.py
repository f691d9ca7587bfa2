"""Mean gate weights per (scenario, gate, expert) over a split: what the report's heatmaps show."""

from __future__ import annotations

from typing import Any

import torch

from polyrec.data.batching import TensorTable
from polyrec.models.base import MultiTaskModel
from polyrec.train.device import autocast


@torch.inference_mode()
def gate_summary(model: MultiTaskModel, table: TensorTable, scenario_names: list[str],
                 batch_size: int = 16384, precision: str = "fp32") -> dict[str, Any]:
    """{gate_name: {"all": [[mean weight]] (G x E), "<scenario>": [[...]], ...}}; {} for gate-less models.
    `precision`: the run's (bf16: forward passes under autocast, as in training and scoring)."""
    model.eval()
    model._gates = {}
    sums: dict[str, torch.Tensor] = {}
    counts = torch.zeros(len(scenario_names))
    try:
        for batch, _ in table.batches(batch_size):
            model._gates.clear()
            with autocast(batch.scenario.device, precision):
                model(batch)
            sc = batch.scenario.cpu()
            counts += torch.bincount(sc, minlength=len(scenario_names)).float()
            for name, w in model._gates.items():
                w = w.float().cpu()  # [B, G, E]
                acc = sums.setdefault(name, torch.zeros(len(scenario_names), *w.shape[1:]))
                acc.index_add_(0, sc, w)
    finally:
        model._gates = None
    out: dict[str, Any] = {}
    for name, acc in sums.items():
        cells = {"all": (acc.sum(0) / counts.sum().clamp(min=1)).tolist()}
        for i, sc in enumerate(scenario_names):
            if counts[i] > 0 and len(scenario_names) > 1:
                cells[sc] = (acc[i] / counts[i]).tolist()
        out[name] = cells
    return out
