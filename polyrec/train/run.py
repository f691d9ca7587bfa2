"""A training run end to end: config -> data -> model -> trainer -> run folder with metrics and weights.

Run folder layout:
  config.yaml       the resolved configuration (re-running it reproduces the run)
  encoders.json     fitted encoders (schema included): raw values map exactly as in training
  spec.json         model spec and heads, so the model is rebuilt without the data
  metrics.jsonl     one line per epoch (train loss, samples/s, validation metrics)
  steps.jsonl       losses and task weights every `log_every` steps
  metrics.json      final metrics of the best weights on validation and test
  gates.json        mean gate weight per (scenario, gate, expert) on test, for expert models
  model.safetensors best weights;  checkpoint.pt  last epoch's full state (for --resume)
  tensorboard/      TensorBoard event files (train.tensorboard; see polyrec.train.tracking)
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from polyrec import __version__
from polyrec.balance import balancer_for_heads
from polyrec.config import RunConfig, check_device, load_config
from polyrec.data.batching import TensorTable
from polyrec.data.encoders import Encoders
from polyrec.errors import PolyrecError, close_matches
from polyrec.models import ModelSpec, build_model
from polyrec.models.base import MultiTaskModel
from polyrec.recipes.prepare import PreparedData, describe, prepare
from polyrec.train.checkpoint import check_checkpoint, load_weights
from polyrec.train.gates import gate_summary
from polyrec.train.tracking import chain_callbacks, make_tracker
from polyrec.train.trainer import CHECKPOINT, WEIGHTS, Trainer, evaluate_table
from polyrec.train.rundir import claim
from polyrec.utils.io import atomic_write_text, read_json


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]]


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def validate_config(cfg: RunConfig) -> None:
    """Fail fast on unknown names and parameters and on a device this machine lacks, before any data is read."""
    from polyrec.balance import balancer_params
    from polyrec.models.base import model_params
    from polyrec.recipes.prepare import get_recipe

    get_recipe(cfg.data.dataset)
    if cfg.topk is not None:
        from polyrec.topk.models.base import topk_model_params

        topk_model_params(cfg.model.name, cfg.model.params())
        if cfg.train.loss_reduction != "task":
            raise PolyrecError("train.loss_reduction=scenario_task needs scenarios; top-K runs have none.")
    else:
        model_params(cfg.model.name, cfg.model.params())
    balancer_params(cfg.train.balance, cfg.train.balance_params)
    check_device(cfg.train.device)


RUN_FILES = ("config.yaml", "encoders.json", "schema.yaml", "spec.json", "metrics.jsonl", "steps.jsonl", "tensorboard")


def check_run_dir(cfg: RunConfig, run_dir: Path, resume: bool, log: Callable[[str], None] = print) -> bool:
    """Refuse to overwrite a run or to resume a different one (or from a damaged checkpoint); the caller has
    validated the config. A folder whose run never finished an epoch (config.yaml, no checkpoint, no
    metrics.json) is started again from scratch, with or without --resume. Returns whether training resumes."""
    started = (run_dir / CHECKPOINT).exists() or (run_dir / "metrics.json").exists()
    if resume and not (run_dir / CHECKPOINT).exists():
        if started or not (run_dir / "config.yaml").exists():
            raise PolyrecError(f"Cannot resume: {run_dir / CHECKPOINT} does not exist.")
        resume = False
        log(f"{run_dir}: its run never finished an epoch (no {CHECKPOINT}); starting it from epoch 1")
    if resume:
        saved = load_config(run_dir / "config.yaml")
        if saved.model_dump() != cfg.model_dump():
            raise PolyrecError(f"Cannot resume {run_dir}: its config.yaml differs from the requested config. "
                               "Resume with `polyrec train --resume --out RUN_DIR` alone.")
        check_checkpoint(run_dir / CHECKPOINT)  # a damaged checkpoint fails here, before the data is read
        return True
    if started:
        raise PolyrecError(f"{run_dir} already holds a run. Use --resume to continue it, or choose another --out.")
    for name in RUN_FILES:  # what a start that failed before its first epoch left behind
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    return False


def run_summary(dataset: str, cfg: RunConfig, monitor: str, fit: Any, n_params: int, t0: float, rows: Any,
                notes: list[str], metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """metrics.json of a finished run (CTR-style or top-K): what ran, how long, and the metrics per split."""
    return {
        "dataset": dataset, "model": cfg.model.name, "seed": cfg.train.seed, **extra,
        "best_epoch": fit.best_epoch, "epochs_run": len(fit.history), "stopped_early": fit.stopped_early,
        "monitor": monitor, "best_val_monitor": fit.best_score, "parameters": n_params,
        "train_seconds": sum(h["train_seconds"] for h in fit.history),
        # every session of a resumed run counts (up to each interrupted session's last checkpoint)
        "wall_seconds": fit.prior_wall_seconds + time.perf_counter() - t0, "sessions": fit.sessions, "rows": rows, "data_notes": notes,
        "versions": {"polyrec": __version__, "torch": torch.__version__, "python": platform.python_version()},
        **metrics,
    }


def train_run(cfg: RunConfig, run_dir: Path, resume: bool = False, log: Callable[[str], None] = print,
              progress_factory: Callable[[int], Any] | None = None, download: bool = True,
              epoch_callback: Callable[[dict[str, Any], list[dict[str, Any]]], None] | None = None,
              evaluate_test: bool = True) -> RunResult:
    """Train into `run_dir`, which this process holds (polyrec.train.rundir.claim) from the first check to
    metrics.json. `evaluate_test=False` (tuning trials) never builds or scores the test split."""
    run_dir = Path(run_dir)
    validate_config(cfg)  # unknown names: no folder is created
    with claim(run_dir):
        resume = check_run_dir(cfg, run_dir, resume, log)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if cfg.topk is not None:  # rank-all-items runs (polyrec.topk) share the run folder and the loop
            from polyrec.topk.run import train_topk_run

            return train_topk_run(cfg, run_dir, resume=resume, log=log, progress_factory=progress_factory,
                                  download=download, epoch_callback=epoch_callback, evaluate_test=evaluate_test)
        return _train_ctr_run(cfg, run_dir, resume, log, progress_factory, download, epoch_callback, evaluate_test)


def write_run_files(run_dir: Path, cfg: RunConfig, spec: dict[str, Any], encoders: Encoders | None = None) -> None:
    """config.yaml, encoders.json and spec.json, written when everything that can fail before training has
    been built (data, model, balancer, optimiser, monitor), so a failed start leaves no half-run behind."""
    atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    if encoders is not None:
        encoders.save(run_dir / "encoders.json")
        # the resolved schema, readable beside config.yaml (whose paths are absolute): the run works from anywhere
        atomic_write_text(run_dir / "schema.yaml", encoders.schema_yaml())
    atomic_write_text(run_dir / "spec.json", json.dumps(spec, indent=1, default=str))


def _train_ctr_run(cfg: RunConfig, run_dir: Path, resume: bool, log: Callable[[str], None],
                   progress_factory: Callable[[int], Any] | None, download: bool,
                   epoch_callback: Callable[[dict[str, Any], list[dict[str, Any]]], None] | None,
                   evaluate_test: bool) -> RunResult:
    data = prepare(cfg.data, seed=cfg.train.seed, download=download, log=log)
    log(describe(data))
    spec = data.model_spec()
    _seed_everything(cfg.train.seed)
    model = build_model(cfg.model.name, spec, cfg.model.embed_dim, cfg.model.params()).to(cfg.train.device)
    balancer = balancer_for_heads(cfg.train.balance, model.heads, cfg.train.balance_params)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model {cfg.model.name}: {n_params:,} parameters; heads {[h.name for h in model.heads]}")
    tables = {k: TensorTable(v, cfg.train.device) for k, v in data.splits.items() if evaluate_test or k != "test"}
    oov_columns = [name in data.encoders.vocabularies for name in data.encoders.categorical_fields]
    trainer = Trainer(model, cfg.train, balancer, run_dir, log, oov_columns=oov_columns)
    if not resume:
        trainer.check_monitor(tables["val"], spec.scenario_names)
        write_run_files(run_dir, cfg, {
            "model": cfg.model.name, "embed_dim": cfg.model.embed_dim, "params": cfg.model.params(),
            "spec": spec.to_dict(), "heads": [h.__dict__ for h in model.heads],
            "dataset": data.dataset, "cache_entry": data.entry.name}, data.encoders)
    tracker = make_tracker(cfg, run_dir, log, resume=resume)
    t0 = time.perf_counter()
    try:
        fit = trainer.fit(tables["train"], tables["val"], spec.scenario_names, resume=resume,
                          progress_factory=progress_factory, epoch_callback=chain_callbacks(tracker, epoch_callback))
    finally:
        if tracker is not None:
            tracker.close()
    metrics = {split: evaluate_table(model, tables[split], cfg.train.eval_batch_size, spec.scenario_names)
               for split in ("val", "test") if split in tables}
    result = run_summary(data.dataset, cfg, cfg.train.monitor, fit, n_params, t0, data.meta["rows"],
                         data.meta["notes"], metrics, data_stats=data.meta.get("stats"))
    gates = (gate_summary(model, tables["test"], spec.scenario_names, cfg.train.eval_batch_size)
             if "test" in tables else None)
    if gates:
        atomic_write_text(run_dir / "gates.json", json.dumps(gates))
    atomic_write_text(run_dir / "metrics.json", json.dumps(result, indent=1))
    return RunResult(run_dir, result, fit.history)


# --- loading a finished run ---------------------------------------------------------------
@dataclass
class LoadedRun:
    run_dir: Path
    config: RunConfig
    encoders: Encoders
    spec: ModelSpec
    model: MultiTaskModel


def load_run(run_dir: str | Path) -> LoadedRun:
    run_dir = Path(run_dir)
    for name in ("config.yaml", "encoders.json", "spec.json", WEIGHTS):
        if not (run_dir / name).exists():
            raise PolyrecError(f"{run_dir} is not a finished polyrec run: {name} is missing.")
    cfg = load_config(run_dir / "config.yaml")
    spec, model = rebuild_model(run_dir / "spec.json", run_dir / WEIGHTS, "retrain the run")
    return LoadedRun(run_dir, cfg, Encoders.load(run_dir / "encoders.json"), spec, model)


def rebuild_model(spec_path: Path, weights: Path, remedy: str) -> tuple[ModelSpec, MultiTaskModel]:
    """The model a spec.json describes, with its weights, in eval mode (run folders and bundles alike);
    a damaged spec or weights that do not fit are one line naming the file and `remedy`."""
    info = read_json(spec_path)
    try:
        spec = ModelSpec.from_dict(info["spec"])
        model = build_model(info["model"], spec, info["embed_dim"], info["params"])
    except (KeyError, TypeError) as exc:
        raise PolyrecError(f"{spec_path} is damaged (no valid {exc}); {remedy}.") from None
    load_state(model, weights)
    return spec, model.eval()


def load_state(model: torch.nn.Module, path: Path) -> None:
    """Weights into a model rebuilt from spec.json; a mismatch names both files instead of torch's key dump."""
    try:
        model.load_state_dict(load_weights(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:160]
        raise PolyrecError(f"{path} does not fit the model described by {path.parent / 'spec.json'} ({first}); "
                           "one of the two files was replaced or damaged: retrain the run.") from None


def evaluate_run(run_dir: str | Path, split: str = "test", log: Callable[[str], None] = print) -> dict[str, Any]:
    if split not in ("train", "val", "test"):
        raise PolyrecError(f"Unknown split {split!r}; use train, val or test.{close_matches(split, ['train', 'val', 'test'])}")
    spec_path = Path(run_dir) / "spec.json"
    if spec_path.exists() and read_json(spec_path).get("kind") == "topk":
        from polyrec.topk.run import evaluate_topk, load_topk_run

        topk_run = load_topk_run(run_dir, log=log)
        tk = topk_run.config.topk
        return evaluate_topk(topk_run.model, topk_run.data, split, tk.ks, tk.eval_users_chunk)
    run = load_run(run_dir)
    data: PreparedData = prepare(run.config.data, seed=run.config.train.seed, download=False, log=log)
    if split not in data.splits:
        raise PolyrecError(f"Unknown split {split!r}; available: {sorted(data.splits)}")
    if data.encoders.to_dict() != run.encoders.to_dict():
        raise PolyrecError("The dataset now encodes differently from when this run was trained "
                           "(source files or schema changed); evaluate would be meaningless.")
    table = TensorTable(data.splits[split])
    return evaluate_table(run.model, table, run.config.train.eval_batch_size, run.spec.scenario_names)
