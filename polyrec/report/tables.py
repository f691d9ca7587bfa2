"""Summary tables computed from the run folders, for a bench without the aggregator's results.md."""

from __future__ import annotations

import math
from typing import Any

from polyrec.bench.lrgrid import lr_text
from polyrec.bench.stats import mean_std
from polyrec.bench.store import Bench, Run, head_metric, heads_and_scenarios
from polyrec.report.markup import esc, table

CAP_MARK = "†"


def summarize(bench: Bench) -> dict[str, list[dict[str, Any]]]:
    """Per dataset, per row: seeds ok/failed, and mean/std/n over seeds of every test cell's headline
    metric (AUC for binary heads, RMSE for regression), overall mean AUC, train seconds and best epoch."""
    out: dict[str, list[dict[str, Any]]] = {}
    for ds in bench.datasets:
        rows = []
        ok_all = [r for r in bench.runs_of(ds) if r.ok]
        heads, scenarios = heads_and_scenarios(ok_all)
        for label in bench.labels_of(ds):
            runs = bench.runs_of(ds, label)
            ok = [r for r in runs if r.ok]
            cells: dict[str, tuple[float, float, int]] = {}
            for scenario in ["all"] + scenarios:
                for head in heads:
                    metric = next((m for r in ok if (m := head_metric(r.test_cell("all", head)))), None)
                    if metric:
                        cells[f"{scenario}/{head}/{metric}"] = mean_std(r.test_cell(scenario, head).get(metric)
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
    """'mean ± std'; one seed has no std (stats.mean_std gives NaN): 'mean ± n/a'; no seed: '—'."""
    mean, std, n = stat
    if n == 0:
        return "—"
    return f"{mean:.{digits}f} ± " + (f"{std:.{digits}f}" if math.isfinite(std) else "n/a")


def summary_html(bench: Bench) -> str:
    parts = ['<p class="note">No results.md from the aggregator: these tables are computed from the run '
             "folders (mean ± sample std over successful seeds; n/a for a single seed).</p>"]
    for ds, rows in summarize(bench).items():
        if not rows:
            continue
        parts.append(f"<h3>{esc(ds)}</h3>")
        header = ["row", "seeds ok", "failed", "test mean AUC", "test logloss", "train s", "best epoch"]
        parts.append(table(header, [[r["label"], r["seeds_ok"], r["seeds_failed"], _pm(r["overall/mean_auc"]),
                                      _pm(r["overall/logloss"]), _pm(r["train_seconds"], 1),
                                      _pm(r["best_epoch"], 1)] for r in rows]))
        # one table per (head, metric): rows x scenarios ("all" first)
        cell_keys = list(dict.fromkeys(k for r in rows for k in r["cells"]))
        tables: dict[tuple[str, str], list[str]] = {}
        for key in cell_keys:
            scenario, head, metric = key.rsplit("/", 2)
            tables.setdefault((head, metric), []).append(scenario)
        for (head, metric), scenarios in tables.items():
            parts.append(f"<h4>test {esc(metric.upper())}, head {esc(head)}, per scenario</h4>")
            keys = [f"{sc}/{head}/{metric}" for sc in scenarios]
            parts.append(table(["row"] + scenarios,
                                [[r["label"]] + [_pm(r["cells"][k]) if k in r["cells"] else "—" for k in keys]
                                 for r in rows]))
    return "\n".join(parts)


def convergence_html(bench: Bench) -> str:
    """Cap-bound runs (best epoch = last epoch run: the epoch cap ended them, not early stopping) per dataset
    and row, read from the run folders, so a bench made before the convergence rules shows them too."""
    parts = [f'<p class="note">{CAP_MARK}: a row with a cap-bound run, one whose best validation epoch was its '
             "last: the epoch cap ended it, not early stopping, so it may not have converged (raise "
             "train.epochs). Per seed: best epoch / epochs run.</p>"]
    for ds in bench.datasets:
        body, marked, n_runs, n_bound = [], 0, 0, 0
        for label in bench.labels_of(ds):
            ok = [r for r in bench.runs_of(ds, label) if r.ok]
            if not ok:
                continue
            bound = [r for r in ok if r.cap_bound]
            marked += bool(bound)
            n_runs, n_bound = n_runs + len(ok), n_bound + len(bound)
            per_seed = ", ".join(f"seed {r.seed}: {(r.metrics or {}).get('best_epoch')}/"
                                 f"{(r.metrics or {}).get('epochs_run')}" + (f" {CAP_MARK}" if r.cap_bound else "")
                                 for r in ok)
            body.append([label + (f" {CAP_MARK}" if bound else ""), f"{len(bound)}/{len(ok)}", per_seed])
        if not body:
            continue
        parts.append(f"<h3>{esc(ds)}</h3>")
        cls = "bad" if marked else "note"
        parts.append(f'<p class="{cls}">{marked} of {len(body)} row(s) cap-bound ({n_bound} of {n_runs} finished '
                     "run(s)).</p>")
        parts.append(table(["row", "cap-bound seeds", "best epoch / epochs run"], body, numeric_from=99))
    return "\n".join(parts)


def lr_grid_html(bench: Bench) -> str:
    """The learning-rate selection (lr-grid.json): every rate's validation score, extensions and the choice."""
    parts = []
    for ds, selections in (bench.lr_grid.get("datasets") or {}).items():
        parts.append(f"<h3>{esc(ds)}</h3>")
        body = []
        for label, sel in selections.items():
            points = []
            for p in sel.get("points") or []:
                score = f"{p['mean']:.4f}" if isinstance(p.get("mean"), (int, float)) else "failed"
                points.append(f"{lr_text(p['lr'])}: {score}" + (" ✓" if p["lr"] == sel.get("chosen") else ""))
            ext = ", ".join(f"{e['direction']} to {lr_text(e['lr'])}" for e in sel.get("extensions") or []) or "—"
            chosen = lr_text(sel["chosen"]) if sel.get("chosen") is not None else f"FAILED: {sel.get('message')}"
            body.append([label, sel.get("monitor", ""), "; ".join(points), ext, chosen])
        parts.append(table(["row", "validation monitor", "grid (rate: mean score; ✓ chosen)", "extensions", "lr"],
                           body, numeric_from=99))
    seeds = bench.lr_grid.get("selection_seeds") or []
    note = (f'<p class="note">Chosen per (dataset, row) on validation only: the mean best validation monitor '
            f"over seed(s) {', '.join(map(str, seeds))}; a best rate at a grid edge extends the grid by one log "
            f"step (at most {bench.lr_grid.get('lr_grid_extensions')} times, then the row fails).</p>")
    return note + "\n".join(parts)
