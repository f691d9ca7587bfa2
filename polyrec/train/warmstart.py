"""Continual re-training: a CTR-style run warm-started from a finished one (`train.init_from`, `--init-from`).

The new run's encoders are the old run's grown by the new training split (polyrec.data.grow: old tokens keep
their ids, unseen ones are appended, numeric statistics stay the old run's). The new model is built from the
new spec as usual (so new rows get their fresh initialisation), then every tensor of the old model's state is
copied in:

- same shape: as is (dense layers, gates, experts, norms and their running statistics, biases);
- a FusedEmbedding table (all fields in one nn.Embedding at per-field offsets): field by field, each old block
  to its field's new offset (growing one field shifts the offsets of all the fields after it);
- any other tensor whose first dimension grew (a per-field table such as svd's user/item factors and biases):
  its old rows as its first rows, as old ids are the first ids of a grown vocabulary.

So before the first step every row made only of old ids scores exactly as in the old run (what a model reads
from the training split itself is the new split's: svdpp's N(u) of a user with new ratings, svd's clipping range
of a regression task, so those rows may move). The optimiser starts fresh: Adam moments are not carried over
(they would need the same row remapping, and the old run's checkpoint holds its last epoch's, not its best
epoch's). Only CTR-style runs warm-start; top-K runs refuse `train.init_from` (RunKind.validate).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from polyrec.config import RunConfig, config_differences, load_config
from polyrec.errors import PolyrecError
from polyrec.layers.embedding import FusedEmbedding
from polyrec.train.loaded import LoadedRun, load_run
from polyrec.utils.io import read_json



def check_init_from(cfg: RunConfig) -> None:
    """Before any folder or data: train.init_from names a finished CTR-style run with the same model settings
    (its config only; the weights are read, and checked, when the run is built)."""
    if cfg.train.init_from is None:
        return
    run_dir = _check_folder(cfg.train.init_from)
    try:
        old = load_config(run_dir / "config.yaml")
    except PolyrecError as exc:
        raise PolyrecError(f"--init-from {run_dir}: {exc}") from None
    check_compatible(old, cfg, run_dir)


def _check_folder(path: str | Path) -> Path:
    """A folder holding a finished CTR-style run, or one line saying what it is instead."""
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise PolyrecError(f"--init-from {run_dir}: no such run folder.")
    spec = run_dir / "spec.json"
    if spec.exists():
        try:
            kind = read_json(spec).get("kind", "ctr")
        except (PolyrecError, AttributeError):
            kind = "ctr"  # a damaged spec.json fails when the run is loaded, naming the file
        if kind != "ctr":
            raise PolyrecError(f"--init-from {run_dir}: a {kind} run; only CTR-style runs can be warm-started from.")
    if not (run_dir / "metrics.json").exists() and (run_dir / "config.yaml").exists():
        raise PolyrecError(f"--init-from {run_dir}: the run has not finished (no metrics.json); warm-start from a "
                           "finished run.")
    for name in ("config.yaml", "encoders.json", "spec.json", "model.safetensors"):
        if not (run_dir / name).exists():
            raise PolyrecError(f"--init-from {run_dir} is not a finished polyrec run: {name} is missing.")
    return run_dir


def load_init_run(path: str | Path) -> LoadedRun:
    """The finished CTR-style run to warm-start from; anything else is one line naming the folder."""
    run_dir = _check_folder(path)
    try:
        return load_run(run_dir)
    except PolyrecError as exc:
        raise PolyrecError(f"--init-from {run_dir}: {exc}") from None


def check_compatible(old: RunConfig, new: RunConfig, run_dir: Path) -> None:
    """Same model, parameters, embedding size and sequence encoders, or one line naming what differs."""
    a, b = old.model.model_dump(mode="json"), new.model.model_dump(mode="json")
    if a != b:
        diff = "; ".join(config_differences({"model": a}, {"model": b}))
        raise PolyrecError(f"--init-from {run_dir}: the model differs from the old run's ({diff}); a warm start "
                           "needs the same model settings.")


def _blocks(module: FusedEmbedding) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, sizes) of a fused table's per-field blocks."""
    offsets = module.offsets.detach().cpu().numpy().astype(np.int64)
    total = module.table.weight.shape[0]
    if len(offsets) == 0:
        return np.zeros(1, np.int64), np.array([total], np.int64)
    return offsets, np.diff(np.append(offsets, total))


def _block_rows(offsets: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Row indices offsets[j] + 0..sizes[j]-1 of every block, concatenated (vectorised)."""
    starts = np.repeat(offsets - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
    return starts + np.arange(int(sizes.sum()))


def transfer_weights(old: nn.Module, new: nn.Module) -> dict[str, str]:
    """Copy `old`'s state into `new` (see the module docstring); returns how each grown tensor was copied."""
    old_state, new_state = old.state_dict(), new.state_dict()
    if set(old_state) != set(new_state):
        extra = sorted(set(new_state) ^ set(old_state))[:4]
        raise PolyrecError(f"--init-from: the old run's weights do not match the new model (tensors {extra}); "
                           "the old run was trained by another polyrec version or with other settings.")
    fused = {f"{name}.table.weight": (_blocks(m), _blocks(dict(old.named_modules())[name]))
             for name, m in new.named_modules() if isinstance(m, FusedEmbedding)}
    out: dict[str, torch.Tensor] = {}
    grown: dict[str, str] = {}
    for key, target in new_state.items():
        src = old_state[key].to(target.device)
        if src.shape == target.shape:
            out[key] = src.clone()
            continue
        if src.dim() != target.dim() or src.shape[1:] != target.shape[1:] or src.shape[0] > target.shape[0]:
            raise PolyrecError(f"--init-from: tensor {key} is {tuple(src.shape)} in the old run and "
                               f"{tuple(target.shape)} in the new model; only vocabulary rows can grow.")
        value = target.detach().clone()
        if key in fused:
            (new_off, new_size), (old_off, old_size) = fused[key]
            if len(new_off) != len(old_off) or (new_size < old_size).any():
                raise PolyrecError(f"--init-from: the fields of {key} do not match the old run's.")
            src_rows = torch.from_numpy(_block_rows(old_off, old_size)).to(target.device)
            dst_rows = torch.from_numpy(_block_rows(new_off, old_size)).to(target.device)
            value[dst_rows] = src[src_rows]
            grown[key] = "per field"
        else:
            value[: src.shape[0]] = src
            grown[key] = "first rows"
        out[key] = value
    new.load_state_dict(out)
    return grown


def warm_start(model: nn.Module, run_dir: str | Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Copy a finished run's weights into `model` (built from the grown spec); what grew, for metrics.json."""
    old = load_init_run(run_dir)
    grown = transfer_weights(old.model, model)
    new_sizes = model.spec.vocab_sizes  # type: ignore[union-attr]
    rows = {f: [int(a), int(b)] for f, a, b in zip(old.spec.categorical_fields, old.spec.vocab_sizes, new_sizes)
            if a != b}
    log(f"warm start from {run_dir}: weights copied; vocabularies grown (old -> new rows) {rows or 'none'}"
        + (f" ({', '.join(f'{k}: {v}' for k, v in grown.items())})" if grown else ""))
    return {"init_from": str(run_dir), "grown": rows}


def init_config_base(run_dir: str | Path, new_data: bool, new_schema: bool) -> dict[str, Any]:
    """The config a `polyrec train --init-from RUN_DIR` without --config starts from: the old run's model and
    train sections (so the model matches), and its data section unless the command names new data; new files
    without --schema are read with the old run's resolved schema (RUN_DIR/schema.yaml)."""
    old = load_init_run(run_dir)
    raw = old.config.model_dump(mode="json")
    base: dict[str, Any] = {"model": raw["model"], "train": raw["train"]}
    if not new_data:
        base["data"] = raw["data"]
    elif not new_schema:
        base["data"] = {"schema_file": str(Path(run_dir).resolve() / "schema.yaml")}
    return base
