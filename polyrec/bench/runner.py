"""Run a benchmark: every (dataset, row, seed) as an ordinary run folder, resumable, failures isolated.

Bench folder layout::

    bench.yaml            the resolved experiment (datasets, seeds, rows with their settings) + command line
    environment.json      versions, git commit, platform, data file fingerprints and cache entries
    runs/<dataset>/<row folder>/seed<k>/   ordinary `polyrec train` run folders (+ train.log; error.json
                          {error, type, traceback} when the run failed)
    lr-grid.json, lr-grid/<dataset>/<row folder>/lr=<rate>/seed<k>/   learning-rate selection (rows with a
                          grid; polyrec.bench.lrgrid): it runs first, then every row's runs at its chosen rate
    results.json, results.csv, results-per-seed.csv, results.md   (polyrec.bench.aggregate)
    report.html           (the `report` writer the caller hands in: polyrec.report.write_report)

Re-running the same command on the same folder: runs with metrics.json are skipped, runs with a
checkpoint but no metrics.json are resumed from it (the trainer resumes exactly), runs with error.json
are retried from scratch, and interrupted runs without a checkpoint start again.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from polyrec import __version__
from polyrec.bench.aggregate import write_results
from polyrec.bench.lrgrid import LR_GRID, Point, Selection, decide, lr_text
from polyrec.bench.spec import Experiment, Row
from polyrec.bench.store import grid_run_dir
from polyrec.bench.store import run_dir as _run_dir
from polyrec.config import RunConfig, config_differences, load_config
from polyrec.errors import PolyrecError
from polyrec.metrics.topk import headline_key
from polyrec.runs import train_run
from polyrec.train.monitor import Monitor
from polyrec.train.trainer import CHECKPOINT
from polyrec.utils.io import atomic_directory, atomic_write_text
from polyrec.utils.io import read_json_or_none as _read_json

Echo = Callable[..., None]  # echo(text, end="\n")


def _print(text: str = "", end: str = "\n") -> None:
    print(text, end=end, flush=True)


@dataclass
class PlannedRun:
    index: int
    dataset: str
    row: Row
    seed: int
    path: Path
    config: RunConfig
    grid_lr: float | None = None  # a run of the lr grid at this rate (not a row of the tables)
    source: Path | None = None  # a finished grid run that is this run (same config): linked, not retrained


@dataclass
class BenchOutcome:
    bench_dir: Path
    trained: list[tuple[str, str, int]] = field(default_factory=list)
    skipped: list[tuple[str, str, int]] = field(default_factory=list)
    resumed: list[tuple[str, str, int]] = field(default_factory=list)
    retried: list[tuple[str, str, int]] = field(default_factory=list)
    failed: list[tuple[str, str, int]] = field(default_factory=list)
    results: dict[str, Any] | None = None
    paths: dict[str, Path] = field(default_factory=dict)
    report: Path | None = None
    linked: list[tuple[str, str, int]] = field(default_factory=list)  # runs taken from the lr grid
    selections: dict[tuple[str, str], Selection] = field(default_factory=dict)  # (dataset, row label) -> lr choice
    grid: "BenchOutcome | None" = None  # the lr grid's own runs (trained, skipped, failed)

    @property
    def failed_selections(self) -> list[Selection]:
        return [s for s in self.selections.values() if s.status == "failed"]


# --- environment -----------------------------------------------------------------------------------------
def _git(args: list[str]) -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except ImportError:
        return None
    return getattr(mod, "__version__", None)


def data_files(dataset: str) -> dict[str, Any] | None:
    """Source files of a dataset with content fingerprints, or None when they are not present (yet)."""
    from polyrec.data.cache import file_fingerprint
    from polyrec.data.prepare import get_recipe
    from polyrec.settings import data_dir

    try:
        files = get_recipe(dataset).locate(data_dir())
    except PolyrecError:
        return None
    return {k: {"path": str(p), **file_fingerprint(p)} for k, p in sorted(files.items())}


def environment(exp: Experiment) -> dict[str, Any]:
    import torch

    from polyrec.settings import cache_dir, data_dir

    commit = _git(["rev-parse", "HEAD"])
    dirty = _git(["status", "--porcelain", "--untracked-files=no"]) if commit else None
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "numpy": _version("numpy"), "scipy": _version("scipy"), "pyarrow": _version("pyarrow"),
                     "polyrec": __version__},
        "git_commit": commit,
        "git_dirty": (bool(dirty) if dirty is not None else None),
        "platform": {"system": platform.platform(), "machine": platform.machine(),
                     "processor": platform.processor() or None,
                     "python_implementation": platform.python_implementation(),
                     "cpu_count": _cpu_count(), "torch_threads": torch.get_num_threads()},
        "data_dir": str(data_dir()), "cache_dir": str(cache_dir()),
        "datasets": {ds: {"files": data_files(ds), "cache_entries": {}} for ds in exp.datasets},
    }


def _cpu_count() -> int | None:
    import os

    return os.cpu_count()


def _cache_entries(bench_dir: Path, exp: Experiment, env: dict[str, Any]) -> None:
    """Fill environment.json's cache entries (one per split seed and data config) from the runs' spec.json."""
    from polyrec.settings import cache_dir

    for ds in exp.datasets:
        info = env["datasets"].setdefault(ds, {"files": None, "cache_entries": {}})
        if info.get("files") is None:
            info["files"] = data_files(ds)
        entries: dict[str, Any] = {}
        for row in exp.rows:
            for seed in exp.seeds:
                spec = _read_json(_run_dir(bench_dir, ds, row.folder, seed) / "spec.json")
                name = (spec or {}).get("cache_entry")
                if not name:
                    continue
                if name not in entries:
                    meta = _read_json(cache_dir() / name / "meta.json") or {}
                    entries[name] = {"split": meta.get("split"), "split_seed": meta.get("split_seed"),
                                     "rows": meta.get("rows"), "seeds": []}
                if seed not in entries[name]["seeds"]:
                    entries[name]["seeds"].append(seed)
        info["cache_entries"] = entries


# --- planning ---------------------------------------------------------------------------------------------
def plan(exp: Experiment, bench_dir: Path, rates: dict[tuple[str, str], float] | None = None) -> list[PlannedRun]:
    """Every run in order (dataset, then seed, then row: an interrupted bench leaves complete seeds, which
    pair), with its resolved config; refuses a folder whose existing runs were made with other settings.

    `rates`: the chosen lr of each (dataset, row label) with a grid. Without it (before the selection), a grid
    row's runs are checked with their learning rate left out, and its initial grid runs are checked too, so a
    folder made with other settings is refused before any training."""
    runs = []
    for ds in exp.datasets:
        for seed in exp.seeds:
            for row in exp.rows:
                lr = (rates or {}).get((ds, row.label))
                source = grid_run_dir(bench_dir, ds, row.folder, lr, seed) \
                    if lr is not None and seed in exp.selection_seeds else None
                runs.append(PlannedRun(len(runs) + 1, ds, row, seed, _run_dir(bench_dir, ds, row.folder, seed),
                                       exp.config_for(ds, row, seed, lr), source=source))
    checks = [(r, bool(exp.grid_for(r.row)) and (r.dataset, r.row.label) not in (rates or {})) for r in runs]
    if rates is None:
        checks += [(g, False) for g in grid_runs(exp, bench_dir)]
    check_stale(bench_dir, checks)
    return runs


def grid_runs(exp: Experiment, bench_dir: Path, dataset: str | None = None, row: Row | None = None,
              rates: list[float] | None = None) -> list[PlannedRun]:
    """The lr grid's runs (every grid row, or one (dataset, row) at `rates`), selection seeds only."""
    out = []
    for ds in [dataset] if dataset is not None else exp.datasets:
        for r in [row] if row is not None else exp.rows:
            for lr in rates if rates is not None else exp.grid_for(r):
                for seed in exp.selection_seeds:
                    out.append(PlannedRun(len(out) + 1, ds, r, seed, grid_run_dir(bench_dir, ds, r.folder, lr, seed),
                                          exp.config_for(ds, r, seed, lr), grid_lr=lr))
    return out


def check_stale(bench_dir: Path, checks: list[tuple[PlannedRun, bool]]) -> None:
    """Refuse runs already on disk with another config than planned (`True`: compare without train.lr)."""
    stale = []
    for r, without_lr in checks:
        saved = r.path / "config.yaml"
        if not saved.exists() or (r.path / "error.json").exists():
            continue  # nothing there, or a failed run (retried from scratch)
        if not ((r.path / "metrics.json").exists() or (r.path / CHECKPOINT).exists()):
            continue  # interrupted before its first checkpoint: started again anyway
        try:
            old = load_config(saved).model_dump()
        except PolyrecError:
            old = None
        new = r.config.model_dump()
        if without_lr and isinstance(old, dict):
            old = {**old, "train": {**old.get("train", {}), "lr": new["train"]["lr"]}}
        if old != new:
            stale.append(f"{r.path} ({_diff(old, new)})")
    if stale:
        listed = "\n  ".join(stale[:5]) + (f"\n  ... and {len(stale) - 5} more" if len(stale) > 5 else "")
        raise PolyrecError(
            f"{bench_dir} already holds runs made with other settings than this command asks for:\n  {listed}\n"
            "Choose another --out, or delete those run folders to redo them."
        )


def _diff(old: Any, new: dict[str, Any]) -> str:
    if not isinstance(old, dict):
        return "its config.yaml is unreadable"
    return "; ".join(config_differences(old, new)[:4]) or "differs"


# --- running ----------------------------------------------------------------------------------------------
def headline(metrics: dict[str, Any]) -> tuple[str, float] | None:
    """The number a progress line shows: test overall/auc, else the first head's AUC or RMSE."""
    test = metrics.get("test") or {}
    if test.get("ranking"):  # top-K run: the target task's NDCG@20 (or its first metric)
        target = test["ranking"]["by"]
        m = (test.get("heads") or {}).get(target) or {}
        key = headline_key(m)
        return (f"{target}/{key}", float(m[key])) if key else None
    if (test.get("overall") or {}).get("auc") is not None:
        return "overall/auc", float(test["overall"]["auc"])
    for h, m in (test.get("heads") or {}).items():
        for k in ("auc", "rmse"):
            if k in m:
                return f"{h}/{k}", float(m[k])
    return None


def _file_log(path: Path) -> Callable[[str], None]:
    def log(msg: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{msg}\n")

    return log


def _short(exc: BaseException, limit: int = 160) -> str:
    msg = " ".join(str(exc).split())
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def _link_tree(source: Path, dest: Path) -> None:
    """dest becomes a copy of the finished run folder source (hard links where the file system allows)."""
    def build(tmp: Path) -> None:
        try:
            shutil.copytree(source, tmp, copy_function=os.link, dirs_exist_ok=True)
        except OSError:  # no hard links here: copy (into an emptied folder, never through a link)
            shutil.rmtree(tmp)
            tmp.mkdir()
            shutil.copytree(source, tmp, dirs_exist_ok=True)

    if dest.exists():
        shutil.rmtree(dest)
    atomic_directory(dest, build)


def run_one(r: PlannedRun, total: int, outcome: BenchOutcome, echo: Echo) -> None:
    key = (r.dataset, r.row.label, r.seed)
    if r.grid_lr is not None:
        prefix = f"[lr grid {r.index}/{total}] {r.dataset} {r.row.label} lr={lr_text(r.grid_lr)} seed {r.seed}"
    else:
        prefix = f"[{r.index}/{total}] {r.dataset} {r.row.label} seed {r.seed}"
    path = r.path
    if r.source is not None and _read_json(r.source / "metrics.json") is not None \
            and _read_json(path / "metrics.json") is None:
        _link_tree(r.source, path)
        outcome.linked.append(key)
        echo(f"{prefix} ... the lr grid's run at lr={lr_text(r.config.train.lr)} (the same run), linked")
        return
    if (path / "metrics.json").exists():
        if _read_json(path / "metrics.json") is not None:
            outcome.skipped.append(key)
            echo(f"{prefix} ... finished earlier, skipped")
            return
        echo(f"{prefix} ... its metrics.json is unreadable (truncated?): finishing the run again")
        (path / "metrics.json").unlink()
    resume = False
    if (path / "error.json").exists():
        err = _read_json(path / "error.json") or {}
        echo(f"{prefix} ... retrying (it failed before: {err.get('type')}: "
             f"{' '.join(str(err.get('error', ''))[:120].split())})")
        outcome.retried.append(key)
        shutil.rmtree(path)
    elif (path / CHECKPOINT).exists() and (path / "config.yaml").exists():
        resume = True
        outcome.resumed.append(key)
        echo(f"{prefix} ... resuming from its checkpoint ...", end="")
    elif path.exists():  # interrupted before its first checkpoint: start again
        shutil.rmtree(path)
    if not resume:
        echo(f"{prefix} ...", end="")
    path.mkdir(parents=True, exist_ok=True)
    log = _file_log(path / "train.log")
    log(f"--- {datetime.now(timezone.utc).isoformat(timespec='seconds')} "
        f"{'resume' if resume else 'start'} {r.dataset} {r.row.label} seed {r.seed}")
    t0 = time.perf_counter()
    try:
        result = train_run(r.config, path, resume=resume, log=log, progress_factory=None)
    except Exception as exc:  # noqa: BLE001 - one failed run must not stop the bench
        tb = traceback.format_exc()
        log(tb)
        atomic_write_text(path / "error.json", json.dumps({
            "error": str(exc), "type": type(exc).__name__, "traceback": tb,
            "dataset": r.dataset, "row": r.row.label, "seed": r.seed,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }, indent=1))
        outcome.failed.append(key)
        echo(f" FAILED ({type(exc).__name__}: {_short(exc)}; see {path / 'error.json'})")
        return
    seconds = time.perf_counter() - t0
    outcome.trained.append(key)
    if r.grid_lr is not None:  # the grid is judged on validation: show that, not test
        m = result.metrics
        shown = f"val {m.get('monitor')} {m['best_val_monitor']:.4f}, " \
            if isinstance(m.get("best_val_monitor"), (int, float)) else ""
    else:
        head = headline(result.metrics)
        shown = f"test {head[0]} {head[1]:.4f}, " if head else ""
    echo(f" done ({shown}{seconds:.0f} s)")


# --- learning-rate selection -------------------------------------------------------------------------------
def select_rate(exp: Experiment, bench_dir: Path, dataset: str, row: Row, outcome: BenchOutcome,
                echo: Echo) -> Selection:
    """Run the row's grid on the selection seeds, extending it while the best rate is at an edge
    (polyrec.bench.lrgrid.decide), and return the choice (status 'chosen', or 'failed' with its one line)."""
    cfg = exp.config_for(dataset, row, exp.seeds[0])
    higher = Monitor(cfg.train.monitor, cfg.train.monitor_mode).sign > 0
    sel = Selection(dataset, row.label, row.folder, cfg.train.monitor, higher, exp.selection_seeds,
                    exp.grid_for(row))
    where = f"row {row.label!r} on {dataset}"
    pending = list(sel.initial)
    while True:
        runs = grid_runs(exp, bench_dir, dataset, row, pending)
        check_stale(bench_dir, [(r, False) for r in runs])
        for r in runs:
            run_one(r, len(runs), outcome, echo)
        for r in runs:
            point = sel.points.setdefault(r.grid_lr, Point(r.grid_lr))
            metrics = _read_json(r.path / "metrics.json")
            value = metrics.get("best_val_monitor") if isinstance(metrics, dict) else None
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                point.values[r.seed] = float(value)
            elif (r.path / "error.json").exists():
                err = _read_json(r.path / "error.json") or {}
                point.failed[r.seed] = f"{err.get('type')}: {_short(Exception(err.get('error', '')))}"
            else:
                point.missing.append(r.seed)
        d = decide(list(sel.points.values()), higher, len(sel.extensions), exp.lr_grid_extensions, where)
        if d.action != "extend":
            break
        sel.extensions.append({"direction": d.direction, "lr": d.lr})
        edge = "largest" if d.direction == "up" else "smallest"
        echo(f"lr grid {dataset} {row.label}: the best validation rate is the {edge} of the grid: adding "
             f"lr={lr_text(d.lr)} (extension {len(sel.extensions)} of at most {exp.lr_grid_extensions})")
        pending = [d.lr]
    sel.status, sel.message = d.action, d.message
    if d.action == "chosen":
        sel.chosen = d.lr
        scores = ", ".join(f"{lr_text(p.lr)}: " + (f"{p.score:.4f}" if p.score is not None else "failed")
                           for p in (sel.points[lr] for lr in sel.grid))
        echo(f"lr grid {dataset} {row.label}: lr={lr_text(d.lr)} (validation {sel.monitor}: {scores})")
    else:
        echo(f"FAILED: {d.message}")
    return sel


def write_lr_grid(bench_dir: Path, exp: Experiment, selections: dict[tuple[str, str], Selection]) -> None:
    """lr-grid.json: every (dataset, row) selection so far, with each rate's validation values."""
    out: dict[str, Any] = {"selection_seeds": exp.selection_seeds, "lr_grid_extensions": exp.lr_grid_extensions,
                           "statistic": "mean over the selection seeds of best_val_monitor (validation)",
                           "datasets": {}}
    for (ds, label), sel in selections.items():
        out["datasets"].setdefault(ds, {})[label] = sel.to_dict()
    atomic_write_text(bench_dir / LR_GRID, json.dumps(out, indent=1))


def refuse_run(r: PlannedRun, message: str, total: int, outcome: BenchOutcome, echo: Echo) -> None:
    """A run of a row whose lr selection failed: not trained; error.json says why (a finished one is kept)."""
    key = (r.dataset, r.row.label, r.seed)
    prefix = f"[{r.index}/{total}] {r.dataset} {r.row.label} seed {r.seed}"
    if _read_json(r.path / "metrics.json") is not None:
        outcome.skipped.append(key)
        echo(f"{prefix} ... finished earlier, kept (its lr selection fails now: see lr-grid.json)")
        return
    if r.path.exists():
        shutil.rmtree(r.path)
    r.path.mkdir(parents=True)
    atomic_write_text(r.path / "error.json", json.dumps({
        "error": message, "type": "LrGridError", "traceback": "", "dataset": r.dataset, "row": r.row.label,
        "seed": r.seed, "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}, indent=1))
    outcome.failed.append(key)
    echo(f"{prefix} ... not run (its lr selection failed)")


def write_bench_yaml(exp: Experiment, bench_dir: Path) -> None:
    import yaml

    spec = exp.to_dict()
    spec["out"] = str(bench_dir)
    spec["polyrec"] = __version__
    spec["written"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    atomic_write_text(bench_dir / "bench.yaml", yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))


ReportWriter = Callable[[Path], Path]  # bench folder -> the report file it wrote (polyrec.report.write_report)


def run_bench(exp: Experiment, bench_dir: str | Path, echo: Echo = _print,
              report: ReportWriter | None = None) -> BenchOutcome:
    """The lr grid of every row that has one (polyrec.bench.lrgrid), every planned run (at its row's chosen
    rate), then the tables and (when a `report` writer is given) the report, while this process holds the
    bench folder. The writer is handed in because polyrec.report imports this package."""
    from polyrec.train.rundir import claim

    with claim(bench_dir, "bench folder"):
        return _run_bench(exp, Path(bench_dir), echo, report)


def _run_bench(exp: Experiment, bench_dir: Path, echo: Echo, report: ReportWriter | None) -> BenchOutcome:
    runs = plan(exp, bench_dir)
    write_bench_yaml(exp, bench_dir)
    env = environment(exp)
    atomic_write_text(bench_dir / "environment.json", json.dumps(env, indent=1))
    outcome = BenchOutcome(bench_dir)
    echo(f"bench: {len(runs)} runs = {len(exp.datasets)} dataset(s) x {len(exp.rows)} row(s) x "
         f"{len(exp.seeds)} seed(s) -> {bench_dir}")
    for note in exp.notes:
        echo(f"note: {note}")
    pairs = [(ds, row) for ds in exp.datasets for row in exp.rows if exp.grid_for(row)]
    if pairs:
        n = sum(len(exp.grid_for(row)) for _, row in pairs) * len(exp.selection_seeds)
        echo(f"lr grid: {len(pairs)} (dataset, row) pair(s), {n} run(s) on seed(s) "
             f"{', '.join(map(str, exp.selection_seeds))}, judged on validation (more if a grid is extended)")
        outcome.grid = BenchOutcome(bench_dir)
        for ds, row in pairs:
            outcome.selections[(ds, row.label)] = select_rate(exp, bench_dir, ds, row, outcome.grid, echo)
            write_lr_grid(bench_dir, exp, outcome.selections)
        rates = {k: s.chosen for k, s in outcome.selections.items() if s.chosen is not None}
        runs = plan(exp, bench_dir, rates)
    failed_rows = {k: s.message for k, s in outcome.selections.items() if s.status == "failed"}
    for r in runs:
        if (r.dataset, r.row.label) in failed_rows:
            refuse_run(r, failed_rows[(r.dataset, r.row.label)], len(runs), outcome, echo)
        else:
            run_one(r, len(runs), outcome, echo)
    _cache_entries(bench_dir, exp, env)
    atomic_write_text(bench_dir / "environment.json", json.dumps(env, indent=1))
    outcome.results, outcome.paths = write_results(bench_dir)
    echo("")
    echo(outcome.results["markdown"])
    if report:
        try:
            outcome.report = report(bench_dir)
        except Exception as exc:  # noqa: BLE001 - the results are written; a report problem is not fatal
            echo(f"report: FAILED ({type(exc).__name__}: {_short(exc)})")
    n = len(runs)
    if outcome.grid is not None:
        g = outcome.grid
        echo(f"lr grid: {len(g.trained)} run(s) trained now, {len(g.skipped)} finished earlier"
             + (f", {len(g.failed)} failed (a rate that failed cannot be chosen)" if g.failed else "")
             + f"; {len(outcome.selections) - len(failed_rows)} of {len(outcome.selections)} rate(s) chosen")
    echo(f"{n - len(outcome.failed)} of {n} runs finished ({len(outcome.trained)} trained now"
         + (f", {len(outcome.resumed)} of them resumed" if outcome.resumed else "")
         + (f", {len(outcome.linked)} linked from the lr grid" if outcome.linked else "")
         + f", {len(outcome.skipped)} finished earlier)"
         + (f"; {len(outcome.failed)} FAILED (error.json in their folders; re-run to retry)" if outcome.failed else ""))
    for sel in outcome.failed_selections:
        echo(f"FAILED: {sel.message}")
    echo("wrote:")
    for p in [bench_dir / "bench.yaml", bench_dir / "environment.json"] + (
            [bench_dir / LR_GRID] if outcome.selections else []) + [*outcome.paths.values()] + (
            [outcome.report] if outcome.report else []):
        echo(f"  {p}")
    return outcome


def bench_command(dataset: str | None, models: str | None, seeds: str | None, config: Path | None,
                  overrides: list[str] | None, optimizers: str | None, out: Path | None,
                  experiment: Path | None, echo: Echo = _print, report: ReportWriter | None = None,
                  topk: bool = False, folds: int | None = None) -> int:
    """`polyrec bench`: returns the exit code (0: every run finished; 1: some failed)."""
    import shlex

    from polyrec.bench.spec import build_experiment

    argv = ["polyrec", *sys.argv[1:]]
    exp = build_experiment(experiment, dataset, models, seeds, config, overrides, optimizers, command=argv, topk=topk,
                           folds=folds)
    if out is None:
        out = Path("bench") / datetime.now().strftime("%Y%m%d-%H%M%S")
        echo(f"bench folder: {out}  (to finish an interrupted bench: "
             f"{shlex.join(argv + ['--out', str(out)])})")
    try:
        outcome = run_bench(exp, out, echo=echo, report=report)
    except KeyboardInterrupt:
        given = any(a == "--out" or a.startswith("--out=") for a in argv)
        again = argv if given else argv + ["--out", str(out)]
        echo("")
        echo(f"interrupted. Finished runs are kept and the current one has its last epoch's checkpoint; "
             f"to finish the missing runs re-run: {shlex.join(again)}")
        return 130
    return 1 if outcome.failed else 0
