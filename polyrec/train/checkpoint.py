"""Checkpoints and weights, written atomically and read without unpickling arbitrary objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from polyrec.errors import PolyrecError
from polyrec.utils.io import atomic_write


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    atomic_write(Path(path), lambda p: save_file(tensors, str(p)))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    if not Path(path).exists():
        raise PolyrecError(f"Weights file not found: {path}")
    return load_file(str(path))


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Training state (weights, optimiser, RNG, counters): tensors and plain containers only."""
    atomic_write(Path(path), lambda p: torch.save(state, p))


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not Path(path).exists():
        raise PolyrecError(f"No checkpoint to resume from: {path} does not exist.")
    return torch.load(path, map_location="cpu", weights_only=True)
