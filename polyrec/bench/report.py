"""A benchmark's report: ONE self-contained HTML file (``bench_dir/report.html``).

Everything the page shows is inside the file: figures are matplotlib (Agg) PNGs inlined as base64
``data:`` URIs, the style sheet is inline, there is no JavaScript, and a Content-Security-Policy
meta tag forbids the page from fetching anything, so it opens offline and can be mailed or archived.

Input (written by the bench runner and aggregator)::

    bench.yaml        resolved experiment: datasets, rows [{label, model, ...}], seeds, command
    environment.json  versions, git commit, data fingerprints
    runs/<dataset>/<label>/seed<k>/   ordinary polyrec run folders (metrics.json, metrics.jsonl,
                      steps.jsonl, gates.json for expert models, error.json for failed runs)
    results.md        the aggregator's Markdown tables (shown as they are when present;
                      otherwise the report computes its own summary tables from the runs)

Figures are always computed from the run folders (they need per-seed and per-epoch values; results.json
is not read) and from successful runs only (failed ones are listed with their errors):
per dataset, test AUC of each (scenario, head) cell per row with std-over-seeds error bars;
learning curves (validation monitor, per-head training loss) as mean over seeds with a +-1 std band;
gate-weight heatmaps for expert models; task weights against step where a balancer changes them;
validation monitor per optimiser where rows of one model differ only in optimiser.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from polyrec.errors import PolyrecError
from polyrec.metrics.topk import headline_key
from polyrec.utils.io import atomic_write_text
from polyrec.utils.io import read_json_or_none as _read_json

REPORT = "report.html"
DPI = 90
_SEED_DIR = re.compile(r"^seed(-?\d+)$")


# --- reading the bench folder -----------------------------------------------------------------------
@dataclass
class Run:
    """One (dataset, row, seed) run folder, with whatever files it holds (missing ones stay empty)."""

    dataset: str
    label: str
    seed: int
    path: Path
    metrics: dict[str, Any] | None = None  # metrics.json
    history: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl
    steps: list[dict[str, Any]] = field(default_factory=list)  # steps.jsonl
    gates: dict[str, Any] | None = None  # gates.json
    error: dict[str, Any] | None = None  # error.json
    config: dict[str, Any] = field(default_factory=dict)  # config.yaml

    @property
    def ok(self) -> bool:
        return self.metrics is not None and self.error is None

    @property
    def head_names(self) -> list[str]:
        return list(((self.metrics or {}).get("test") or {}).get("heads", {}))

    @property
    def model(self) -> str | None:
        return (self.config.get("model") or {}).get("name") or (self.metrics or {}).get("model")

    @property
    def optimizer(self) -> str | None:
        return (self.config.get("train") or {}).get("optimizer")


@dataclass
class Bench:
    path: Path
    spec: dict[str, Any]  # bench.yaml
    environment: dict[str, Any]
    datasets: list[str]
    labels: list[str]  # row order: bench.yaml's, then labels only found on disk
    runs: list[Run]
    results_md: str | None

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


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a half-written last line of an interrupted run
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _label_forms(label: str) -> set[str]:
    """Folder names a runner may give a row label ('mmoe/adam' -> 'mmoe/adam', 'mmoe__adam', ...)."""
    forms = {label, label.replace("/", "__"), label.replace("/", "_"), label.replace("/", "-"),
             label.replace("/", "--"), label.replace("/", "+")}
    for sep in ("_", "-", "__"):
        forms.add(re.sub(r"[^A-Za-z0-9._=+-]+", sep, label).strip(sep))
    return forms


def load_bench(bench_dir: str | Path) -> Bench:
    """Read a bench folder into memory (tolerant: absent or unreadable files leave gaps, not errors)."""
    bench_dir = Path(bench_dir)
    if not bench_dir.is_dir():
        raise PolyrecError(f"Benchmark folder not found: {bench_dir}")
    spec: dict[str, Any] = {}
    if (bench_dir / "bench.yaml").exists():
        try:
            spec = yaml.safe_load((bench_dir / "bench.yaml").read_text()) or {}
        except yaml.YAMLError as exc:
            raise PolyrecError(f"{bench_dir / 'bench.yaml'} is not valid YAML: {exc}") from None
        if not isinstance(spec, dict):
            spec = {}
    runs_root = bench_dir / "runs"
    if not spec and not runs_root.is_dir():
        raise PolyrecError(f"{bench_dir} is not a benchmark folder: it holds neither bench.yaml nor runs/.")
    environment = _read_json(bench_dir / "environment.json") or {}
    spec_labels = [str(r["label"]) for r in spec.get("rows") or [] if isinstance(r, dict) and "label" in r]
    by_form = {form: lb for lb in reversed(spec_labels) for form in _label_forms(lb)}
    for lb in spec_labels:  # an exact folder name always wins over another label's slug
        by_form[lb] = lb
    # a bench re-run with fewer seeds than are on disk (e.g. --seeds 0,1,2 while seed 3 trains) reports those
    # seeds only, as results.md does
    seeds = spec.get("seeds")
    wanted = {int(s) for s in seeds} if isinstance(seeds, list) and all(isinstance(s, int) for s in seeds) else None
    runs: list[Run] = []
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
                runs.append(_load_run(ds_dir.name, by_form.get(rel, rel), int(m.group(1)), seed_dir))
    runs.sort(key=lambda r: (r.dataset, r.label, r.seed))
    datasets = [str(d) for d in spec.get("datasets") or [] if isinstance(d, (str, int))]
    datasets += [d for d in disk_datasets if d not in datasets]
    labels = list(dict.fromkeys(spec_labels + [r.label for r in runs]))
    results_md = (bench_dir / "results.md").read_text() if (bench_dir / "results.md").exists() else None
    return Bench(bench_dir, spec, environment, datasets, labels, runs, results_md)


def _load_run(dataset: str, label: str, seed: int, path: Path) -> Run:
    run = Run(dataset, label, seed, path)
    run.metrics = _read_json(path / "metrics.json")
    run.error = _read_json(path / "error.json") if (path / "error.json").exists() else None
    if (path / "error.json").exists() and run.error is None:
        run.error = {"error": "error.json exists but could not be read"}
    run.history = _read_jsonl(path / "metrics.jsonl")
    run.steps = _read_jsonl(path / "steps.jsonl")
    run.gates = _read_json(path / "gates.json") if (path / "gates.json").exists() else None
    if (path / "config.yaml").exists():
        try:
            run.config = yaml.safe_load((path / "config.yaml").read_text()) or {}
        except yaml.YAMLError:
            run.config = {}
    return run


# --- small statistics ---------------------------------------------------------------------------------
def _finite(values: Iterable[Any]) -> list[float]:
    out = []
    for v in values:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out.append(float(v))
    return out


def mean_std(values: Iterable[Any]) -> tuple[float, float, int]:
    """Mean, sample std (ddof=1; 0 for a single value) and count of the finite values; NaNs when none."""
    xs = _finite(values)
    if not xs:
        return math.nan, math.nan, 0
    std = float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0
    return float(np.mean(xs)), std, len(xs)


def _head_metric(cell: dict[str, Any]) -> str | None:
    """The metric a head is judged by: AUC for binary heads, RMSE for regression heads, the top-K headline
    (NDCG@20) for top-K runs, which have no AUC."""
    for key in ("auc", "rmse"):
        if key in cell:
            return key
    return headline_key(cell)


def _test_cell(run: Run, scenario: str, head: str) -> dict[str, Any]:
    test = (run.metrics or {}).get("test") or {}
    if scenario == "all":
        return (test.get("heads") or {}).get(head) or {}
    return ((test.get("cells") or {}).get(scenario) or {}).get(head) or {}


def _heads_and_scenarios(runs: Sequence[Run]) -> tuple[list[str], list[str]]:
    heads: list[str] = []
    scenarios: list[str] = []
    for r in runs:
        test = (r.metrics or {}).get("test") or {}
        heads += [h for h in test.get("heads") or {} if h not in heads]
        scenarios += [s for s in test.get("cells") or {} if s not in scenarios]
    return heads, scenarios


def _series(runs: Sequence[Run], records: str, x_key: str, value) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, mean and std over runs of value(record) for each x (epochs or steps) that any run reached."""
    per_x: dict[float, list[float]] = {}
    for r in runs:
        for rec in getattr(r, records):
            x = rec.get(x_key)
            v = value(rec)
            if isinstance(x, (int, float)) and v is not None:
                per_x.setdefault(float(x), []).append(v)
    xs = sorted(per_x)
    stats = [mean_std(per_x[x]) for x in xs]
    return np.array(xs), np.array([s[0] for s in stats]), np.array([s[1] for s in stats])


# --- figures ----------------------------------------------------------------------------------------
class _Figures:
    """matplotlib without pyplot: Figure + Agg canvas, so no global backend state is touched."""

    def __init__(self) -> None:
        try:
            import matplotlib
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError:  # pragma: no cover - depends on the environment
            raise PolyrecError("The benchmark report draws its figures with matplotlib: "
                               "pip install matplotlib") from None
        self._Figure, self._Canvas = Figure, FigureCanvasAgg
        # tab10, then its lighter tab20 twins: 20 distinct colours before any repeats (big benches)
        self.colors = matplotlib.colormaps["tab10"].colors + matplotlib.colormaps["tab20"].colors[1::2]

    def new(self, width: float, height: float):
        fig = self._Figure(figsize=(width, height), layout="constrained")
        self._Canvas(fig)
        return fig

    def color(self, i: int):
        return self.colors[i % len(self.colors)]

    @staticmethod
    def png(fig) -> str:
        """The figure as a base64 PNG with a 256-colour adaptive palette: charts hold few colours, and the
        palette makes the inline images (and so a one-file report of a large bench) about 3x smaller."""
        from PIL import Image  # matplotlib's own dependency

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
        buf.seek(0)
        image = Image.open(buf).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        out = io.BytesIO()
        image.save(out, format="PNG", optimize=True)
        return base64.b64encode(out.getvalue()).decode("ascii")


@dataclass
class Figure:
    title: str
    png_b64: str
    caption: str = ""


def _auc_bars(figs: _Figures, bench: Bench, dataset: str) -> Figure | None:
    labels = bench.labels_of(dataset)
    ok = [r for r in bench.runs_of(dataset) if r.ok]
    heads, scenarios = _heads_and_scenarios(ok)
    if not heads:
        return None
    groups = ["all"] + (scenarios if len(scenarios) > 1 else [])
    rows = [lb for lb in labels if any(r.label == lb for r in ok)]
    n_heads = len(heads)
    panel_w = min(12.0, max(4.5, 1.0 + len(groups) * (0.3 + 0.22 * len(rows))))
    ncols = 2 if n_heads > 1 and panel_w <= 5.5 else 1
    nrows = math.ceil(n_heads / ncols)
    fig = figs.new(panel_w * ncols + 2.2, 3.2 * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    metric_names = []
    for ax, head in zip(axes, heads):
        metric = next((m for r in ok if (m := _head_metric(_test_cell(r, "all", head)))), "auc")
        metric_names.append(metric)
        x = np.arange(len(groups), dtype=float)
        bar_w = 0.8 / max(len(rows), 1)
        lo, hi = math.inf, -math.inf
        for i, label in enumerate(rows):
            runs = [r for r in ok if r.label == label]
            stats = [mean_std(_test_cell(r, g, head).get(metric) for r in runs) for g in groups]
            means = np.array([s[0] for s in stats])
            stds = np.array([s[1] for s in stats])
            n = max((s[2] for s in stats), default=0)
            pos = x - 0.4 + bar_w * (i + 0.5)
            ax.bar(pos, np.nan_to_num(means, nan=0.0), bar_w * 0.92, yerr=np.nan_to_num(stds), capsize=3,
                   color=figs.color(bench.labels.index(label)), label=f"{label} (n={n})",
                   error_kw={"elinewidth": 1, "ecolor": "#333"})
            finite = np.isfinite(means)
            if finite.any():
                lo = min(lo, float(np.min((means - stds)[finite])))
                hi = max(hi, float(np.max((means + stds)[finite])))
        if math.isfinite(lo):
            pad = max(0.01, 0.15 * (hi - lo))
            bottom = lo - pad if metric == "auc" else 0.0
            top = min(1.0, hi + pad) if metric == "auc" else hi + pad
            ax.set_ylim(max(0.0, bottom), top)
        ax.set_xticks(x, groups)
        ax.set_xlabel("scenario (all = every test row)")
        ax.set_ylabel(f"test {metric.upper()}")
        ax.set_title(f"head {head}: test {metric.upper()}")
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(heads):]:
        ax.set_visible(False)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside right center", fontsize=8, title="row (successful seeds)",
               title_fontsize=8)
    fig.suptitle(f"{dataset}: test metric per (scenario, head) cell and row")
    caption = "Bars: mean over seeds; error bars: standard deviation over seeds (n = successful seeds)." + (
        " The AUC axis is zoomed to the data and does not start at 0." if "auc" in metric_names else "")
    return Figure(f"{dataset}: test {'/'.join(sorted(set(metric_names))).upper()} per cell", figs.png(fig), caption)


def _monitor_name(runs: Sequence[Run]) -> str:
    for r in runs:
        for rec in r.history:
            if rec.get("monitor"):
                return str(rec["monitor"])
    return "validation monitor"


def _band(ax, x, mean, std, color, label, marker="o") -> None:
    ax.plot(x, mean, color=color, marker=marker, markersize=3.5, linewidth=1.5, label=label)
    if len(x) and np.isfinite(std).any():
        ax.fill_between(x, mean - np.nan_to_num(std), mean + np.nan_to_num(std), color=color, alpha=0.18,
                        linewidth=0)


def _learning_curves(figs: _Figures, bench: Bench, dataset: str) -> Figure | None:
    labels = bench.labels_of(dataset)
    runs = [r for r in bench.runs_of(dataset) if r.ok and r.history]  # failed runs: see "Failed runs"
    if not runs:
        return None
    heads: list[str] = []
    for r in runs:
        for rec in r.history:
            heads += [h for h in rec.get("train_loss") or {} if h not in heads]
    n_panels = 1 + len(heads)
    ncols = min(3, n_panels)
    nrows = math.ceil(n_panels / ncols)
    fig = figs.new(4.3 * ncols + 0.4, 3.3 * nrows + 0.5)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    monitor = _monitor_name(runs)
    for label in labels:
        rr = [r for r in runs if r.label == label]
        if not rr:
            continue
        color = figs.color(bench.labels.index(label))
        x, m, s = _series(rr, "history", "epoch", lambda rec: _num(rec.get("monitor_value")))
        if len(x):
            _band(axes[0], x, m, s, color, f"{label} (n={len(rr)})")
        for ax, head in zip(axes[1:], heads):
            x, m, s = _series(rr, "history", "epoch", lambda rec, h=head: _num((rec.get("train_loss") or {}).get(h)))
            if len(x):
                _band(ax, x, m, s, color, label)
    axes[0].set_title(f"validation {monitor}")
    axes[0].set_ylabel(monitor)
    for ax, head in zip(axes[1:], heads):
        ax.set_title(f"training loss, head {head}")
        ax.set_ylabel("mean training loss")
    for ax in axes[:n_panels]:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        _epoch_ticks(ax, runs)
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    # one legend for all panels, outside them: every row has the same colour everywhere, and a per-panel
    # legend of a 20-row bench would cover its curves
    handles, names = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="outside right center", fontsize=8, title="row (successful seeds)",
                   title_fontsize=8)
    fig.suptitle(f"{dataset}: learning curves (mean over seeds, band = ±1 std)")
    caption = (f"Left: the validation monitor ({monitor}) after each epoch; others: each head's mean training "
               "loss over the epoch. Runs that stopped early contribute only to the epochs they reached.")
    return Figure(f"{dataset}: learning curves", figs.png(fig), caption)


def _epoch_ticks(ax, runs: Sequence[Run]) -> None:
    """Whole epochs on the x axis: every epoch when there are few, else integer ticks."""
    epochs = sorted({rec["epoch"] for r in runs for rec in r.history if isinstance(rec.get("epoch"), int)})
    if 0 < len(epochs) <= 15:
        ax.set_xticks(epochs)
    else:
        ax.xaxis.get_major_locator().set_params(integer=True)


def _num(v: Any) -> float | None:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def _gate_figures(figs: _Figures, bench: Bench, dataset: str) -> list[Figure]:
    out = []
    for label in bench.labels_of(dataset):
        runs = [r for r in bench.runs_of(dataset, label) if r.ok and r.gates]
        if not runs:
            continue
        gate_names = list(dict.fromkeys(g for r in runs for g in r.gates or {}))
        heads = runs[0].head_names
        for gate in gate_names:
            panels: dict[str, list[np.ndarray]] = {}
            for r in runs:
                for key, mat in ((r.gates or {}).get(gate) or {}).items():
                    try:
                        arr = np.asarray(mat, dtype=float)
                    except (TypeError, ValueError):
                        continue
                    if arr.ndim == 2 and arr.size:
                        panels.setdefault(str(key), []).append(arr)
            keys = (["all"] if "all" in panels else []) + [k for k in panels if k != "all"]
            mats = {}
            for k in keys:
                shapes = {a.shape for a in panels[k]}
                if len(shapes) == 1:
                    mats[k] = np.mean(panels[k], axis=0)
            if not mats:
                continue
            keys = [k for k in keys if k in mats]
            g, e = mats[keys[0]].shape
            row_names = heads if len(heads) == g else [f"gate row {i}" for i in range(g)]
            ncols = min(4, len(keys))
            nrows = math.ceil(len(keys) / ncols)
            cell_w = max(2.6, 0.55 * e + 1.3)
            fig = figs.new(cell_w * ncols + 1.2, (0.45 * g + 1.5) * nrows + 0.6)
            axes = fig.subplots(nrows, ncols, squeeze=False)
            vmax = max(float(np.nanmax(m)) for m in mats.values())
            image = None
            for ax, key in zip(axes.ravel(), keys):
                mat = mats[key]
                image = ax.imshow(mat, vmin=0.0, vmax=max(vmax, 1e-9), cmap="viridis", aspect="auto")
                ax.set_xticks(range(mat.shape[1]), [str(j) for j in range(mat.shape[1])])
                ax.set_yticks(range(mat.shape[0]), row_names if mat.shape[0] == g else
                              [str(i) for i in range(mat.shape[0])])
                ax.set_xlabel("expert")
                ax.set_ylabel("task")
                ax.set_title("all scenarios" if key == "all" else f"scenario {key}", fontsize=10)
                if mat.size <= 96:
                    for (i, j), v in np.ndenumerate(mat):
                        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                                color="white" if v < 0.6 * vmax else "black")
            for ax in axes.ravel()[len(keys):]:
                ax.set_visible(False)
            if image is not None:
                fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.85, label="mean gate weight")
            fig.suptitle(f"{dataset} / {label}: {gate} (test split, mean over {len(runs)} seed(s))")
            out.append(Figure(f"{dataset} / {label}: gate weights ({gate})", figs.png(fig),
                              "Mean softmax weight each task's gate gives each expert on the test split, "
                              "over all test rows and per scenario."))
    return out


def _weights_vary(run: Run) -> bool:
    seen: dict[str, float] = {}
    for rec in run.steps:
        for head, w in (rec.get("weights") or {}).items():
            w = _num(w)
            if w is None:
                continue
            if head in seen and abs(seen[head] - w) > 1e-9 * max(1.0, abs(w)):
                return True
            seen.setdefault(head, w)
    return False


def _weight_figures(figs: _Figures, bench: Bench, dataset: str) -> list[Figure]:
    out = []
    for label in bench.labels_of(dataset):
        runs = [r for r in bench.runs_of(dataset, label) if r.ok and r.steps]
        if not any(_weights_vary(r) for r in runs):
            continue
        heads = list(dict.fromkeys(h for r in runs for rec in r.steps for h in rec.get("weights") or {}))
        fig = figs.new(7.5, 3.6)
        ax = fig.subplots()
        for i, head in enumerate(heads):
            x, m, s = _series(runs, "steps", "step", lambda rec, h=head: _num((rec.get("weights") or {}).get(h)))
            _band(ax, x, m, s, figs.color(i), f"head {head}", marker="")
        ax.set_xlabel("training step")
        ax.set_ylabel("task weight")
        ax.set_title(f"task weights during training (mean over {len(runs)} seed(s))", fontsize=10)
        fig.suptitle(f"{dataset} / {label}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, framealpha=0.85)
        out.append(Figure(f"{dataset} / {label}: task weights", figs.png(fig),
                          "The balancer's weight per head as logged in steps.jsonl; band = ±1 std over seeds."))
    return out


def _optimizer_of(bench: Bench, label: str, runs: Sequence[Run]) -> str | None:
    for r in runs:
        if r.optimizer:
            return str(r.optimizer)
    row = bench.row(label)
    for key in ("train.optimizer", "optimizer"):
        if key in row:
            return str(row[key])
    return label.rsplit("/", 1)[1] if "/" in label else None


def _model_of(bench: Bench, label: str, runs: Sequence[Run]) -> str:
    for r in runs:
        if r.model:
            return str(r.model)
    row = bench.row(label)
    return str(row.get("model") or label.split("/", 1)[0])


def _optimizer_figures(figs: _Figures, bench: Bench, dataset: str) -> list[Figure]:
    """For each model whose rows differ in optimiser: validation monitor per epoch, one curve per row."""
    groups: dict[str, list[tuple[str, str, list[Run]]]] = {}
    for label in bench.labels_of(dataset):
        runs = [r for r in bench.runs_of(dataset, label) if r.ok and r.history]
        if not runs:
            continue
        opt = _optimizer_of(bench, label, runs)
        if opt is not None:
            groups.setdefault(_model_of(bench, label, runs), []).append((label, opt, runs))
    out = []
    for model, members in groups.items():
        if len({opt for _, opt, _ in members}) < 2:
            continue
        fig = figs.new(7.5, 3.8)
        ax = fig.subplots()
        monitor = _monitor_name([r for _, _, rr in members for r in rr])
        for label, opt, runs in members:
            x, m, s = _series(runs, "history", "epoch", lambda rec: _num(rec.get("monitor_value")))
            lr = (runs[0].config.get("train") or {}).get("lr")
            name = f"{opt}" + (f", lr={lr:g}" if isinstance(lr, (int, float)) else "") + f" — {label}"
            _band(ax, x, m, s, figs.color(bench.labels.index(label)), name)
        ax.set_xlabel("epoch")
        _epoch_ticks(ax, [r for _, _, rr in members for r in rr])
        ax.set_ylabel(f"validation {monitor}")
        ax.set_title(f"validation {monitor} per optimiser (mean over seeds)", fontsize=10)
        fig.suptitle(f"{dataset} / {model}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, framealpha=0.85)
        out.append(Figure(f"{dataset} / {model}: optimisers", figs.png(fig),
                          "Mean over seeds; band = ±1 std over seeds."))
    return out


# --- HTML pieces --------------------------------------------------------------------------------------
def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def _flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(d, dict) and d:
        out = []
        for k, v in d.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(d, (list, tuple)) and d and all(not isinstance(x, (dict, list)) for x in d):
        return [(prefix, ", ".join(str(x) for x in d))]
    if isinstance(d, (dict, list, tuple)):
        return [(prefix, json.dumps(d, sort_keys=True))] if d or prefix else []
    return [(prefix, d)]


def _kv_table(pairs: Sequence[tuple[str, Any]], cls: str = "kv") -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_fmt(v))}</td></tr>" for k, v in pairs)
    return f'<table class="{cls}"><tbody>{rows}</tbody></table>'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="{"num" if j >= numeric_from else ""}">{_e(c)}</td>'
                                    for j, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def markdown_to_html(text: str) -> str:
    """The aggregator's Markdown (headings, pipe tables, lists, paragraphs) as HTML; raw HTML stays text.

    markdown-it-py comes with rich (a polyrec dependency), so this costs no extra package.
    """
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")
    # raw HTML stays text, except the aggregator's <u> for "second best"
    html_text = md.render(text).replace("&lt;u&gt;", "<u>").replace("&lt;/u&gt;", "</u>")
    return _shift_headings(html_text)


def _shift_headings(fragment: str, by: int = 2) -> str:
    """Markdown's '#' headings sit under the report's own h1/h2."""
    return re.sub(r"<(/?)h([1-6])>", lambda m: f"<{m.group(1)}h{min(int(m.group(2)) + by, 6)}>", fragment)


# --- summary tables when the aggregator's results.md is absent ----------------------------------------
def summarize(bench: Bench) -> dict[str, list[dict[str, Any]]]:
    """Per dataset, per row: seeds ok/failed, and mean/std/n over seeds of every test cell's headline
    metric (AUC for binary heads, RMSE for regression), overall mean AUC, train seconds and best epoch."""
    out: dict[str, list[dict[str, Any]]] = {}
    for ds in bench.datasets:
        rows = []
        ok_all = [r for r in bench.runs_of(ds) if r.ok]
        heads, scenarios = _heads_and_scenarios(ok_all)
        for label in bench.labels_of(ds):
            runs = bench.runs_of(ds, label)
            ok = [r for r in runs if r.ok]
            cells: dict[str, tuple[float, float, int]] = {}
            for scenario in ["all"] + scenarios:
                for head in heads:
                    metric = next((m for r in ok if (m := _head_metric(_test_cell(r, "all", head)))), None)
                    if metric:
                        cells[f"{scenario}/{head}/{metric}"] = mean_std(_test_cell(r, scenario, head).get(metric)
                                                                        for r in ok)

            def overall(key: str, ok: list[Run] = ok) -> tuple[float, float, int]:
                return mean_std((((r.metrics or {}).get("test") or {}).get("overall") or {}).get(key) for r in ok)

            rows.append({
                "label": label, "seeds_ok": len(ok), "seeds_failed": len(runs) - len(ok), "cells": cells,
                "overall/mean_auc": overall("mean_auc"), "overall/logloss": overall("logloss"),
                "train_seconds": mean_std((r.metrics or {}).get("train_seconds") for r in ok),
                "best_epoch": mean_std((r.metrics or {}).get("best_epoch") for r in ok),
            })
        out[ds] = rows
    return out


def _pm(stat: tuple[float, float, int], digits: int = 4) -> str:
    mean, std, n = stat
    if n == 0:
        return "—"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def _summary_html(bench: Bench) -> str:
    parts = ['<p class="note">No results.md from the aggregator: these tables are computed from the run '
             "folders (mean ± sample std over successful seeds).</p>"]
    for ds, rows in summarize(bench).items():
        if not rows:
            continue
        parts.append(f"<h3>{_e(ds)}</h3>")
        header = ["row", "seeds ok", "failed", "test mean AUC", "test logloss", "train s", "best epoch"]
        parts.append(_table(header, [[r["label"], r["seeds_ok"], r["seeds_failed"], _pm(r["overall/mean_auc"]),
                                      _pm(r["overall/logloss"]), _pm(r["train_seconds"], 1),
                                      _pm(r["best_epoch"], 1)] for r in rows]))
        # one table per (head, metric): rows x scenarios ("all" first)
        cell_keys = list(dict.fromkeys(k for r in rows for k in r["cells"]))
        tables: dict[tuple[str, str], list[str]] = {}
        for key in cell_keys:
            scenario, head, metric = key.rsplit("/", 2)
            tables.setdefault((head, metric), []).append(scenario)
        for (head, metric), scenarios in tables.items():
            parts.append(f"<h4>test {_e(metric.upper())}, head {_e(head)}, per scenario</h4>")
            keys = [f"{sc}/{head}/{metric}" for sc in scenarios]
            parts.append(_table(["row"] + scenarios,
                                [[r["label"]] + [_pm(r["cells"][k]) if k in r["cells"] else "—" for k in keys]
                                 for r in rows]))
    return "\n".join(parts)


# --- the page ---------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d2126;
 background:#fafafa;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px;background:#fff;min-height:100vh}
h1{font-size:1.7em;margin:.2em 0 .3em}h2{border-bottom:2px solid #d9dde3;padding-bottom:.2em;margin-top:1.8em}
h3{margin-top:1.4em}h4,h5,h6{margin:1.1em 0 .4em}
pre,code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9em}
pre{background:#f3f4f6;padding:10px 12px;border-radius:6px;overflow-x:auto;white-space:pre-wrap;word-break:break-all}
table{border-collapse:collapse;margin:.6em 0 1em;font-size:.88em;display:block;max-width:100%;overflow-x:auto}
th,td{border:1px solid #d9dde3;padding:4px 8px;text-align:left;vertical-align:top}
thead th{background:#eef1f5}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.kv th{background:#f6f7f9;font-weight:600;white-space:nowrap}table.kv td{word-break:break-all}
figure{margin:1.2em 0 1.8em}figure img{max-width:100%;height:auto;border:1px solid #e3e6ea}
figcaption{font-size:.88em;color:#555;margin-top:.3em}
nav ul{columns:2;font-size:.92em}.note{color:#555;font-size:.9em}.bad{color:#a40000}
details summary{cursor:pointer;color:#444}td.nw{white-space:nowrap}
"""


def _figure_html(fig: Figure, fid: str) -> str:
    return (f'<figure id="{_e(fid)}"><img src="data:image/png;base64,{fig.png_b64}" alt="{_e(fig.title)}" '
            f'title="{_e(fig.title)}"><figcaption><strong>{_e(fig.title)}.</strong> {_e(fig.caption)}'
            f"</figcaption></figure>")


def _command(spec: dict[str, Any]) -> str | None:
    cmd = spec.get("command")
    if cmd is None:
        return None
    if isinstance(cmd, (list, tuple)):
        return shlex.join(str(c) for c in cmd)
    return str(cmd)


def _experiment_html(bench: Bench) -> str:
    spec = bench.spec
    parts = []
    pairs = [("datasets", ", ".join(bench.datasets)), ("seeds", ", ".join(str(s) for s in spec.get("seeds") or []))]
    pairs += [(k, v) for k, v in _flatten({k: v for k, v in spec.items()
                                            if k not in ("rows", "datasets", "seeds", "command")})]
    parts.append(_kv_table([(k, v) for k, v in pairs if v not in (None, "")]))
    rows = [r for r in spec.get("rows") or [] if isinstance(r, dict)]
    if rows:
        body = []
        for r in rows:
            rest = {k: v for k, v in r.items() if k not in ("label", "model")}
            body.append([r.get("label", ""), r.get("model", ""),
                         "; ".join(f"{k}={json.dumps(v) if isinstance(v, (dict, list)) else v}"
                                   for k, v in _flatten(rest))])
        parts.append(_table(["row", "model", "settings"], body, numeric_from=99))
    return "\n".join(parts)


def _failures_html(bench: Bench) -> str:
    seen = {(r.dataset, r.label, r.seed) for r in bench.runs}
    items = []
    for r in bench.runs:
        if r.ok:
            continue
        if r.error is not None:
            err = r.error if isinstance(r.error, dict) else {"error": r.error}
            message = next((str(err[k]) for k in ("error", "message", "exception", "msg") if k in err),
                           json.dumps(err, indent=1))
            kind = err.get("type") or err.get("error_type")
            extra = {k: v for k, v in err.items() if k not in ("error", "message", "exception", "msg", "type",
                                                               "error_type", "traceback")}
            tb = err.get("traceback")
            if isinstance(tb, list):
                tb = "".join(str(x) for x in tb)
        else:
            message, kind, extra, tb = "incomplete: neither metrics.json nor error.json was written", None, {}, None
        items.append((r.dataset, r.label, str(r.seed), kind, message, extra, tb))
    for ds in bench.datasets:  # planned by bench.yaml but no run folder at all
        for label in [str(x["label"]) for x in bench.spec.get("rows") or [] if isinstance(x, dict) and "label" in x]:
            for seed in bench.spec.get("seeds") or []:
                if isinstance(seed, int) and (ds, label, seed) not in seen:
                    items.append((ds, label, str(seed), None, "not run: no run folder", {}, None))
    if not items:
        return "<p>None: every run finished.</p>"
    rows = []
    for ds, label, seed, kind, message, extra, tb in items:
        detail = f"<pre>{_e(message)}</pre>"
        if kind:
            detail = f"<code>{_e(kind)}</code>" + detail
        if extra:
            detail += _kv_table(_flatten(extra))
        if tb:
            detail += f"<details><summary>traceback</summary><pre>{_e(tb)}</pre></details>"
        rows.append(f'<tr><td class="nw">{_e(ds)}</td><td class="nw">{_e(label)}</td><td class="num">{_e(seed)}</td>'
                    f"<td>{detail}</td></tr>")
    return (f'<p class="bad">{len(items)} run(s) did not finish.</p><table><thead><tr><th>dataset</th><th>row</th>'
            f"<th>seed</th><th>error</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


def render_report(bench: Bench) -> str:
    """The report's HTML text (pure function of the loaded bench)."""
    figs = _Figures()
    title = str(bench.spec.get("name") or bench.spec.get("title") or bench.path.resolve().name)
    sections: list[tuple[str, str, str]] = []  # (id, heading, html)
    command = _command(bench.spec)
    sections.append(("experiment", "Experiment",
                     (f"<h3>Command</h3><pre>{_e(command)}</pre>" if command else "") + _experiment_html(bench)))
    env = bench.environment
    sections.append(("environment", "Environment", _kv_table(_flatten(env)) if env else
                     '<p class="note">environment.json is missing.</p>'))
    if bench.results_md is not None:
        results = markdown_to_html(bench.results_md)
    else:
        results = _summary_html(bench)
    sections.append(("results", "Results", results))
    n_figures = 0
    for ds in bench.datasets:
        figures: list[Figure] = []
        for f in (_auc_bars(figs, bench, ds), _learning_curves(figs, bench, ds)):
            if f is not None:
                figures.append(f)
        figures += _optimizer_figures(figs, bench, ds)
        figures += _gate_figures(figs, bench, ds)
        figures += _weight_figures(figs, bench, ds)
        n_ok = sum(r.ok for r in bench.runs_of(ds))
        body = [f'<p class="note">{n_ok} of {len(bench.runs_of(ds))} run(s) finished.</p>']
        for f in figures:
            n_figures += 1
            body.append(_figure_html(f, f"fig-{n_figures}"))
        if not figures:
            body.append('<p class="note">No finished runs to plot.</p>')
        sections.append((f"dataset-{_slug(ds)}", f"Dataset {ds}", "\n".join(body)))
    sections.append(("failures", "Failed runs", _failures_html(bench)))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<li><a href="#{_e(sid)}">{_e(h)}</a></li>' for sid, h, _ in sections)
    body = "\n".join(f'<section id="{_e(sid)}"><h2>{_e(h)}</h2>\n{content}</section>' for sid, h, content in sections)
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)} — polyrec benchmark</title><style>{_CSS}</style></head>\n"
        f"<body><main><h1>polyrec benchmark: {_e(title)}</h1>"
        f'<p class="note">Generated {stamp} from <code>{_e(bench.path)}</code>; '
        f"{len(bench.runs)} run folder(s), {n_figures} figure(s).</p>"
        f"<nav><ul>{nav}</ul></nav>\n{body}\n</main></body></html>\n"
    )


def write_report(bench_dir: str | Path) -> Path:
    """Write ``bench_dir/report.html`` (self-contained: inline PNG figures, inline CSS, no JS) and return it."""
    bench_dir = Path(bench_dir)
    text = render_report(load_bench(bench_dir))
    out = bench_dir / REPORT
    atomic_write_text(out, text)
    out.chmod(0o644)  # a temp file's 0600 would keep a report meant for sharing private
    return out
