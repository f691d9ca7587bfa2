"""Experiment tracking: TensorBoard event files in `<run_dir>/tensorboard/`, written from the epoch callback.

Tags (x axis in brackets):
  val/<metric>              every flat validation metric except counts (.../n, .../positives)   [epoch]
  val/monitor               the value of train.monitor                                       [epoch]
  best/val_monitor          the best value of train.monitor so far (the hparams view's metric)[epoch]
  train/loss/<head>, train/loss/total, train/samples_per_s                                   [epoch]
  step/loss/<head>, step/weight/<head>   every train.log_every steps                         [step]
  config (text)             the resolved config as YAML, plus hparams (model and key training settings)

Nothing runs inside the training loop: step values come from the trainer's step log, handed to the
callback at each epoch's end. Needs the `tensorboard` package (extra `track`); without it tracking
turns itself off with one warning line. `train.tensorboard: false` switches it off.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from polyrec.config import RunConfig
from polyrec.train.monitor import Monitor

TB_DIR = "tensorboard"
COUNT_SUFFIXES = ("/n", "/positives")
MISSING_WARNING = ("warning: TensorBoard tracking is off: the 'tensorboard' package is not installed "
                   "(pip install 'polyrec[track]', or set train.tensorboard=false to silence this).")
# the config keys shown in TensorBoard's hparams view, besides every model.* key
HPARAM_KEYS = ("data.dataset", "data.split", "train.optimizer", "train.lr", "train.weight_decay", "train.batch_size",
               "train.epochs", "train.balance", "train.monitor", "train.seed")

EpochCallback = Callable[[dict[str, Any], list[dict[str, Any]]], None]
_warned = False


def _summary_writer_class() -> type | None:
    """torch's SummaryWriter, or None when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter


class TensorBoardTracker:
    """An epoch callback that mirrors the run's epoch records and step log to TensorBoard."""

    def __init__(self, writer: Any, cfg: RunConfig, best: float | None = None) -> None:
        self.writer = writer
        self.sign = Monitor(cfg.train.monitor, cfg.train.monitor_mode).sign
        self.best = best

    def start(self, cfg: RunConfig, params: dict[str, Any] | None = None) -> None:
        """Config as text and the hparams session (written once, at the start of a fresh run); `params`: the
        model's resolved parameters (defaults included)."""
        text = "\n".join("    " + line for line in cfg.to_yaml().splitlines())  # markdown code block
        self.writer.add_text("config", text, 0)
        try:
            from torch.utils.tensorboard.summary import hparams
        except ImportError:  # pragma: no cover - part of the same package as SummaryWriter
            return
        for summary in hparams(hparam_dict(cfg, params), {"best/val_monitor": float("nan")}):
            self.writer.file_writer.add_summary(summary)

    def __call__(self, record: dict[str, Any], steps: list[dict[str, Any]]) -> None:
        w, epoch = self.writer, record["epoch"]
        for key, value in record["val"].items():
            if not key.endswith(COUNT_SUFFIXES) and isinstance(value, (int, float)):
                w.add_scalar(f"val/{key}", value, epoch)
        monitored = record["monitor_value"]
        w.add_scalar("val/monitor", monitored, epoch)
        if not math.isnan(monitored) and (self.best is None or self.sign * monitored > self.sign * self.best):
            self.best = monitored
        if self.best is not None:
            w.add_scalar("best/val_monitor", self.best, epoch)
        losses = record["train_loss"]
        for head, value in losses.items():
            w.add_scalar(f"train/loss/{head}", value, epoch)
        w.add_scalar("train/loss/total", sum(losses.values()), epoch)
        w.add_scalar("train/samples_per_s", record["train_samples_per_s"], epoch)
        for entry in steps:
            for head, value in entry["loss"].items():
                w.add_scalar(f"step/loss/{head}", value, entry["step"])
            for head, value in entry["weights"].items():
                w.add_scalar(f"step/weight/{head}", value, entry["step"])
        w.flush()

    def close(self) -> None:
        self.writer.close()


def hparam_dict(cfg: RunConfig, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Scalar view of the settings worth comparing across runs (lists and dicts as JSON text); `params` are the
    model's resolved parameters (default: the CTR model's, read from the registry)."""
    from polyrec.models.base import model_params

    dump = cfg.model_dump(mode="json")
    resolved = params if params is not None else model_params(cfg.model.name, cfg.model.params()).model_dump(mode="json")
    flat = {"model.name": cfg.model.name, "model.embed_dim": cfg.model.embed_dim,
            **{f"model.{k}": v for k, v in resolved.items()}}
    for key in HPARAM_KEYS:
        section, name = key.split(".")
        flat[key] = dump[section][name]
    return {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v) for k, v in flat.items()}


def make_tracker(cfg: RunConfig, run_dir: Path, log: Callable[[str], None] = print,
                 resume: bool = False, params: dict[str, Any] | None = None) -> TensorBoardTracker | None:
    """The run's tracker, or None when `train.tensorboard` is off or the package is missing."""
    if not cfg.train.tensorboard:
        return None
    global _warned
    writer_cls = _summary_writer_class()
    if writer_cls is None:
        if not _warned:  # once per process: a tuning study runs many trials
            _warned = True
            log(MISSING_WARNING)
        return None
    best = _best_so_far(cfg, Path(run_dir)) if resume else None
    tracker = TensorBoardTracker(writer_cls(log_dir=str(Path(run_dir) / TB_DIR)), cfg, best)
    if not resume:
        tracker.start(cfg, params)
    return tracker


def _best_so_far(cfg: RunConfig, run_dir: Path) -> float | None:
    """On resume: the best monitored value among the epochs already in metrics.jsonl."""
    from polyrec.train.trainer import EPOCH_LOG

    path = run_dir / EPOCH_LOG
    if not path.exists():
        return None
    sign = Monitor(cfg.train.monitor, cfg.train.monitor_mode).sign
    values = [json.loads(line)["monitor_value"] for line in path.read_text().splitlines() if line.strip()]
    values = [v for v in values if v is not None and not math.isnan(v)]
    return max(values, key=lambda v: sign * v) if values else None


def chain_callbacks(*callbacks: EpochCallback | None) -> EpochCallback | None:
    """One epoch callback calling the given ones in order (None entries skipped); None when there are none."""
    active = [c for c in callbacks if c is not None]
    if not active:
        return None
    if len(active) == 1:
        return active[0]

    def chained(record: dict[str, Any], steps: list[dict[str, Any]]) -> None:
        for callback in active:
            callback(record, steps)

    return chained
