"""Pick each row's learning rate per dataset from a finished learning-rate grid bench (validation only).

`polyrec bench` now does this itself (`lr_grid:` in the experiment, polyrec/bench/lrgrid.py: chosen on
validation, the grid extended when the best rate is at an edge); this script remains for the grid benches made
before, and for carrying a bench's chosen rates into another experiment. A GRID_DIR is either such an old grid
bench (rows `ROW/adam[lr=X]`) or a bench with an lr-grid.json (its rates' validation values are used).
A winner at the smallest or largest rate of its grid may not be the optimum: the script then fails, naming the
rows, unless --allow-edge (which reproduces the committed docs/results/sapenet.yaml and waata-*.yaml).

The grid bench's rows are `ROW/adam[lr=X]` (from `optimizers: [adam[lr=...], ...]`); for every (dataset, ROW)
this keeps the lr whose runs have the best mean validation monitor (`best_val_monitor` in metrics.json, i.e.
the early-stopping metric on the validation split: test metrics are never read) and writes an experiment
YAML whose rows carry it as `dataset_set: {DATASET: {train.lr: X}}`.

Usage:
  python benchmarks/select_lr.py GRID_DIR [GRID_DIR ...] --template EXPERIMENT.yaml --out TUNED.yaml
(several grid folders, e.g. one per dataset with its own lr grid, are merged)
(the template gives everything but the rows' learning rates: name, datasets, seeds, base, ...)
  --same-lr ROW=FROM   a template row not in the grid takes FROM's chosen rate (e.g. an ablation of FROM)
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

import yaml

from polyrec.bench.spec import safe_name

_LABEL = re.compile(r"^(?P<row>.+)/(?P<opt>[a-z]+)\[lr=(?P<lr>[0-9.eE+-]+)\]$")


def collect(grid: Path) -> dict[str, dict[str, dict[float, list[float]]]]:
    """dataset -> row -> lr -> validation monitor of each finished seed."""
    selections = grid / "lr-grid.json"
    if selections.exists():  # a bench that selected its rates itself
        out: dict[str, dict[str, dict[float, list[float]]]] = {}
        for ds, rows in json.loads(selections.read_text()).get("datasets", {}).items():
            for row, sel in rows.items():
                for point in sel.get("points") or []:
                    if point.get("mean") is not None:  # a rate with a failed seed cannot win
                        out.setdefault(ds, {}).setdefault(row, {})[float(point["lr"])] = list(point["values"].values())
        return out
    spec = yaml.safe_load((grid / "bench.yaml").read_text())
    out: dict[str, dict[str, dict[float, list[float]]]] = {}
    for ds in spec["datasets"]:
        for row in spec["rows"]:
            m = _LABEL.match(row["label"])
            if not m:
                raise SystemExit(f"row {row['label']!r} is not ROW/OPT[lr=X]; was the grid made with optimizers?")
            for path in sorted((grid / "runs" / ds / row.get("folder", safe_name(row["label"]))).glob("seed*/metrics.json")):
                value = json.loads(path.read_text())["best_val_monitor"]
                out.setdefault(ds, {}).setdefault(m["row"], {}).setdefault(float(m["lr"]), []).append(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("grid", type=Path, nargs="+")
    ap.add_argument("--template", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--mode", choices=["max", "min"], default="max", help="max for AUC monitors, min for losses")
    ap.add_argument("--same-lr", action="append", default=[], metavar="ROW=FROM",
                    help="template row ROW (not searched) takes row FROM's chosen rate; repeatable")
    ap.add_argument("--allow-edge", action="store_true",
                    help="write the rates even when a winner is the smallest or largest of its grid")
    args = ap.parse_args()
    same = {}
    for item in args.same_lr:
        row, sep, source = item.partition("=")
        if not sep or not row or not source:
            raise SystemExit(f"--same-lr expects ROW=FROM, got {item!r}")
        same[row] = source
    found: dict[str, dict[str, dict[float, list[float]]]] = {}
    for grid in args.grid:
        for ds, rows in collect(grid).items():
            for row, by_lr in rows.items():
                for lr, values in by_lr.items():
                    found.setdefault(ds, {}).setdefault(row, {}).setdefault(lr, []).extend(values)
    template = yaml.safe_load(args.template.read_text())
    chosen: dict[str, dict[str, float]] = {}
    edges: list[str] = []
    print(f"{'dataset':<16} {'row':<22} {'lr':>8}  validation monitor per lr (mean over seeds)")
    for ds, rows in found.items():
        for row, by_lr in rows.items():
            means = {lr: statistics.fmean(v) for lr, v in sorted(by_lr.items())}
            pick = (max if args.mode == "max" else min)(means, key=means.get)
            chosen.setdefault(row, {})[ds] = pick
            edge = len(means) < 3 or pick in (min(means), max(means))
            if edge:
                edges.append(f"{row} on {ds} ({pick:g})")
            print(f"{ds:<16} {row:<22} {pick:>8g}  " + ", ".join(f"{lr:g}: {v:.4f}" for lr, v in means.items())
                  + ("  <- at the grid's edge" if edge else ""))
    if edges and not args.allow_edge:
        raise SystemExit(f"select_lr: the best rate is at the edge of its grid (not bracketed) for "
                         f"{', '.join(edges)}; widen the grid (polyrec bench's lr_grid extends it itself) "
                         "or pass --allow-edge.")
    for row, source in same.items():
        if source not in chosen:
            raise SystemExit(f"--same-lr {row}={source}: {source!r} has no finished grid runs")
        chosen[row] = dict(chosen[source])
        print(f"{'(all)':<16} {row:<22} same rate as {source}")
    rows = []
    for item in template["rows"]:
        label = item if isinstance(item, str) else item.get("label") or item["model"]
        entry = {"label": label, "model": label} if isinstance(item, str) else dict(item)
        if label not in chosen:
            raise SystemExit(f"row {label!r} of the template has no finished grid runs")
        entry["dataset_set"] = {ds: {"train.lr": lr} for ds, lr in chosen[label].items()}
        rows.append(entry)
    template["rows"] = rows
    header = (f"# Generated by benchmarks/select_lr.py from {', '.join(map(str, args.grid))} (validation monitor, {args.mode}); "
              f"template {args.template}.\n")
    args.out.write_text(header + yaml.safe_dump(template, sort_keys=False, width=120))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
