"""From a bench folder's run folders to results.json, results.csv, results-per-seed.csv and results.md.

Everything is recomputed from disk (bench.yaml + runs/<dataset>/<row folder>/seed<k>/metrics.json), so a
partial or resumed bench aggregates the same way as an uninterrupted one, and anyone can redo the
statistics from results-per-seed.csv (dataset, row, seed, metric, value).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from polyrec.bench.lrgrid import lr_text
from polyrec.bench.stats import ALPHA, PairedTest, mean_std, min_wilcoxon_p, paired_test, significant
from polyrec.bench.store import is_cap_bound, load_bench, load_spec
from polyrec.metrics.direction import lower_is_better
from polyrec.metrics.report import flatten
from polyrec.utils.io import atomic_write_text

COST_KEYS = ("train_seconds", "seconds_per_epoch", "wall_seconds", "epochs_run", "best_epoch")
FILES = ("results.json", "results.csv", "results-per-seed.csv", "results.md")
CAP_MARK = "†"  # a row with a cap-bound run: its best epoch was its last (see store.is_cap_bound)


def seed_values(metrics: dict[str, Any]) -> dict[str, float]:
    """One run's numbers: every test metric (flattened), plus its cost."""
    out: dict[str, float] = {}
    for k, v in flatten(metrics.get("test") or {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v)
    epochs = metrics.get("epochs_run") or 0
    for k in ("train_seconds", "wall_seconds", "epochs_run", "best_epoch"):
        if isinstance(metrics.get(k), (int, float)):
            out[k] = float(metrics[k])
    if isinstance(metrics.get("train_seconds"), (int, float)) and epochs:
        out["seconds_per_epoch"] = float(metrics["train_seconds"]) / epochs
    return out


# --- the main table's columns and marks -----------------------------------------------------------------
def topk_columns(metric_dicts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Top-K runs (metrics with "ranking"): Recall@K and NDCG@K of every task, K ascending, the target first."""
    ranked = [m for m in metric_dicts if m.get("ranking")]
    if not ranked:
        return []
    cols = []
    for task in dict.fromkeys(t for m in ranked for t in m.get("heads", {})):
        ks = sorted({int(k.split("@")[1]) for m in ranked for k in m["heads"].get(task, {}) if "@" in k})
        for k in ks:
            for name, label in (("recall", "Recall"), ("ndcg", "NDCG")):
                cols.append({"key": f"{task}/{name}@{k}", "header": f"{task} {label}@{k}", "lower_is_better": False})
    return cols


SLICE_NAMES = {"warm": "warm", "cold_user": "cold-user", "cold_item": "cold-item"}


def slice_columns(metric_dicts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cold-start view (metrics' "slices", polyrec.metrics.report): the headline metric of each head on warm,
    cold-user and cold-item rows, with its row count beside it; none when no run has a cold test row."""
    sliced = [m["slices"] for m in metric_dicts if m.get("slices")]
    if not any(c.get("n") for s in sliced for name, per in s.items() if name != "warm" for c in per.values()):
        return []
    cols = []
    for name in dict.fromkeys(n for s in sliced for n in s):
        for h in dict.fromkeys(h for s in sliced for h in s.get(name, {})):
            metric = next(("auc" if "auc" in c else "rmse" for s in sliced
                           if (c := s.get(name, {}).get(h, {})).get("n")), "auc")
            cols.append({"key": f"slice/{name}/{h}/{metric}", "count": f"slice/{name}/{h}/n",
                         "header": f"{SLICE_NAMES.get(name, name)}/{h} {metric.upper()}",
                         "lower_is_better": lower_is_better(metric)})
    return cols


def table_columns(metric_dicts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Columns from test metric dicts (in row order): the headline metric (AUC, or RMSE for regression
    heads) of every (scenario, head) cell, then of each head over all scenarios, then overall AUC and LogLoss."""
    ranking = topk_columns(metric_dicts)
    if ranking:
        return ranking
    heads: dict[str, str] = {}
    cells: dict[tuple[str, str], None] = {}
    has_overall = False
    for m in metric_dicts:
        for h, hm in (m.get("heads") or {}).items():
            heads.setdefault(h, "auc" if "auc" in hm else "rmse")
        for sc, cell in (m.get("cells") or {}).items():
            for h in cell:
                cells.setdefault((sc, h), None)
        has_overall = has_overall or bool(m.get("overall"))
    cols = []
    scenarios = {sc for sc, _ in cells}
    if scenarios and scenarios != {"all"}:  # without scenarios the one cell repeats the per-head numbers
        for sc, h in cells:
            metric = heads.get(h, "auc")
            cols.append({"key": f"cell/{sc}/{h}/{metric}", "header": f"{sc}/{h} {metric.upper()}"})
    for h, metric in heads.items():
        cols.append({"key": f"{h}/{metric}", "header": f"{h} {metric.upper()}"})
    if has_overall:
        cols.append({"key": "overall/auc", "header": "overall AUC"})
        cols.append({"key": "overall/logloss", "header": "overall LogLoss"})
    for c in cols:
        c["lower_is_better"] = lower_is_better(c["key"])
    return cols


def mark_column(values: dict[str, dict[Any, float]], lower: bool, alpha: float = ALPHA) -> dict[str, Any]:
    """Rank the rows of one column by their mean over seeds.

    values: {row label: {seed: value}}. Returns {"cells": {label: {mean, std, n, mark, star}}, "test": ...}:
    mark "best" (bold) for the best mean (every row tied with it), "second" (underlined) for the next
    distinct mean; star on the best row when it alone is best and the paired t-test against the best other
    row (each of them, if several tie for second) gives p < alpha in its favour.
    """
    cells: dict[str, dict[str, Any]] = {}
    for label, per_seed in values.items():
        mean, std, n = mean_std(per_seed.values())
        cells[label] = {"mean": mean, "std": std, "n": n, "mark": None, "star": False}
    ranked = [lb for lb in values if cells[lb]["n"] > 0]
    ranked.sort(key=lambda lb: cells[lb]["mean"] if lower else -cells[lb]["mean"])
    test: dict[str, Any] | None = None
    if ranked:
        best_mean = cells[ranked[0]]["mean"]
        best = [lb for lb in ranked if cells[lb]["mean"] == best_mean]
        rest = [lb for lb in ranked if cells[lb]["mean"] != best_mean]
        for lb in best:
            cells[lb]["mark"] = "best"
        second = [lb for lb in rest if cells[lb]["mean"] == cells[rest[0]]["mean"]] if rest else []
        for lb in second:
            cells[lb]["mark"] = "second"
        if len(best) == 1 and second:
            tests = [(lb, paired_test(values[best[0]], values[lb])) for lb in second]
            star = all(significant(t, lower, alpha) for _, t in tests)
            # report the weakest comparison (largest p) when several rows tie for second
            runner, t = max(tests, key=lambda x: x[1].t_p if math.isfinite(x[1].t_p) else math.inf)
            cells[best[0]]["star"] = star
            test = {"best": best[0], "runner_up": runner, **t.to_dict(), "significant": star}
        elif len(best) > 1:
            test = {"best": best[0], "runner_up": best[1], **paired_test(values[best[0]], values[best[1]]).to_dict(),
                    "significant": False, "note": "tied best means"}
    return {"cells": cells, "test": test}


def collect(bench_dir: str | Path) -> dict[str, Any]:
    """Per dataset, per row: seeds finished/failed/missing, per-seed values, mean/std of every metric,
    the main table with marks and tests, and (optimiser studies) validation curves."""
    bench_dir = Path(bench_dir)
    spec = load_spec(bench_dir)
    bench = load_bench(bench_dir)
    seeds = [int(s) for s in spec.get("seeds") or []]
    rows = [r for r in spec["rows"] if isinstance(r, dict) and "label" in r]
    with_curves = bool(spec.get("optimizers"))
    # benches run under the convergence rules (bench.yaml's `convergence`) get the cap-bound marks and the lr
    # selection; older benches aggregate exactly as they did (tests/test_committed_results.py pins them)
    rules = spec.get("convergence") if isinstance(spec.get("convergence"), dict) else None
    out: dict[str, Any] = {"bench_dir": str(bench_dir), "name": spec.get("name"), "seeds": seeds,
                           "alpha": ALPHA, "datasets": {}}
    if rules is not None:
        out["convergence"] = rules
    for ds in spec.get("datasets") or []:
        ds_rows: dict[str, Any] = {}
        test_metrics: list[dict[str, Any]] = []
        for row in rows:
            label = str(row["label"])
            folder = str(row.get("folder") or label)
            info: dict[str, Any] = {"model": row.get("model"), "optimizer": row.get("optimizer"), "folder": folder,
                                    "seeds_ok": [], "seeds_failed": {}, "seeds_missing": [], "values": {}}
            curves: dict[int, dict[int, float]] = {}
            monitor = None
            for seed in seeds:
                run = bench.run_at(str(ds), folder, seed)
                if run is not None and run.metrics is not None:  # finished (an error.json beside it is stale)
                    info["seeds_ok"].append(seed)
                    info["values"][seed] = seed_values(run.metrics)
                    test_metrics.append(run.test)
                    if with_curves:
                        mon, curve = run.curve()
                        monitor = monitor or mon
                        curves[seed] = curve
                elif run is not None and run.error is not None:
                    info["seeds_failed"][seed] = {"type": run.error.get("type"), "error": run.error.get("error"),
                                                  "path": str((run.path / "error.json").relative_to(bench_dir))}
                else:
                    info["seeds_missing"].append(seed)
            keys = list(dict.fromkeys(k for v in info["values"].values() for k in v))
            info["metrics"] = {}
            for k in keys:
                mean, std, n = mean_std(v.get(k) for v in info["values"].values())
                info["metrics"][k] = {"mean": mean, "std": std, "n": n}
            if with_curves:
                epochs = sorted({e for c in curves.values() for e in c})
                stats = [mean_std(c[e] for c in curves.values() if e in c) for e in epochs]
                info["curve"] = {"monitor": monitor, "epochs": epochs, "mean": [s[0] for s in stats],
                                 "std": [s[1] for s in stats], "n": [s[2] for s in stats]}
            if rules is not None:
                info["cap_bound_seeds"] = [s for s, v in info["values"].items()
                                           if is_cap_bound(v.get("epochs_run"), v.get("best_epoch"))]
            ds_rows[label] = info
        table = marked_table(table_columns(test_metrics), ds_rows)
        out["datasets"][ds] = {"rows": ds_rows, "table": table}
        slices = slice_columns(test_metrics)
        if slices:
            out["datasets"][ds]["slice_table"] = marked_table(slices, ds_rows)
        if rules is not None:
            out["datasets"][ds]["convergence"] = {
                "cap_bound_rows": [lb for lb, info in ds_rows.items() if info["cap_bound_seeds"]],
                "cap_bound_runs": sum(len(info["cap_bound_seeds"]) for info in ds_rows.values()),
                "finished_runs": sum(len(info["seeds_ok"]) for info in ds_rows.values())}
            selections = (bench.lr_grid.get("datasets") or {}).get(str(ds)) or {}
            if selections:
                out["datasets"][ds]["lr_grid"] = {lb: sel for lb, sel in selections.items() if lb in ds_rows}
    return out


def marked_table(columns: list[dict[str, Any]], ds_rows: dict[str, Any]) -> dict[str, Any]:
    """Each column's per-row cells (mean ± std over seeds, best/second marks) and its best-vs-runner-up test."""
    table: dict[str, Any] = {"columns": columns, "cells": {lb: {} for lb in ds_rows}, "tests": {}}
    for col in columns:
        per_row = {lb: {s: v[col["key"]] for s, v in info["values"].items() if col["key"] in v}
                   for lb, info in ds_rows.items()}
        marked = mark_column(per_row, col["lower_is_better"])
        for lb, cell in marked["cells"].items():
            table["cells"][lb][col["key"]] = cell
        table["tests"][col["key"]] = marked["test"]
    return table


def slice_lines(res: dict[str, Any], seeds: list[int]) -> list[str]:
    """The cold-start table: warm / cold-user / cold-item test rows (ids never seen in the training split)."""
    st = res.get("slice_table")
    if not st:
        return []
    cols = st["columns"]
    body = []
    for lb, info in res["rows"].items():
        cells = []
        for c in cols:
            n = info["metrics"].get(c["count"], {})
            count = f" (n {n['mean']:.0f})" if n.get("n") else ""
            cells.append(format_cell(st["cells"][lb].get(c["key"], {})) + count)
        body.append([_row_label(lb, info), f"{len(info['seeds_ok'])}/{len(seeds)}"] + cells)
    return ["Cold start: the same test rows by whether their user / item occurs in the training split (warm: "
            "both seen; cold-user: user unseen; cold-item: item unseen; a row can be both cold), mean ± std over "
            "seeds, n = mean rows per seed; marks and \\* as above (paired t-test, best vs runner-up).", ""] \
        + _md_table(["row", "seeds"] + [_md_escape(c["header"]) for c in cols], body) + [""]


# --- formatting -------------------------------------------------------------------------------------------
def _num(v: float, digits: int = 4) -> str:
    return "nan" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _p(v: float) -> str:
    if v is None or not math.isfinite(v):
        return "—"
    return f"{v:.2g}" if v < 0.001 else f"{v:.3f}"


def format_cell(cell: dict[str, Any], digits: int = 4) -> str:
    """'0.7012 ± 0.0031' with **bold** for best, <u>underline</u> for second and a trailing * when significant."""
    if not cell or cell.get("n", 0) == 0:
        return "—"
    text = _num(cell["mean"], digits)
    if cell["n"] > 1:
        text += f" ± {_num(cell['std'], digits)}"
    if cell.get("mark") == "best":
        text = f"**{text}**"
    elif cell.get("mark") == "second":
        text = f"<u>{text}</u>"
    if cell.get("star"):
        text += "\\*"
    return text


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def model_deviations(model: str) -> tuple[str, ...]:
    """The model's declared deviations from its paper (`deviations` of the model class), () if none or unknown."""
    from polyrec.models.base import MODELS
    from polyrec.topk.models import TOPK_MODELS, topk_model_names

    topk_model_names()  # registers both zoos
    cls = TOPK_MODELS.get(model, None) or MODELS.get(model, None)
    return tuple(getattr(cls, "deviations", ()) or ())


def deviation_lines(models: list[str]) -> list[str]:
    """'Deviations from the papers' under a table: every row's model that declares any."""
    found = [(m, d) for m in models for d in model_deviations(m)]
    if not found:
        return []
    return ["Deviations from the papers (they change numbers; see each model's docstring):", "",
            *[f"- `{m}`: {d}" for m, d in found], ""]


def _row_label(label: str, info: dict[str, Any]) -> str:
    return _md_escape(label) + (f" {CAP_MARK}" if info.get("cap_bound_seeds") else "")


def convergence_lines(res: dict[str, Any]) -> list[str]:
    """The cap-bound footnote and summary line under the main table."""
    conv, rows = res["convergence"], res["rows"]
    marked = conv["cap_bound_rows"]
    lines = [f"{CAP_MARK}: cap-bound — on some seeds (count in the cost table) the best validation epoch was the "
             "last epoch run: the epoch cap ended the run, not early stopping, so it may not have converged "
             "(the row compares a budget, not a model); raise train.epochs.", ""] if marked else []
    lines += [f"Convergence: {len(marked)} of {len(rows)} row(s) cap-bound "
              f"({conv['cap_bound_runs']} of {conv['finished_runs']} finished run(s))"
              + (": " + ", ".join(f"`{_md_escape(lb)}`" for lb in marked) if marked else "") + ".", ""]
    return lines


def lr_grid_lines(selections: dict[str, Any]) -> list[str]:
    """The learning-rate selection of each row with a grid: every rate's validation score, the choice."""
    body = []
    for lb, sel in selections.items():
        points = []
        for p in sel.get("points") or []:
            score = f"{p['mean']:.4f}" if isinstance(p.get("mean"), (int, float)) else "failed"
            text = f"{lr_text(p['lr'])}: {score}"
            points.append(f"**{text}**" if p["lr"] == sel.get("chosen") else text)
        ext = ", ".join(f"{e['direction']} to {lr_text(e['lr'])}" for e in sel.get("extensions") or []) or "—"
        chosen = lr_text(sel["chosen"]) if sel.get("chosen") is not None else f"FAILED: {sel.get('message')}"
        body.append([_md_escape(lb), _md_escape(sel.get("monitor", "")), _md_escape("; ".join(points)), ext,
                     _md_escape(chosen)])
    seeds = next(iter(selections.values())).get("seeds") or []
    return [f"Learning rate per row, chosen on validation (mean `best_val_monitor` over seed(s) "
            f"{', '.join(map(str, seeds))}; a best rate at a grid edge extends the grid one log step; test "
            "metrics are not read):", "",
            *_md_table(["row", "validation monitor", "grid (rate: score; chosen in bold)", "extensions", "lr"],
                       body), ""]


def dataset_markdown(ds: str, res: dict[str, Any], seeds: list[int], alpha: float = ALPHA) -> str:
    rows, table = res["rows"], res["table"]
    cols = table["columns"]
    lines = [f"## {ds}", ""]
    if not cols:
        lines += ["No finished runs: nothing to tabulate.", ""]
    else:
        lines += ["Test metrics, mean ± std (ddof=1) over the seeds each row finished. "
                  "**Bold**: best; <u>underlined</u>: second; \\*: the best row is significantly better than "
                  f"the best other row (paired two-sided t-test over the seeds both have, p < {alpha:g}). "
                  "AUC: higher is better; LogLoss and RMSE: lower is better.", ""]
        body = []
        for lb, info in rows.items():
            body.append([_row_label(lb, info), f"{len(info['seeds_ok'])}/{len(seeds)}"]
                        + [format_cell(table["cells"][lb].get(c["key"], {})) for c in cols])
        lines += _md_table(["row", "seeds"] + [_md_escape(c["header"]) for c in cols], body)
        lines.append("")
        lines += slice_lines(res, seeds)
        if "convergence" in res:
            lines += convergence_lines(res)
        lines += deviation_lines(sorted({str(info["model"]) for info in rows.values() if info.get("model")}))
        # the tests behind the stars
        tbody = []
        for c in cols:
            t = table["tests"].get(c["key"])
            if not t:
                continue
            tbody.append([_md_escape(c["header"]), _md_escape(t["best"]), _md_escape(t["runner_up"]), str(t["n"]),
                          f"{t['mean_diff']:+.4f}" if math.isfinite(t["mean_diff"]) else "—",
                          _p(t["t_p"]), _p(t["wilcoxon_p"]), "yes" if t["significant"] else "no"])
        if tbody:
            lines += ["Best row vs the best other row, per column (difference = best − runner-up over paired "
                      "seeds):", ""]
            lines += _md_table(["column", "best", "runner-up", "paired seeds", "mean diff", "t-test p",
                                "Wilcoxon p", f"p < {alpha:g}"], tbody)
            lines.append("")
        n_pairs = max((t["n"] for t in table["tests"].values() if t), default=0)
        lines += [
            "Statistics: the t-test pairs each row's value on seed k with the other row's value on seed k; "
            "the pairing is valid because seed k fixes the data split (when it is random) and the "
            "initialisation for every row. It assumes the per-seed differences are roughly normal and the seeds independent (they are "
            "separate trainings, but rows share the split of a seed, which is the point of pairing). "
            "Rows with fewer than 2 shared seeds, or whose differences are all equal, get no test (p shown as —)"
            " and no star. The Wilcoxon signed-rank p (exact, two-sided) is a secondary check that drops the "
            "normality assumption; with n paired seeds its smallest possible value is 2/2^n"
            + (f" = {min_wilcoxon_p(n_pairs):.4g} here (n = {n_pairs})" if n_pairs else "")
            + ", so it can reach 0.05 only from 6 seeds on. "
            "No correction is made for testing many columns.", ""]
        cost = []
        for lb, info in rows.items():
            m = info["metrics"]

            def pm(key: str, digits: int = 1, m: dict[str, Any] = m) -> str:
                if key not in m or m[key]["n"] == 0:
                    return "—"
                s = _num(m[key]["mean"], digits)
                return s + (f" ± {_num(m[key]['std'], digits)}" if m[key]["n"] > 1 else "")

            cost.append([_row_label(lb, info), pm("train_seconds"), pm("seconds_per_epoch", 2), pm("epochs_run"),
                         pm("best_epoch")] + ([f"{len(info['cap_bound_seeds'])}/{len(info['seeds_ok'])}"]
                                              if "convergence" in res else []))
        lines += ["Cost (mean ± std over finished seeds):", ""]
        lines += _md_table(["row", "train s", "s / epoch", "epochs run", "best epoch"]
                           + (["cap-bound seeds"] if "convergence" in res else []), cost)
        lines.append("")
    if res.get("lr_grid"):
        lines += lr_grid_lines(res["lr_grid"])
    failed = [(lb, s, f) for lb, info in rows.items() for s, f in info["seeds_failed"].items()]
    missing = [(lb, s) for lb, info in rows.items() for s in info["seeds_missing"]]
    if failed:
        lines += [f"Failed runs, excluded from the tables above ({len(failed)}):", ""]
        for lb, s, f in failed:
            msg = " ".join(str(f.get("error") or "").split())
            if len(msg) > 300:
                msg = msg[:297] + "..."
            lines.append(f"- `{lb}` seed {s}: {f.get('type') or 'error'}: {msg} (`{f.get('path')}`)")
        lines.append("")
    if missing:
        lines += [f"Runs not finished (no metrics.json; re-run the bench command to finish them) ({len(missing)}): "
                  + ", ".join(f"`{lb}` seed {s}" for lb, s in missing), ""]
    return "\n".join(lines)


def markdown(results: dict[str, Any], notes: list[str] | None = None) -> str:
    title = results.get("name") or Path(results["bench_dir"]).name
    seeds = results["seeds"]
    lines = [f"# Benchmark results: {title}", "",
             f"Seeds: {', '.join(map(str, seeds))} ({len(seeds)} per row). Each seed k sets train.seed = k and, "
             "unless data.split_seed is fixed, the split seed too.", ""]
    for n in notes or []:
        lines.append(f"- note: {n}")
    if notes:
        lines.append("")
    for ds, res in results["datasets"].items():
        lines.append(dataset_markdown(ds, res, seeds, results.get("alpha", ALPHA)))
    return "\n".join(lines).rstrip() + "\n"


def _jsonable(obj: Any) -> Any:
    """NaN/inf -> None, int dict keys -> str, so results.json is strict JSON."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, PairedTest):
        return _jsonable(obj.to_dict())
    return obj


def _csv(rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def write_results(bench_dir: str | Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """Aggregate the bench folder and write results.json/.csv/.md and results-per-seed.csv into it."""
    bench_dir = Path(bench_dir)
    results = collect(bench_dir)
    spec = load_spec(bench_dir)
    md = markdown(results, spec.get("notes"))
    summary = [["dataset", "row", "metric", "n", "mean", "std"]]
    per_seed = [["dataset", "row", "seed", "metric", "value"]]
    for ds, res in results["datasets"].items():
        for lb, info in res["rows"].items():
            for k, m in info["metrics"].items():
                summary.append([ds, lb, k, m["n"], repr(m["mean"]), repr(m["std"])])
            for seed, values in info["values"].items():
                for k, v in values.items():
                    per_seed.append([ds, lb, seed, k, repr(v)])
    paths = {name: bench_dir / name for name in FILES}
    atomic_write_text(paths["results.json"], json.dumps(_jsonable(results), indent=1))
    atomic_write_text(paths["results.csv"], _csv(summary))
    atomic_write_text(paths["results-per-seed.csv"], _csv(per_seed))
    atomic_write_text(paths["results.md"], md)
    results["markdown"] = md
    return results, paths
