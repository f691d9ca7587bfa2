"""The run-kind interface and the one run every kind goes through.

A run kind is how one family of models meets the data: CTR-style rows (polyrec.train.run) or top-K
ranking over all items (polyrec.topk.run). Each implements five steps; `execute` does the rest, the same
for all: claim and check the folder, seed, write the run files once everything that can fail before
training has been built, train with early stopping, evaluate the best weights, write metrics.json.

    prepare(cfg)            -> data (cached, split, encoded)
    build(cfg, data)        -> Built (the Trainable model, the trainer with its injected evaluator, spec.json)
    evaluate(built, data)   -> metrics per split of the best weights
    load(run_dir)           -> a finished run, for evaluate / predict / recommend / export
    validate(cfg)           -> names and parameters checked before any data is read (validate_model per kind)

Run folder layout (both kinds):
  config.yaml       the resolved configuration (re-running it reproduces the run)
  spec.json         what rebuilds the model without the data ("kind" says which run kind wrote it)
  encoders.json, schema.yaml   fitted encoders and the resolved schema (CTR-style runs)
  metrics.jsonl     one line per epoch (train loss, samples/s, validation metrics)
  steps.jsonl       losses and task weights every `log_every` steps
  metrics.json      final metrics of the best weights on validation and test
  model.safetensors best weights;  checkpoint.pt  last epoch's full state (for --resume)
  tensorboard/      TensorBoard event files (train.tensorboard; see polyrec.train.tracking)
"""

from __future__ import annotations

import contextlib
import json
import platform
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from polyrec import __version__
from polyrec.balance import BALANCERS, balancer_params
from polyrec.balance.base import resolve_name
from polyrec.config import RunConfig, TrainConfig, check_device
from polyrec.data.prepare import get_recipe
from polyrec.errors import PolyrecError
from polyrec.train import distributed
from polyrec.train.rundir import check_run_dir, claim, write_run_files
from polyrec.train.tracking import chain_callbacks, make_tracker
from polyrec.train.trainer import Trainer
from polyrec.utils.io import atomic_write_text

EpochCallback = Callable[[dict[str, Any], list[dict[str, Any]]], None]


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]]


@dataclass
class Built:
    """What a kind's `build` returns: everything `execute` needs to train and record the run."""

    model: Any  # a Trainable (polyrec.train.trainer)
    trainer: Trainer
    train_table: Any  # what trainer.fit iterates
    train_cfg: TrainConfig  # the train section as the kind resolved it (monitor, balance)
    spec: dict[str, Any]  # spec.json
    encoders: Any = None  # polyrec.data.encoders.Encoders for CTR-style runs
    n_params: int = 0
    params: dict[str, Any] | None = None  # the model's resolved parameters (defaults included), for TensorBoard
    summary: dict[str, Any] = field(default_factory=dict)  # extra metrics.json fields (kind, balance, data_stats)


class RunKind(ABC):
    name: ClassVar[str]
    warm_starts: ClassVar[bool] = False  # honours train.init_from (continual re-training; CTR-style runs only)
    multi_process: ClassVar[bool] = False  # trains under torchrun (polyrec.train.distributed; CTR-style runs only)

    def validate(self, cfg: RunConfig) -> None:
        """Unknown names, bad parameters and a device this machine lacks fail here, before any folder or data."""
        if distributed.env_world().active:  # under torchrun
            if not self.multi_process:
                raise PolyrecError(f"{self.name} runs train in one process; multi-process training (torchrun) is "
                                   "for CTR-style runs. Start it without torchrun.")
            distributed.check_balancer(BALANCERS.get(resolve_name(cfg.train.balance)))
        if cfg.train.init_from is not None and not self.warm_starts:
            raise PolyrecError(f"train.init_from (--init-from) warm-starts CTR-style runs only; {self.name} runs "
                               "train from scratch: drop --init-from.")
        get_recipe(cfg.data.dataset)
        self.validate_model(cfg)
        balancer_params(cfg.train.balance, cfg.train.balance_params)
        check_device(cfg.train.device)

    @abstractmethod
    def validate_model(self, cfg: RunConfig) -> None:
        """The model name and parameters (and settings the kind cannot honour) for this kind."""

    @abstractmethod
    def prepare(self, cfg: RunConfig, download: bool, log: Callable[[str], None], evaluate_test: bool) -> Any:
        """The run's data; `evaluate_test=False` (tuning trials) never needs the test split."""

    @abstractmethod
    def build(self, cfg: RunConfig, data: Any, run_dir: Path, log: Callable[[str], None]) -> Built:
        """Model, balancer, trainer (validation injected as its evaluator) and spec.json, built on `data`."""

    @abstractmethod
    def evaluate(self, cfg: RunConfig, built: Built, data: Any, splits: tuple[str, ...]) -> dict[str, Any]:
        """Metrics of the (best) model on each split, as metrics.json holds them."""

    @abstractmethod
    def describe(self, data: Any) -> tuple[str, Any, list[str]]:
        """(dataset name, rows per split, data notes) for metrics.json."""

    def after_fit(self, cfg: RunConfig, built: Built, data: Any, run_dir: Path) -> None:
        """Extra files of a finished run (CTR-style: gates.json); nothing by default."""

    @abstractmethod
    def load(self, run_dir: Path, log: Callable[[str], None]) -> Any:
        """A finished run folder of this kind, its model in eval mode."""

    @abstractmethod
    def evaluate_folder(self, run_dir: Path, split: str, log: Callable[[str], None]) -> dict[str, Any]:
        """`polyrec evaluate`: metrics of a finished run on one split, re-reading its data."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_summary(dataset: str, cfg: RunConfig, monitor: str, fit: Any, n_params: int, t0: float, rows: Any,
                notes: list[str], metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """metrics.json of a finished run (any kind): what ran, how long, and the metrics per split."""
    return {
        "dataset": dataset, "model": cfg.model.name, "seed": cfg.train.seed, **extra,
        "best_epoch": fit.best_epoch, "epochs_run": len(fit.history), "stopped_early": fit.stopped_early,
        "monitor": monitor, "best_val_monitor": fit.best_score, "parameters": n_params,
        "train_seconds": sum(h["train_seconds"] for h in fit.history),
        # every session of a resumed run counts (up to each interrupted session's last checkpoint)
        "wall_seconds": fit.prior_wall_seconds + time.perf_counter() - t0, "sessions": fit.sessions, "rows": rows,
        "data_notes": notes,
        "versions": {"polyrec": __version__, "torch": torch.__version__, "python": platform.python_version()},
        **metrics,
    }


def execute(kind: RunKind, cfg: RunConfig, run_dir: Path, resume: bool = False, log: Callable[[str], None] = print,
            progress_factory: Callable[[int], Any] | None = None, download: bool = True,
            epoch_callback: EpochCallback | None = None, evaluate_test: bool = True) -> RunResult:
    """Train into `run_dir`, which this process holds (polyrec.train.rundir.claim) from the first check to
    metrics.json. `evaluate_test=False` (tuning trials) never builds or scores the test split.

    Under torchrun every process runs this; process 0 claims, checks and writes the folder and prepares the
    data first (the others then read it from the cache), see polyrec.train.distributed."""
    run_dir = Path(run_dir)
    kind.validate(cfg)  # unknown names: no folder is created
    world = distributed.join(cfg.train.device)
    if not world.is_main:
        log = lambda s: None  # noqa: E731  (process 0 speaks for the run)
    try:
        with (claim(run_dir) if world.is_main else contextlib.nullcontext()):
            return _execute(kind, cfg, run_dir, resume, log, progress_factory if world.is_main else None, download,
                            epoch_callback, evaluate_test, world)
    finally:
        distributed.leave()


def _execute(kind: RunKind, cfg: RunConfig, run_dir: Path, resume: bool, log: Callable[[str], None],
             progress_factory: Callable[[int], Any] | None, download: bool, epoch_callback: EpochCallback | None,
             evaluate_test: bool, world: distributed.World) -> RunResult:
    if world.is_main:
        resume = check_run_dir(cfg, run_dir, resume, log)
    resume = distributed.broadcast_flag(resume)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if not world.is_main:
        distributed.barrier()  # process 0 prepares (and caches) the data first
    data = kind.prepare(cfg, download, log, evaluate_test)
    if world.is_main:
        distributed.barrier()
    seed_everything(cfg.train.seed)
    built = kind.build(cfg, data, run_dir, log)
    if not resume:
        built.trainer.check_monitor()
        if world.is_main:
            write_run_files(run_dir, cfg, built.spec, built.encoders)
    tracker = None
    if world.is_main:
        tracker = make_tracker(cfg.model_copy(update={"train": built.train_cfg}), run_dir, log, resume=resume,
                               params=built.params)
    t0 = time.perf_counter()
    try:
        fit = built.trainer.fit(built.train_table, resume=resume, progress_factory=progress_factory,
                                epoch_callback=chain_callbacks(tracker, epoch_callback))
    finally:
        if tracker is not None:
            tracker.close()
    metrics = kind.evaluate(cfg, built, data, ("val", "test") if evaluate_test else ("val",))
    dataset, rows, notes = kind.describe(data)
    result = run_summary(dataset, cfg, built.train_cfg.monitor, fit, built.n_params, t0, rows, notes, metrics,
                         processes=world.size, **built.summary)
    if world.is_main:
        kind.after_fit(cfg, built, data, run_dir)
        atomic_write_text(run_dir / "metrics.json", json.dumps(result, indent=1))
    distributed.barrier()  # metrics.json exists before any process returns
    return RunResult(run_dir, result, fit.history)
