"""Run a benchmark: every (dataset, row, seed) as an ordinary run folder, resumable, failures isolated.

Bench folder layout::

    bench.yaml            the resolved experiment (datasets, seeds, rows with their settings) + command line
    environment.json      versions, git commit, platform, data file fingerprints and cache entries
    runs/<dataset>/<row folder>/seed<k>/   ordinary `polyrec train` run folders (+ train.log; error.json
                          {error, type, traceback} when the run failed)
    results.json, results.csv, results-per-seed.csv, results.md   (polyrec.bench.aggregate)
    report.html           (the `report` writer the caller hands in: polyrec.report.write_report)

Re-running the same command on the same folder: runs with metrics.json are skipped, runs with a
checkpoint but no metrics.json are resumed from it (the trainer resumes exactly), runs with error.json
are retried from scratch, and interrupted runs without a checkpoint start again.
"""

from __future__ import annotations

import json
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
from polyrec.bench.spec import Experiment, Row
from polyrec.bench.store import run_dir as _run_dir
from polyrec.config import RunConfig, config_differences, load_config
from polyrec.errors import PolyrecError
from polyrec.metrics.topk import headline_key
from polyrec.runs import train_run
from polyrec.train.trainer import CHECKPOINT
from polyrec.utils.io import atomic_write_text
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
def plan(exp: Experiment, bench_dir: Path) -> list[PlannedRun]:
    """Every run in order (dataset, then seed, then row: an interrupted bench leaves complete seeds, which
    pair), with its resolved config; refuses a folder whose existing runs were made with other settings."""
    runs = []
    for ds in exp.datasets:
        for seed in exp.seeds:
            for row in exp.rows:
                runs.append(PlannedRun(len(runs) + 1, ds, row, seed, _run_dir(bench_dir, ds, row.folder, seed),
                                       exp.config_for(ds, row, seed)))
    stale = []
    for r in runs:
        saved = r.path / "config.yaml"
        if not saved.exists() or (r.path / "error.json").exists():
            continue  # nothing there, or a failed run (retried from scratch)
        if not ((r.path / "metrics.json").exists() or (r.path / CHECKPOINT).exists()):
            continue  # interrupted before its first checkpoint: started again anyway
        try:
            old = load_config(saved).model_dump()
        except PolyrecError:
            old = None
        if old != r.config.model_dump():
            stale.append(f"{r.path} ({_diff(old, r.config.model_dump())})")
    if stale:
        listed = "\n  ".join(stale[:5]) + (f"\n  ... and {len(stale) - 5} more" if len(stale) > 5 else "")
        raise PolyrecError(
            f"{bench_dir} already holds runs made with other settings than this command asks for:\n  {listed}\n"
            "Choose another --out, or delete those run folders to redo them."
        )
    return runs


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


def run_one(r: PlannedRun, total: int, outcome: BenchOutcome, echo: Echo) -> None:
    key = (r.dataset, r.row.label, r.seed)
    prefix = f"[{r.index}/{total}] {r.dataset} {r.row.label} seed {r.seed}"
    path = r.path
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
    head = headline(result.metrics)
    shown = f"test {head[0]} {head[1]:.4f}, " if head else ""
    echo(f" done ({shown}{seconds:.0f} s)")


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
    """Every planned run, then the tables and (when a `report` writer is given) the report, while this process
    holds the bench folder. The writer is handed in because polyrec.report imports this package."""
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
    for r in runs:
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
    echo(f"{n - len(outcome.failed)} of {n} runs finished ({len(outcome.trained)} trained now"
         + (f", {len(outcome.resumed)} of them resumed" if outcome.resumed else "")
         + f", {len(outcome.skipped)} finished earlier)"
         + (f"; {len(outcome.failed)} FAILED (error.json in their folders; re-run to retry)" if outcome.failed else ""))
    echo("wrote:")
    for p in [bench_dir / "bench.yaml", bench_dir / "environment.json", *outcome.paths.values()] + (
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
