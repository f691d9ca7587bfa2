"""polyrec.bench.store, the one reader of bench folders: the aggregate tables and the report see the same
runs; statistics are polyrec.bench.stats' (one seed: no std, shown as n/a); the report leads with results."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from polyrec.bench.aggregate import collect
from polyrec.bench.store import Run, head_metric, load_bench, run_dir

DS = "tiny"


def _metrics(auc: float) -> dict:
    return {"test": {"overall": {"auc": auc, "mean_auc": auc, "logloss": 0.5},
                     "heads": {"click": {"auc": auc, "logloss": 0.5}},
                     "cells": {"north": {"click": {"auc": auc}}, "south": {"click": {"auc": auc - 0.1}}}},
            "train_seconds": 2.0, "epochs_run": 2, "best_epoch": 1}


def _bench(root: Path, seeds: list[int]) -> Path:
    """Rows `plain` (folder = label) and `mmoe[lr=0.1]` in folder `custom`; `broken` failed on every seed."""
    root.mkdir()
    rows = [{"label": "plain", "model": "mmoe", "folder": "plain"},
            {"label": "mmoe[lr=0.1]", "model": "mmoe", "folder": "custom"},
            {"label": "broken", "model": "mmoe", "folder": "broken"}]
    (root / "bench.yaml").write_text(yaml.safe_dump({"name": "t", "datasets": [DS], "seeds": seeds, "rows": rows,
                                                     "command": ["polyrec", "bench"]}))
    (root / "environment.json").write_text(json.dumps({"git_commit": "abc123"}))
    for seed in seeds:
        for folder, auc in (("plain", 0.7), ("custom", 0.8)):
            rd = run_dir(root, DS, folder, seed)
            rd.mkdir(parents=True)
            (rd / "metrics.json").write_text(json.dumps(_metrics(auc + 0.01 * seed)))
            (rd / "metrics.jsonl").write_text("\n".join(json.dumps({"epoch": e, "monitor": "auc", "monitor_value":
                                                                    auc - 0.1 / e, "train_loss": {"click": 1 / e}})
                                                        for e in (1, 2)) + "\n{half a line")
        rd = run_dir(root, DS, "broken", seed)
        rd.mkdir(parents=True)
        (rd / "error.json").write_text(json.dumps({"type": "RuntimeError", "error": "boom"}))
    return root


def test_aggregate_and_report_read_the_same_runs(tmp_path):
    root = _bench(tmp_path / "b", [0, 1])
    bench = load_bench(root)
    assert bench.labels == ["plain", "mmoe[lr=0.1]", "broken"]  # the row's folder maps back to its label
    assert {(r.label, r.seed) for r in bench.runs if r.ok} == {(lb, s) for lb in ("plain", "mmoe[lr=0.1]")
                                                                for s in (0, 1)}
    run = bench.run_at(DS, "custom", 1)
    assert run is not None and run.label == "mmoe[lr=0.1]" and run.curve() == ("auc", {1: pytest.approx(0.7), 2: pytest.approx(0.75)})
    rows = collect(root)["datasets"][DS]["rows"]
    assert rows["mmoe[lr=0.1]"]["seeds_ok"] == [0, 1] and rows["plain"]["seeds_ok"] == [0, 1]
    assert rows["broken"]["seeds_failed"][0] == {"type": "RuntimeError", "error": "boom",
                                                 "path": "runs/tiny/broken/seed0/error.json"}
    assert rows["mmoe[lr=0.1]"]["metrics"]["overall/auc"]["mean"] == pytest.approx(0.805)


def test_a_run_reads_its_large_files_only_when_asked(tmp_path):
    rd = tmp_path / "seed0"
    rd.mkdir()
    (rd / "metrics.json").write_text(json.dumps(_metrics(0.7)))
    run = Run.read(DS, "x", 0, rd)
    (rd / "steps.jsonl").write_text(json.dumps({"step": 1, "weights": {"click": 1.0}}) + "\n")  # after reading
    assert run.ok and run.steps == [{"step": 1, "weights": {"click": 1.0}}] and run.gates is None
    assert run.test_cell("south", "click") == {"auc": pytest.approx(0.6)} and head_metric(run.test_cell("all", "click")) == "auc"
    (rd / "error.json").write_text("{not json")
    assert Run.read(DS, "x", 0, rd).error == {"error": "error.json exists but could not be read"}


def test_one_seed_has_no_std_and_the_tables_say_n_a(tmp_path):
    from polyrec.report.tables import summarize, summary_html

    bench = load_bench(_bench(tmp_path / "b", [0]))
    row = {r["label"]: r for r in summarize(bench)[DS]}["plain"]
    mean, std, n = row["overall/mean_auc"]
    assert n == 1 and mean == pytest.approx(0.7) and math.isnan(std)  # stats.mean_std: undefined, not 0
    html = summary_html(bench)
    assert "0.7000 ± n/a" in html and "0.7000 ± 0.0000" not in html


def test_the_report_leads_with_results_and_figures(tmp_path):
    pytest.importorskip("matplotlib")
    from polyrec.report import write_report

    root = _bench(tmp_path / "b", [0, 1])
    text = write_report(root).read_text()
    marks = ['id="results"', "No results.md from the aggregator", "<figure", 'id="failures"', 'id="experiment"',
             'id="environment"', "abc123"]
    order = [text.index(m) for m in marks]
    assert order == sorted(order)
    assert "0.8050 ± 0.0071" in text  # mmoe[lr=0.1]'s overall mean AUC over its two seeds


def test_bench_never_imports_the_report_package():
    """report/ imports bench/ (store, stats), not the other way round: `polyrec bench` is handed write_report."""
    import ast

    root = Path(__file__).resolve().parent.parent / "polyrec" / "bench"
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "polyrec.report" or n.startswith("polyrec.report.") for n in names), path.name
