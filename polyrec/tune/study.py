"""Hyper-parameter search with Optuna: a resumable SQLite study of training runs.

Study folder:
  study.db          the Optuna study (SQLite); the same command resumes it and runs only the trials still
                    missing to reach N complete + pruned ones
  best.yaml         the best trial's full config: `polyrec train --config best.yaml` retrains it
  trials/<number>/  each trial's run folder (config.yaml, metrics.jsonl, tensorboard/, ...)

The objective is the validation value of train.monitor at the trial's best epoch, read from the epoch
records only; trials never build or score the test split (train_run(evaluate_test=False)). Every trial trains
with train.seed, and the sampler of trial k is seeded from (train.seed, k), so a study resumed after an
interruption samples what the uninterrupted one would have. One tune process per study folder.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polyrec.config import RunConfig, config_differences
from polyrec.errors import PolyrecError
from polyrec.train.monitor import Monitor
from polyrec.tune.search import Param, apply_overrides, sample, search_space
from polyrec.utils.io import atomic_write_text

STUDY_DB = "study.db"
BEST = "best.yaml"
TRIALS = "trials"
# prune from epoch 2 on, once 5 trials have completed; never on a trial's last epoch (nothing left to save)
PRUNER_STARTUP_TRIALS = 5
PRUNER_WARMUP_EPOCHS = 2


@dataclass
class TrialSummary:
    number: int
    state: str  # COMPLETE | PRUNED | FAIL | RUNNING | WAITING
    value: float | None  # best-epoch validation monitor (pruned: the last reported one)
    overrides: dict[str, Any]
    epochs: int | None = None
    best_epoch: int | None = None
    error: str | None = None


@dataclass
class TuneResult:
    study_dir: Path
    study_name: str
    monitor: str
    direction: str  # maximize | minimize
    n_trials: int  # requested complete + pruned trials
    ran: int  # trials started by this call
    space: list[Param]
    trials: list[TrialSummary] = field(default_factory=list)
    best: TrialSummary | None = None
    best_config: RunConfig | None = None
    stopped: str | None = None  # why this call stopped before reaching n_trials

    @property
    def best_path(self) -> Path:
        return self.study_dir / BEST


def study_name(cfg: RunConfig) -> str:
    return f"{cfg.data.dataset}-{cfg.model.name}"


def _optuna():
    try:
        import optuna
    except ImportError:
        raise PolyrecError("polyrec tune needs Optuna: pip install 'polyrec[tune]' (or pip install optuna).") from None
    return optuna


def default_pruner():
    optuna = _optuna()
    return optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=PRUNER_WARMUP_EPOCHS)


def trial_seed(seed: int, number: int) -> int:
    return (seed * 1_000_003 + number) % (2 ** 32)


def best_epoch_value(values: list[float], sign: float) -> tuple[int, float] | None:
    """(index, value) of the best finite value in epoch order (first on ties), or None."""
    best = None
    for i, v in enumerate(values):
        if v is not None and math.isfinite(v) and (best is None or sign * v > sign * best[1]):
            best = (i, v)
    return best


def tune(cfg: RunConfig, n_trials: int, study_dir: str | Path, fixed: Iterable[str] = (),
         timeout: float | None = None, log: Callable[[str], None] = print, pruner: Any = None,
         train_fn: Callable[..., Any] | None = None, download: bool = True,
         max_failures: int | None = None) -> TuneResult:
    """`_tune` while this process holds the study folder: a second tune into it fails at once, naming the holder."""
    from polyrec.train.rundir import claim

    with claim(study_dir, "study folder"):
        return _tune(cfg, n_trials, study_dir, fixed, timeout, log, pruner, train_fn, download, max_failures)


def _tune(cfg: RunConfig, n_trials: int, study_dir: str | Path, fixed: Iterable[str] = (),
          timeout: float | None = None, log: Callable[[str], None] = print, pruner: Any = None,
          train_fn: Callable[..., Any] | None = None, download: bool = True,
          max_failures: int | None = None) -> TuneResult:
    """Run (or resume) the study of `cfg`'s dataset and model until it holds `n_trials` complete + pruned trials.

    `fixed`: config keys pinned by the user (--set), left out of the search. `timeout`: seconds after which no
    new trial starts. `max_failures`: failed trials after which this call gives up (default max(3, remaining)).
    `train_fn`: train_run or a stand-in with its signature (tests)."""
    optuna = _optuna()
    from optuna.trial import TrialState

    from polyrec.runs import train_run, validate_config

    if n_trials < 1:
        raise PolyrecError(f"--trials must be at least 1, got {n_trials}")
    train_fn = train_fn or train_run
    validate_config(cfg)
    monitor = Monitor(cfg.train.monitor, cfg.train.monitor_mode)
    direction = "maximize" if monitor.sign > 0 else "minimize"
    fixed = sorted(set(fixed))
    space = search_space(cfg.model.name, fixed)
    study_dir = Path(study_dir)
    name = study_name(cfg)
    db = study_dir / STUDY_DB
    trials_dir = study_dir / TRIALS
    if not db.exists() and trials_dir.is_dir() and any(trials_dir.iterdir()):
        raise PolyrecError(f"{study_dir} holds trial folders but no {STUDY_DB}: choose another --study-dir "
                           "or remove the folder.")

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # this module reports each trial itself
    try:
        storage = optuna.storages.RDBStorage(f"sqlite:///{db.resolve()}")
        others = [n for n in optuna.study.get_all_study_names(storage) if n != name]
        if others:
            raise PolyrecError(f"{db} holds the study {others[0]!r}, not {name!r}: give this study its own "
                               "--study-dir.")
        study = optuna.create_study(storage=storage, study_name=name, direction=direction, load_if_exists=True,
                                    pruner=pruner if pruner is not None else default_pruner())
        identity = {"base_config": cfg.model_dump(mode="json"), "fixed": fixed}
        if not study.user_attrs:
            for k, v in identity.items():
                study.set_user_attr(k, v)
        else:
            _check_same_study(study.user_attrs, identity, db)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # left by a killed process
            storage.set_trial_user_attr(t._trial_id, "error", "interrupted")
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            log(f"trial {t.number}: left running by an interrupted tune, marked failed")

        def counted() -> int:
            return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))

        remaining = n_trials - counted()
        limit = max_failures if max_failures is not None else max(3, remaining)
        log(f"study {name!r} in {db}: {counted()} of {n_trials} trials done; "
            f"{direction} val {cfg.train.monitor}")
        if remaining > 0:
            log("search space: " + "; ".join(p.describe() for p in space) + (
                f"  (fixed: {', '.join(fixed)})" if fixed else ""))
        t0, ran, failures, stopped = time.monotonic(), 0, 0, None
        while counted() < n_trials:
            if timeout is not None and time.monotonic() - t0 >= timeout:
                stopped = f"timeout of {timeout:g} s reached"
                break
            if failures >= limit:
                stopped = f"{failures} trials failed in this call"
                break
            number = len(study.get_trials(deepcopy=False))
            study.sampler = optuna.samplers.TPESampler(seed=trial_seed(cfg.train.seed, number))
            trial = study.ask()
            ran += 1
            state = _run_trial(optuna, study, trial, cfg, space, monitor, study_dir, train_fn, log, download)
            if state == TrialState.FAIL:
                failures += 1
            elif state == TrialState.COMPLETE:
                _write_best(study, cfg, study_dir)  # kept current, so an interrupted study still has one
        if stopped:
            log(f"stopped: {stopped}; {counted()} of {n_trials} trials done (run the same command to go on)")
        _write_best(study, cfg, study_dir)
        result = TuneResult(study_dir, name, cfg.train.monitor, direction, n_trials, ran, space, stopped=stopped)
        result.trials = [_summary(t) for t in study.get_trials(deepcopy=False)]
        if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            best = study.best_trial
            result.best = _summary(best)
            result.best_config = apply_overrides(cfg, best.user_attrs["overrides"])
        return result
    finally:
        optuna.logging.set_verbosity(verbosity)


def _check_same_study(saved: dict[str, Any], now: dict[str, Any], db: Path) -> None:
    if saved.get("fixed") != now["fixed"]:
        raise PolyrecError(f"{db} was started with --set keys {saved.get('fixed')}, now {now['fixed']}: "
                           "resume with the same --set keys, or use another --study-dir.")
    diffs = config_differences(saved.get("base_config", {}), now["base_config"])
    if diffs:
        raise PolyrecError(f"{db} was started with another base config ({'; '.join(diffs[:5])}): resume with the "
                           "same --config/--set, or use another --study-dir.")


def _run_trial(optuna, study, trial, cfg: RunConfig, space: list[Param], monitor: Monitor, study_dir: Path,
               train_fn: Callable[..., Any], log: Callable[[str], None], download: bool):
    """Train one trial and tell the study how it ended; returns the trial's final state."""
    from optuna.trial import TrialState

    n = trial.number
    run_dir = study_dir / TRIALS / str(n)
    trial.set_user_attr("run_dir", str(Path(TRIALS) / str(n)))
    values: list[float] = []

    def trial_log(msg: str) -> None:
        log(f"trial {n}: {msg}")

    try:
        overrides = sample(space, trial, cfg)
        trial.set_user_attr("overrides", overrides)
        trial_log(" ".join(f"{k}={_fmt(v)}" for k, v in overrides.items()))
        trial_cfg = apply_overrides(cfg, overrides)

        def on_epoch(record: dict[str, Any], steps: list[dict[str, Any]]) -> None:
            value = float(record["monitor_value"])  # validation only: the record's test-free monitor value
            values.append(value)
            trial.report(value, record["epoch"])
            last = record["epoch"] >= trial_cfg.train.epochs or record.get("stopped_early")
            if not last and trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {record['epoch']}")

        train_fn(trial_cfg, run_dir, log=trial_log, download=download, epoch_callback=on_epoch,
                 evaluate_test=False)
    except optuna.TrialPruned as exc:
        trial.set_user_attr("epochs", len(values))
        study.tell(trial, state=TrialState.PRUNED)
        trial_log(str(exc))
        return TrialState.PRUNED
    except PolyrecError as exc:
        trial.set_user_attr("error", str(exc))
        trial.set_user_attr("epochs", len(values))
        study.tell(trial, state=TrialState.FAIL)
        trial_log(f"failed: {exc}")
        return TrialState.FAIL
    except BaseException as exc:  # a bug or Ctrl-C: record the trial as failed, then stop the study
        trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
        study.tell(trial, state=TrialState.FAIL)
        raise
    best = best_epoch_value(values, monitor.sign)
    trial.set_user_attr("epochs", len(values))
    if best is None:
        trial.set_user_attr("error", "no finite validation value in any epoch")
        study.tell(trial, state=TrialState.FAIL)
        trial_log("failed: no finite validation value in any epoch")
        return TrialState.FAIL
    trial.set_user_attr("best_epoch", best[0] + 1)
    study.tell(trial, best[1])
    trial_log(f"val {cfg.train.monitor} = {best[1]:.4f} (best epoch {best[0] + 1} of {len(values)})")
    return TrialState.COMPLETE


def _write_best(study, cfg: RunConfig, study_dir: Path) -> None:
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return
    best = study.best_trial
    best_cfg = apply_overrides(cfg, best.user_attrs["overrides"])
    header = (f"# best trial of study {study.study_name!r}: trial {best.number} "
              f"(run folder {best.user_attrs.get('run_dir')}), val {cfg.train.monitor} = {best.value:.6f}\n"
              f"# retrain: polyrec train --config {study_dir / BEST}\n")
    atomic_write_text(study_dir / BEST, header + best_cfg.to_yaml())


def _summary(t: Any) -> TrialSummary:
    value = t.value if t.state.name == "COMPLETE" else (
        t.intermediate_values[t.last_step] if t.last_step is not None else None)
    return TrialSummary(t.number, t.state.name, value, dict(t.user_attrs.get("overrides", {})),
                        t.user_attrs.get("epochs"), t.user_attrs.get("best_epoch"), t.user_attrs.get("error"))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, list):
        return json.dumps(v).replace(" ", "")
    return str(v)
