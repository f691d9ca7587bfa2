"""The benchmark report's figures: matplotlib (Agg, no pyplot state) PNGs, returned base64-encoded.

Computed from the run folders (they need per-seed and per-epoch values) and from successful runs only:
per dataset, the test metric of each (scenario, head) cell per row with std-over-seeds error bars;
learning curves (validation monitor, per-head training loss) as mean over seeds with a ±1 std band;
gate-weight heatmaps for expert models; task weights against step where a balancer changes them;
validation monitor per optimiser where rows of one model differ only in optimiser.
Statistics are polyrec.bench.stats' (a single seed has no std: no error bar, no band).
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from polyrec.bench.stats import mean_std
from polyrec.bench.store import Bench, Run, head_metric, heads_and_scenarios
from polyrec.errors import PolyrecError

DPI = 90


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


class Figures:
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


def _auc_bars(figs: Figures, bench: Bench, dataset: str) -> Figure | None:
    labels = bench.labels_of(dataset)
    ok = [r for r in bench.runs_of(dataset) if r.ok]
    heads, scenarios = heads_and_scenarios(ok)
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
        metric = next((m for r in ok if (m := head_metric(r.test_cell("all", head)))), "auc")
        metric_names.append(metric)
        x = np.arange(len(groups), dtype=float)
        bar_w = 0.8 / max(len(rows), 1)
        lo, hi = math.inf, -math.inf
        for i, label in enumerate(rows):
            runs = [r for r in ok if r.label == label]
            stats = [mean_std(r.test_cell(g, head).get(metric) for r in runs) for g in groups]
            means = np.array([s[0] for s in stats])
            stds = np.array([s[1] for s in stats])
            n = max((s[2] for s in stats), default=0)
            pos = x - 0.4 + bar_w * (i + 0.5)
            ax.bar(pos, np.nan_to_num(means, nan=0.0), bar_w * 0.92, yerr=np.nan_to_num(stds), capsize=3,
                   color=figs.color(bench.labels.index(label)), label=f"{label} (n={n})",
                   error_kw={"elinewidth": 1, "ecolor": "#333"})
            finite = np.isfinite(means)
            if finite.any():
                spread = np.nan_to_num(stds)  # one seed: no std, no error bar
                lo = min(lo, float(np.min((means - spread)[finite])))
                hi = max(hi, float(np.max((means + spread)[finite])))
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


def _learning_curves(figs: Figures, bench: Bench, dataset: str) -> Figure | None:
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


def _gate_figures(figs: Figures, bench: Bench, dataset: str) -> list[Figure]:
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


def _one_panel(fig, ax, ylabel: str, title: str, suptitle: str) -> None:
    """Labels, grid and an in-panel legend of a one-panel figure."""
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    fig.suptitle(suptitle)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, framealpha=0.85)


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


def _weight_figures(figs: Figures, bench: Bench, dataset: str) -> list[Figure]:
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
        _one_panel(fig, ax, "task weight", f"task weights during training (mean over {len(runs)} seed(s))",
                   f"{dataset} / {label}")
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


def _optimizer_figures(figs: Figures, bench: Bench, dataset: str) -> list[Figure]:
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
        _one_panel(fig, ax, f"validation {monitor}", f"validation {monitor} per optimiser (mean over seeds)",
                   f"{dataset} / {model}")
        out.append(Figure(f"{dataset} / {model}: optimisers", figs.png(fig),
                          "Mean over seeds; band = ±1 std over seeds."))
    return out




def dataset_figures(figs: Figures, bench: Bench, dataset: str) -> list[Figure]:
    """Every figure of one dataset, in the report's order."""
    out = [f for f in (_auc_bars(figs, bench, dataset), _learning_curves(figs, bench, dataset)) if f is not None]
    out += _optimizer_figures(figs, bench, dataset)
    out += _gate_figures(figs, bench, dataset)
    out += _weight_figures(figs, bench, dataset)
    return out
