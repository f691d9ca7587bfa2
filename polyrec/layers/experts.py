"""Mixture-of-experts pieces: softmax gates over experts, computed per sample (no batch statistics)."""

from __future__ import annotations

import torch


def mix(gate_logits: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Combine experts with softmax gate weights.

    gate_logits: [B, G, E] (G gates, e.g. one per task) or [B, E]; experts: [B, E, D].
    Returns [B, G, D] (or [B, D]) and never mixes information across samples of the batch.
    """
    squeeze = gate_logits.dim() == 2
    weights = torch.softmax(gate_logits if not squeeze else gate_logits.unsqueeze(1), dim=-1)
    out = torch.bmm(weights, experts)
    return out.squeeze(1) if squeeze else out
