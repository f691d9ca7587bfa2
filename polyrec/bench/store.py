"""Reading a bench folder: the one reader behind the aggregate tables (bench/aggregate.py) and the report
(polyrec/report/).

Layout (written by the bench runner)::

    bench.yaml        resolved experiment: datasets, rows [{label, model, folder, ...}], seeds, command
    environment.json  versions, git commit, data fingerprints
    runs/<dataset>/<row folder>/seed<k>/   ordinary polyrec run folders (metrics.json, metrics.jsonl,
                      steps.jsonl, gates.json for expert models, error.json for failed runs, config.yaml)
    lr-grid.json      learning-rate selection of the rows with a grid (polyrec.bench.lrgrid)
    lr-grid/<dataset>/<row folder>/lr=<rate>/seed<k>/   the grid's run folders (not rows of the tables)
    results.md        the aggregator's Markdown tables

Reading is tolerant (absent or unreadable files leave gaps, not errors); a run's large files (the per-step
log, gates, config) are read only when asked for, so aggregating a big bench reads its metrics only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from polyrec.bench.lrgrid import LR_GRID, lr_text
from polyrec.errors import PolyrecError
from polyrec.metrics.topk import headline_key
from polyrec.utils.io import read_json_or_none

_SEED_DIR = re.compile(r"^seed(-?\d+)$")


def run_dir(bench_dir: Path, dataset: str, folder: str, seed: int) -> Path:
    """Where the runner puts run (dataset, row folder, seed)."""
    return Path(bench_dir) / "runs" / dataset / folder / f"seed{seed}"


def grid_run_dir(bench_dir: Path, dataset: str, folder: str, lr: float, seed: int) -> Path:
    """Where the runner puts the lr grid's run at rate `lr` (outside runs/: grid runs are not table rows)."""
    return Path(bench_dir) / "lr-grid" / dataset / folder / f"lr={lr_text(lr)}" / f"seed{seed}"


def read_lr_grid(bench_dir: Path) -> dict[str, Any]:
    """lr-grid.json ({} when the bench selected no learning rate, or the file is unreadable)."""
    data = read_json_or_none(Path(bench_dir) / LR_GRID)
    return data if isinstance(data, dict) else {}


def is_cap_bound(epochs_run: Any, best_epoch: Any) -> bool:
    """A run whose best validation epoch is its last: the epoch cap ended it, not early stopping (which needs
    `patience` epochs without improvement after the best), so its validation curve may still be rising."""
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (epochs_run, best_epoch))
    return ok and epochs_run >= 1 and best_epoch == epochs_run


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON-object lines of a log; a half-written last line of an interrupted run is skipped."""
    out: list[dict[str, Any]] = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _read_yaml_or_empty(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) if path.exists() else None
    except (yaml.YAMLError, OSError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass
class Run:
    """One (dataset, row, seed) run folder. `metrics` is metrics.json (None when absent or unreadable);
    `error` is error.json (a placeholder when it exists but cannot be read)."""

    dataset: str
    label: str
    seed: int
    path: Path
    metrics: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    @classmethod
    def read(cls, dataset: str, label: str, seed: int, path: Path) -> "Run":
        metrics = read_json_or_none(path / "metrics.json")
        error = None
        if (path / "error.json").exists():
            error = read_json_or_none(path / "error.json")
            if not isinstance(error, dict):
                error = {"error": "error.json exists but could not be read"}
        return cls(dataset, label, seed, path, metrics if isinstance(metrics, dict) else None, error)

    @property
    def ok(self) -> bool:
        return self.metrics is not None and self.error is None

    @cached_property
    def history(self) -> list[dict[str, Any]]:
        """metrics.jsonl: one record per epoch."""
        return read_jsonl(self.path / "metrics.jsonl")

    @cached_property
    def steps(self) -> list[dict[str, Any]]:
        """steps.jsonl: one record per logged training step."""
        return read_jsonl(self.path / "steps.jsonl")

    @cached_property
    def gates(self) -> dict[str, Any] | None:
        """gates.json of expert models."""
        gates = read_json_or_none(self.path / "gates.json")
        return gates if isinstance(gates, dict) else None

    @cached_property
    def config(self) -> dict[str, Any]:
        """config.yaml ({} when absent or unreadable)."""
        return _read_yaml_or_empty(self.path / "config.yaml")

    @property
    def test(self) -> dict[str, Any]:
        return (self.metrics or {}).get("test") or {}

    @property
    def cap_bound(self) -> bool:
        m = self.metrics or {}
        return is_cap_bound(m.get("epochs_run"), m.get("best_epoch"))

    @property
    def head_names(self) -> list[str]:
        return list(self.test.get("heads", {}))

    @property
    def model(self) -> str | None:
        return (self.config.get("model") or {}).get("name") or (self.metrics or {}).get("model")

    @property
    def optimizer(self) -> str | None:
        return (self.config.get("train") or {}).get("optimizer")

    def test_cell(self, scenario: str, head: str) -> dict[str, Any]:
        """Test metrics of one head over all rows (scenario "all") or over one scenario's rows."""
        if scenario == "all":
            return (self.test.get("heads") or {}).get(head) or {}
        return ((self.test.get("cells") or {}).get(scenario) or {}).get(head) or {}

    def curve(self) -> tuple[str | None, dict[int, float]]:
        """(monitor name, {epoch: validation monitor value}) from metrics.jsonl."""
        monitor, values = None, {}
        for rec in self.history:
            if isinstance(rec.get("epoch"), int):
                monitor = rec.get("monitor", monitor)
                v = rec.get("monitor_value")
                if isinstance(v, (int, float)):
                    values[rec["epoch"]] = float(v)
        return monitor, values


def head_metric(cell: dict[str, Any]) -> str | None:
    """The metric a head is judged by: AUC for binary heads, RMSE for regression heads, the top-K headline
    (NDCG@20) for top-K runs, which have no AUC."""
    for key in ("auc", "rmse"):
        if key in cell:
            return key
    return headline_key(cell)


def heads_and_scenarios(runs: Sequence[Run]) -> tuple[list[str], list[str]]:
    """Every head and scenario the runs' test metrics hold, in first-seen order."""
    heads: list[str] = []
    scenarios: list[str] = []
    for r in runs:
        heads += [h for h in r.test.get("heads") or {} if h not in heads]
        scenarios += [s for s in r.test.get("cells") or {} if s not in scenarios]
    return heads, scenarios


@dataclass
class Bench:
    path: Path
    spec: dict[str, Any]  # bench.yaml
    environment: dict[str, Any]
    datasets: list[str]
    labels: list[str]  # row order: bench.yaml's, then labels only found on disk
    runs: list[Run]
    results_md: str | None
    lr_grid: dict[str, Any] = field(default_factory=dict)  # lr-grid.json
    _by_folder: dict[tuple[str, str, int], Run] = field(default_factory=dict, repr=False)

    def runs_of(self, dataset: str, label: str | None = None) -> list[Run]:
        return [r for r in self.runs if r.dataset == dataset and (label is None or r.label == label)]

    def labels_of(self, dataset: str) -> list[str]:
        present = {r.label for r in self.runs_of(dataset)}
        return [lb for lb in self.labels if lb in present]

    def row(self, label: str) -> dict[str, Any]:
        for row in self.spec.get("rows") or []:
            if isinstance(row, dict) and str(row.get("label")) == label:
                return row
        return {}

    def run_at(self, dataset: str, folder: str, seed: int) -> Run | None:
        """The run in runs/<dataset>/<folder>/seed<seed>, if that folder exists."""
        return self._by_folder.get((dataset, folder, seed))


def _label_forms(label: str) -> set[str]:
    """Folder names a runner may give a row label ('mmoe/adam' -> 'mmoe/adam', 'mmoe__adam', ...)."""
    forms = {label, label.replace("/", "__"), label.replace("/", "_"), label.replace("/", "-"),
             label.replace("/", "--"), label.replace("/", "+")}
    for sep in ("_", "-", "__"):
        forms.add(re.sub(r"[^A-Za-z0-9._=+-]+", sep, label).strip(sep))
    return forms


def load_spec(bench_dir: Path) -> dict[str, Any]:
    """bench.yaml, strictly: the aggregator needs its rows (PolyrecError when missing)."""
    path = Path(bench_dir) / "bench.yaml"
    if not path.exists():
        raise PolyrecError(f"{bench_dir} is not a bench folder: bench.yaml is missing.")
    spec = yaml.safe_load(path.read_text()) or {}
    if not isinstance(spec, dict) or not isinstance(spec.get("rows"), list):
        raise PolyrecError(f"{path} holds no rows.")
    return spec


def _read_spec(bench_dir: Path) -> dict[str, Any]:
    """bench.yaml, tolerantly ({} when absent); invalid YAML is still an error."""
    path = bench_dir / "bench.yaml"
    if not path.exists():
        return {}
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise PolyrecError(f"{path} is not valid YAML: {exc}") from None
    return spec if isinstance(spec, dict) else {}


def load_bench(bench_dir: str | Path) -> Bench:
    """Read a bench folder: every run folder under runs/ (named after a row's `folder`, its label, or a slug
    of its label), restricted to bench.yaml's seeds when it lists them."""
    bench_dir = Path(bench_dir)
    if not bench_dir.is_dir():
        raise PolyrecError(f"Benchmark folder not found: {bench_dir}")
    spec = _read_spec(bench_dir)
    runs_root = bench_dir / "runs"
    if not spec and not runs_root.is_dir():
        raise PolyrecError(f"{bench_dir} is not a benchmark folder: it holds neither bench.yaml nor runs/.")
    environment = read_json_or_none(bench_dir / "environment.json") or {}
    spec_rows = [r for r in spec.get("rows") or [] if isinstance(r, dict) and "label" in r]
    spec_labels = [str(r["label"]) for r in spec_rows]
    by_form = {form: lb for lb in reversed(spec_labels) for form in _label_forms(lb)}
    for lb in spec_labels:  # an exact folder name always wins over another label's slug
        by_form[lb] = lb
    for r in spec_rows:  # and the folder the runner was told to use wins over both
        if r.get("folder"):
            by_form[str(r["folder"])] = str(r["label"])
    # a bench re-run with fewer seeds than are on disk (e.g. --seeds 0,1,2 while seed 3 trains) reports those
    # seeds only, as results.md does
    seeds = spec.get("seeds")
    wanted = {int(s) for s in seeds} if isinstance(seeds, list) and all(isinstance(s, int) for s in seeds) else None
    runs: list[Run] = []
    by_folder: dict[tuple[str, str, int], Run] = {}
    disk_datasets: list[str] = []
    if runs_root.is_dir():
        for ds_dir in sorted(p for p in runs_root.iterdir() if p.is_dir()):
            disk_datasets.append(ds_dir.name)
            for seed_dir in sorted(ds_dir.rglob("seed*")):
                m = _SEED_DIR.match(seed_dir.name)
                if not m or not seed_dir.is_dir() or (wanted is not None and int(m.group(1)) not in wanted):
                    continue
                rel = seed_dir.parent.relative_to(ds_dir).as_posix()
                if rel == ".":
                    continue
                run = Run.read(ds_dir.name, by_form.get(rel, rel), int(m.group(1)), seed_dir)
                runs.append(run)
                by_folder[(ds_dir.name, rel, run.seed)] = run
    runs.sort(key=lambda r: (r.dataset, r.label, r.seed))
    datasets = [str(d) for d in spec.get("datasets") or [] if isinstance(d, (str, int))]
    datasets += [d for d in disk_datasets if d not in datasets]
    labels = list(dict.fromkeys(spec_labels + [r.label for r in runs]))
    results_md = (bench_dir / "results.md").read_text() if (bench_dir / "results.md").exists() else None
    return Bench(bench_dir, spec, environment, datasets, labels, runs, results_md, read_lr_grid(bench_dir), by_folder)
