"""The one training loop: any model x any balancer, early stopping on validation, exact resume.

Determinism: epoch e's shuffle comes from a generator seeded by (seed, e), and the global RNG
(dropout) is saved in every checkpoint, so a resumed run replays exactly the uninterrupted one.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from polyrec.balance import Balancer
from polyrec.config import TrainConfig
from polyrec.data.batching import Batch, SplitTable
from polyrec.errors import PolyrecError
from polyrec.metrics.report import evaluate, flatten
from polyrec.data.spec import Head
from polyrec.models.base import MultiTaskModel, SharedParameters
from polyrec.train import distributed
from polyrec.train.device import autocast
from polyrec.train.checkpoint import load_checkpoint, save_checkpoint, save_weights
from polyrec.train.losses import HeadLosses
from polyrec.train.monitor import Monitor
from polyrec.train.optim import build_optimizer, embedding_modules
from polyrec.utils.io import atomic_write_text

OOV_ID = 1  # every vocabulary reserves 0 for padding and 1 for out-of-vocabulary (polyrec.data.encoders)
CHECKPOINT = "checkpoint.pt"
WEIGHTS = "model.safetensors"
EPOCH_LOG = "metrics.jsonl"
STEP_LOG = "steps.jsonl"


@torch.inference_mode()
def predict_scores(model: MultiTaskModel, table: SplitTable, batch_size: int, precision: str = "fp32") -> np.ndarray:
    """Scores [N, H] for every head: probabilities for binary heads, values for regression heads.

    In a multi-process run each process scores its contiguous share and every process gets all N rows.
    `precision="bf16"`: forward passes under bfloat16 autocast, as the run trained (polyrec.train.device)."""
    model.eval()
    binary = torch.tensor([h.kind == "binary" for h in model.heads])
    world = distributed.current()
    share = distributed.contiguous_share(len(table), world)
    out = np.empty((share.stop - share.start, len(model.heads)), dtype=np.float32)
    for start in range(share.start, share.stop, batch_size):
        batch, _ = table.take(slice(start, min(start + batch_size, share.stop)))
        with autocast(batch.scenario.device, precision):
            logits = model(batch)
        logits = logits.float().cpu()
        scores = torch.where(binary, torch.sigmoid(logits), logits)
        out[start - share.start:start - share.start + len(batch)] = scores.numpy()
    return distributed.gather_rows(out, len(table), world)


def evaluate_table(model: MultiTaskModel, table: SplitTable, batch_size: int,
                   scenario_names: list[str], precision: str = "fp32") -> dict[str, Any]:
    scores = predict_scores(model, table, batch_size, precision)
    return evaluate(scores, table.label_array(), model.heads, model.spec.task_names,
                    table.scenario_array(), scenario_names, table.user, table.cold)


def oov_dropout(batch: Batch, rate: float, generator: torch.Generator, columns: torch.Tensor | None = None,
                share: tuple[int, int] | None = None, global_rows: int | None = None) -> Batch:
    """Training rows with each categorical id replaced by its field's OOV id with probability `rate`, so the OOV
    rows learn what an unseen id should score (otherwise they keep their random initialisation: min_freq 1
    leaves them untrained). `columns` [F] bool: the fields it applies to (not the scenario-as-feature column,
    whose id 0 is the unknown scenario). Padding stays padding; numeric and sequence inputs are untouched.

    `share=(k, K)` with `global_rows` (train.batch_size): the batch is rows k, k+K, ... of a global batch. The
    mask is drawn for the whole global batch (the same draw on every process) and this share's rows are taken,
    so K processes mask exactly the rows one process would. (Drawing `global_rows` rows and keeping the first
    ones is the same as drawing only those, so one process's masks are unchanged.)"""
    ids = batch.categorical
    k, size = share if share is not None else (0, 1)
    rows = max(global_rows or 0, len(ids) * size)
    draw = torch.rand((rows, ids.shape[1]), generator=generator)[k::size][:len(ids)]
    hit = (draw < rate).to(ids.device) & (ids > 0)
    if columns is not None:
        hit &= columns.to(ids.device)
    return Batch(torch.where(hit, torch.full_like(ids, OOV_ID), ids), batch.numeric, batch.sequences, batch.scenario)


class Trainable(Protocol):
    """What the loop trains: a torch module whose call maps a batch to logits [B, H], one column per head.

    MultiTaskModel is one (CTR-style rows); polyrec.topk.trainer.PairTrainable presents a top-K model as one.
    `shared_parameters` / `last_shared_layer` are what gradient balancers act on; `epoch_start` runs before
    each training epoch (graph models refresh attention there)."""

    heads: list[Head]
    task_names: list[str]

    def __call__(self, batch: Any) -> torch.Tensor: ...
    def extra_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None: ...
    def shared_parameters(self) -> list[torch.nn.Parameter]: ...
    def last_shared_layer(self) -> torch.nn.Parameter | None: ...
    def epoch_start(self) -> None: ...
    def parameters(self) -> Any: ...
    def named_parameters(self) -> Any: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> Any: ...
    def train(self, mode: bool = True) -> Any: ...


Evaluator = Callable[[], dict[str, float]]  # flat validation metrics of the model as it is now (the monitor reads them)


def table_evaluator(model: MultiTaskModel, val: SplitTable, batch_size: int, scenario_names: list[str],
                    precision: str = "fp32") -> Evaluator:
    """Validation of a CTR-style model: AUC/LogLoss per head, scenario and cell on `val`."""
    return lambda: flatten(evaluate_table(model, val, batch_size, scenario_names, precision))


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    best_epoch: int
    best_score: float
    stopped_early: bool
    step_log: list[dict[str, Any]] = field(default_factory=list)
    prior_wall_seconds: float = 0.0  # wall time of earlier sessions of a resumed run (to their last checkpoint)
    sessions: int = 1


class Trainer:
    def __init__(self, model: Trainable, cfg: TrainConfig, balancer: Balancer, evaluate: Evaluator,
                 run_dir: Path | None = None, log: Callable[[str], None] = print,
                 oov_columns: list[bool] | None = None) -> None:
        """`evaluate`: validation metrics after every epoch (and once before training, to check the monitor);
        `oov_columns`: which categorical columns train.oov_dropout may replace (default: all)."""
        self.oov_columns = torch.tensor(oov_columns, dtype=torch.bool) if oov_columns is not None else None
        self.model, self.cfg, self.balancer, self.evaluate = model, cfg, balancer, evaluate
        self.run_dir = Path(run_dir) if run_dir else None
        self.world = distributed.current()
        self.writes = self.run_dir is not None and self.world.is_main  # process 0 alone writes the run folder
        self.log = log if self.world.is_main else (lambda s: None)
        self.forward, self.sparse_tables = model, []
        # (first: it decides which embedding tables get sparse gradients, which DDP must know when it is built)
        self.optimizer = build_optimizer(model, cfg, balancer.parameters())
        if self.world.active:  # gradients averaged over processes in backward (polyrec.train.distributed)
            distributed.check_balancer(balancer)
            from torch.nn.parallel import DistributedDataParallel

            # sparse embedding tables are averaged by distributed.average_sparse_gradients, not by DDP
            self.sparse_tables = [m.weight for m in embedding_modules(model) if m.sparse and m.weight.requires_grad]
            ignored = {id(w) for w in self.sparse_tables}
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                model, [n for n, q in model.named_parameters() if id(q) in ignored])
            # find_unused_parameters: some models leave parameters out of a step (a scenario's tower, a gate)
            self.forward = DistributedDataParallel(model, find_unused_parameters=True)
        self.losses = HeadLosses(model.heads, model.task_names, per_scenario=cfg.loss_reduction == "scenario_task",
                                 mean_count=distributed.mean_over_processes if self.world.active else None,
                                 n_scenarios=len(model.spec.scenario_names) if self.world.active else None)
        self.shared = SharedParameters(model.shared_parameters(), model.last_shared_layer())
        self.monitor = Monitor(cfg.monitor, cfg.monitor_mode)
        self._monitor_checked = False

    def check_monitor(self) -> None:
        """Before training: train.monitor must name a validation metric, and one that is defined. A metric that
        is NaN for the untrained model (every validation row of one class, say) stays NaN, and early stopping
        would then keep the untrained weights while the run "succeeds"."""
        if self._monitor_checked:
            return
        flat = self.evaluate()
        value = self.monitor.value(flat)
        self._monitor_checked = True
        if math.isnan(value):
            undefined = [k for k, v in flat.items() if isinstance(v, float) and math.isnan(v) and "/" in k
                         and not k.startswith("cell/")]
            raise PolyrecError(
                f"Validation metric {self.cfg.monitor!r} is NaN on the val split before training "
                f"(undefined there: {', '.join(undefined[:6]) or 'the monitored terms'}; an AUC needs both classes), "
                "so no epoch could ever be selected. Choose another --set train.monitor=..., or a split whose "
                "validation rows hold both classes.")

    # --- one epoch ----------------------------------------------------------------------
    def _train_epoch(self, table: Any, epoch: int, step: int, progress) -> tuple[dict, int, list]:
        cfg, model = self.cfg, self.model
        model.epoch_start()
        model.train()
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        n_heads = len(self.losses.names)
        epoch_sum = torch.zeros(n_heads)
        window_sum = torch.zeros(n_heads)
        window, n_batches, steps = 0, 0, []
        t0 = time.perf_counter()
        oov_gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch + 7919) if cfg.oov_dropout else None
        share = {"share": (self.world.rank, self.world.size)} if self.world.active else {}
        for batch, labels in table.batches(cfg.batch_size, shuffle=True, generator=gen, **share):
            if oov_gen is not None and isinstance(batch, Batch):
                batch = oov_dropout(batch, cfg.oov_dropout, oov_gen, self.oov_columns, share.get("share"),
                                    cfg.batch_size)
            with autocast(labels.device, cfg.precision):
                logits = self.forward(batch)
            logits = logits.float()  # losses in float32 whatever the forward's precision
            losses = self.losses(logits, labels, batch.scenario)
            self.optimizer.zero_grad(set_to_none=True)
            self.balancer.backward(losses, model.extra_loss(logits, labels), self.shared)
            distributed.average_gradients(self.balancer.parameters())
            distributed.average_sparse_gradients(self.sparse_tables)
            self.optimizer.step()
            detached = losses.detach()
            epoch_sum += detached
            window_sum += detached
            window += 1
            n_batches += 1
            step += 1
            if step % cfg.log_every == 0:
                mean = (window_sum / window).tolist()
                if not all(math.isfinite(v) for v in mean):
                    raise PolyrecError(
                        f"Training diverged at epoch {epoch}, step {step}: loss {dict(zip(self.losses.names, mean))}."
                        " Try a lower learning rate (train.lr)."
                    )
                steps.append({"epoch": epoch, "step": step, "loss": dict(zip(self.losses.names, mean)),
                              "weights": dict(zip(self.losses.names, self.balancer.weights.tolist()))})
                window_sum.zero_()
                window = 0
                if progress is not None:
                    done = min(n_batches * cfg.batch_size, len(table))
                    progress(n_batches, sum(mean), done / (time.perf_counter() - t0))
        seconds = time.perf_counter() - t0
        epoch_mean = distributed.mean_over_processes(epoch_sum / max(n_batches, 1))  # the same on every process
        self.balancer.epoch_end(epoch, epoch_mean)
        mean = epoch_mean.tolist()
        if not all(math.isfinite(v) for v in mean):
            raise PolyrecError(f"Training diverged in epoch {epoch}: loss {mean}. Try a lower learning rate.")
        stats = {"train_loss": dict(zip(self.losses.names, mean)), "train_seconds": seconds,
                 "train_samples_per_s": len(table) / seconds}
        return stats, step, steps

    # --- fit ------------------------------------------------------------------------------
    def fit(self, train: Any, resume: bool = False,
            progress_factory: Callable[[int], Any] | None = None,
            epoch_callback: Callable[[dict[str, Any], list[dict[str, Any]]], None] | None = None) -> FitResult:
        """Train on `train` (anything with `batches(batch_size, shuffle, generator)` yielding (batch, labels) and
        `num_batches`, `__len__`) until epochs or early stop. `epoch_callback(record, steps)` sees each epoch's record and step log after
        the checkpoint is written (tuners report to pruners there; an exception stops training)."""
        cfg, model = self.cfg, self.model
        history: list[dict[str, Any]] = []
        step_log: list[dict[str, Any]] = []
        start_epoch, step, best_score, best_epoch, bad = 1, 0, -math.inf, 0, 0
        session_start, prior_wall, sessions = time.perf_counter(), 0.0, 1
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if resume:
            ckpt = load_checkpoint(self._path(CHECKPOINT))
            try:
                model.load_state_dict(ckpt["model"])
                self.optimizer.load_state_dict(ckpt["optimizer"])
                self.balancer.load_state_dict(ckpt["balancer"])
            except (KeyError, ValueError, RuntimeError) as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
                raise PolyrecError(f"{self._path(CHECKPOINT)} does not fit this model and optimiser ({first}): it was "
                                   "written by another polyrec version or for other settings. Train into a new --out, "
                                   "or delete checkpoint.pt and start again without --resume.") from None
            self._restore_rng(ckpt)
            best_state, best_score, best_epoch = ckpt["best_state"], ckpt["best_score"], ckpt["best_epoch"]
            bad, step, start_epoch = ckpt["bad_epochs"], ckpt["step"], ckpt["epoch"] + 1
            history = json.loads(ckpt["history"])
            step_log = json.loads(ckpt["step_log"])
            prior_wall, sessions = float(ckpt.get("wall_seconds", 0.0)), int(ckpt.get("sessions", 1)) + 1
            self.log(f"resumed from epoch {ckpt['epoch']} (best epoch {best_epoch})")
            if ckpt.get("finished"):
                start_epoch = cfg.epochs + 1
        else:  # fail before training, not after the first epoch, when train.monitor names no (defined) metric
            self.check_monitor()
        stopped_early = bool(history and history[-1].get("stopped_early"))
        for epoch in range(start_epoch, cfg.epochs + 1):
            if stopped_early:
                break
            bar = progress_factory(train.num_batches(cfg.batch_size)) if progress_factory else None
            try:
                stats, step, steps = self._train_epoch(train, epoch, step, bar)
            finally:
                if bar is not None:
                    bar(None, None, None)
            step_log.extend(steps)
            flat = self.evaluate()
            model.train()
            score = self.monitor.score(flat)
            monitored = self.monitor.value(flat)
            if math.isnan(monitored):
                raise PolyrecError(f"Validation metric {cfg.monitor!r} became NaN after epoch {epoch} (it was defined "
                                   "before training): the model's scores are not finite. Try a lower train.lr.")
            improved = score > best_score
            if improved:
                best_score, best_epoch, bad = score, epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad += 1
            stopped_early = cfg.patience > 0 and bad >= cfg.patience and epoch < cfg.epochs
            record = {"epoch": epoch, **stats, "val": flat, "monitor": cfg.monitor,
                      "monitor_value": monitored, "improved": improved, "stopped_early": stopped_early}
            history.append(record)
            self.log(
                f"epoch {epoch}/{cfg.epochs}  loss {sum(stats['train_loss'].values()):.4f}  "
                f"{stats['train_samples_per_s']:,.0f} samples/s  val {cfg.monitor} {monitored:.4f}"
                + ("  *" if improved else "")
            )
            rng_states = distributed.all_rng_states()  # every process takes part, process 0 writes
            if self.writes:
                save_checkpoint({
                    "model": model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "balancer": self.balancer.state_dict(), "rng": rng_states[0],
                    "rng_per_process": rng_states,
                    "best_state": best_state, "best_score": best_score, "best_epoch": best_epoch,
                    "bad_epochs": bad, "step": step, "epoch": epoch, "finished": False,
                    "history": json.dumps(history), "step_log": json.dumps(step_log),
                    "wall_seconds": prior_wall + time.perf_counter() - session_start, "sessions": sessions,
                }, self._path(CHECKPOINT))
                self._write_logs(history, step_log)
            if epoch_callback is not None:
                epoch_callback(record, steps)
            if stopped_early:
                self.log(f"early stop: no improvement of {cfg.monitor} for {cfg.patience} epochs")
        # always finish on the best weights, whether or not early stopping fired
        model.load_state_dict(best_state)
        if self.writes:
            save_weights(best_state, self._path(WEIGHTS))
            self._write_logs(history, step_log)
        return FitResult(history, best_epoch, self.monitor.sign * best_score, stopped_early, step_log,
                         prior_wall, sessions)

    def _restore_rng(self, ckpt: dict[str, Any]) -> None:
        """This process's RNG state; a multi-process checkpoint must be resumed by as many processes."""
        states = ckpt.get("rng_per_process", [ckpt["rng"]])
        if len(states) != self.world.size:
            raise PolyrecError(f"{self._path(CHECKPOINT)} was written by {len(states)} training process(es); "
                               f"resume it with the same number (torchrun --nproc_per_node {len(states)}), "
                               f"not {self.world.size}.")
        torch.set_rng_state(states[self.world.rank])

    def _path(self, name: str) -> Path:
        assert self.run_dir is not None
        return self.run_dir / name

    def _write_logs(self, history: list[dict], step_log: list[dict]) -> None:
        atomic_write_text(self._path(EPOCH_LOG), "".join(json.dumps(r) + "\n" for r in history))
        atomic_write_text(self._path(STEP_LOG), "".join(json.dumps(r) + "\n" for r in step_log))
