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
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own SafetensorError (and OSError) on a damaged file
        raise PolyrecError(f"{path} is corrupt or truncated ({_short(exc)}): the run's weights cannot be read. "
                           "Retrain the run, or restore the file from a copy.") from None


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Training state (weights, optimiser, RNG, counters): tensors and plain containers only."""
    atomic_write(Path(path), lambda p: torch.save(state, p))


def load_checkpoint(path: Path, mmap: bool = False) -> dict[str, Any]:
    if not Path(path).exists():
        raise PolyrecError(f"No checkpoint to resume from: {path} does not exist.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # a truncated zip (PytorchStreamReader), a foreign or unsafe pickle, ...
        raise PolyrecError(f"{path} is corrupt or truncated ({_short(exc)}), so the run cannot be resumed. "
                           "Delete checkpoint.pt and train into the folder again without --resume, "
                           "or train into a new --out.") from None


def check_checkpoint(path: Path) -> None:
    """Open a checkpoint without reading its tensors (memory-mapped): a damaged file fails before any data work."""
    load_checkpoint(path, mmap=True)


def _short(exc: Exception) -> str:
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return text if len(text) <= 120 else text[:117] + "..."


def load_state(model: torch.nn.Module, path: Path) -> None:
    """Weights into a model rebuilt from spec.json; a mismatch names both files instead of torch's key dump."""
    try:
        model.load_state_dict(load_weights(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:160]
        raise PolyrecError(f"{path} does not fit the model described by {path.parent / 'spec.json'} ({first}); "
                           "one of the two files was replaced or damaged: retrain the run.") from None
