"""`polyrec bench`: rows/experiment parsing, paired statistics against scipy, table marks, and real (tiny)
MovieLens-100K benches: failure isolation, resume after deleting a result, and kill-then-rerun of the CLI."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from helpers import require_dataset
from polyrec.bench import runner as bench_runner
from polyrec.bench.aggregate import collect, format_cell, mark_column, write_results
from polyrec.bench.spec import (VARIANTS, build_experiment, parse_bracket, parse_row, parse_seeds, safe_name,
                                split_top)
from polyrec.bench.stats import min_wilcoxon_p, paired_test, significant
from polyrec.errors import PolyrecError

scipy_stats = pytest.importorskip("scipy.stats", reason="polyrec bench needs scipy (pip install scipy)")

DATASET = "movielens-100k"
TINY = ["train.epochs=1", "train.batch_size=4096", "train.threads=1", "train.patience=0"]


# --- statistics -----------------------------------------------------------------------------------------
A = {0: 0.7012, 1: 0.7055, 2: 0.6991, 3: 0.7030, 4: 0.7047}
B = {0: 0.6950, 1: 0.7001, 2: 0.6969, 3: 0.6978, 4: 0.7010}


def test_paired_test_matches_scipy_on_fixed_numbers():
    t = paired_test(A, B)
    x, y = np.array([A[s] for s in range(5)]), np.array([B[s] for s in range(5)])
    assert t.n == 5
    assert t.mean_diff == pytest.approx(float(np.mean(x - y)))
    assert t.t_p == pytest.approx(scipy_stats.ttest_rel(x, y).pvalue, rel=1e-12)
    assert t.t_stat == pytest.approx(scipy_stats.ttest_rel(x, y).statistic, rel=1e-12)
    assert t.wilcoxon_p == pytest.approx(scipy_stats.wilcoxon(x, y, method="exact").pvalue, rel=1e-12)
    assert t.t_p < 0.05 and significant(t, lower_is_better=False)
    assert not significant(t, lower_is_better=True)  # the gain is in the wrong direction for a loss
    # all 5 differences positive: the exact Wilcoxon p is at its floor, 0.0625 > 0.05
    assert t.wilcoxon_p == pytest.approx(0.0625) == min_wilcoxon_p(5)


def test_paired_test_pairs_only_shared_seeds():
    a = {**A, 5: 0.9}  # seed 5 only in a; seed 2 NaN in b: both dropped
    b = {**B, 2: float("nan")}
    t = paired_test(a, b)
    seeds = [0, 1, 3, 4]
    x, y = [A[s] for s in seeds], [B[s] for s in seeds]
    assert t.n == 4
    assert t.t_p == pytest.approx(scipy_stats.ttest_rel(x, y).pvalue, rel=1e-12)


def test_paired_test_degenerate_cases_never_crash():
    assert math.isnan(paired_test({0: 0.7}, {0: 0.6}).t_p)  # n = 1
    assert paired_test({0: 0.7}, {1: 0.6}).n == 0
    same = paired_test({0: 0.7, 1: 0.71, 2: 0.72}, {0: 0.7, 1: 0.71, 2: 0.72})
    assert same.t_p == 1.0 and same.wilcoxon_p == 1.0 and not significant(same, False)
    const = paired_test({0: 0.75, 1: 0.76, 2: 0.77}, {0: 0.70, 1: 0.71, 2: 0.72})  # differences all 0.05
    assert math.isnan(const.t_p) and not significant(const, False)
    assert math.isnan(paired_test({}, {}).t_p)


def test_marks_bold_underline_and_star():
    values = {
        "good": {s: A[s] + 0.01 + 0.001 * s for s in A},  # best, consistently above "mid" -> star
        "mid": dict(A),
        "bad": dict(B),
        "empty": {},
    }
    auc = mark_column(values, lower=False)
    cells = auc["cells"]
    assert cells["good"]["mark"] == "best" and cells["good"]["star"]
    assert cells["mid"]["mark"] == "second" and not cells["mid"]["star"]
    assert cells["bad"]["mark"] is None and cells["empty"]["n"] == 0
    assert auc["test"]["best"] == "good" and auc["test"]["runner_up"] == "mid" and auc["test"]["significant"]
    # the same numbers as a loss: lower is better, so "bad" is best and "mid" second
    loss = mark_column(values, lower=True)["cells"]
    assert loss["bad"]["mark"] == "best" and loss["mid"]["mark"] == "second" and loss["good"]["mark"] is None
    assert loss["bad"]["star"]  # B is below A on every seed, with p < 0.05
    # a best row that is not significantly better than the runner-up gets no star
    noisy = mark_column({"x": {0: 0.80, 1: 0.70, 2: 0.75}, "y": {0: 0.74, 1: 0.75, 2: 0.74}}, lower=False)
    assert noisy["cells"]["x"]["mark"] == "best" and not noisy["cells"]["x"]["star"]
    # a tie for best: both bold, no star
    tie = mark_column({"x": {0: 0.7, 1: 0.8}, "y": {0: 0.7, 1: 0.8}, "z": {0: 0.6, 1: 0.6}}, lower=False)["cells"]
    assert tie["x"]["mark"] == tie["y"]["mark"] == "best" and tie["z"]["mark"] == "second"
    assert not tie["x"]["star"]
    assert format_cell({"mean": 0.71234, "std": 0.00321, "n": 5, "mark": "best", "star": True}) == \
        "**0.7123 ± 0.0032**\\*"
    assert format_cell({"mean": 0.7, "std": 0.01, "n": 3, "mark": "second", "star": False}) == \
        "<u>0.7000 ± 0.0100</u>"
    assert format_cell({"mean": 0.7, "std": float("nan"), "n": 1, "mark": None}) == "0.7000"
    assert format_cell({"n": 0}) == "—"


def _metrics(auc_click: float, auc_like: float, logloss: float) -> dict:
    cell = {"click": {"auc": auc_click, "logloss": 0.6, "n": 10, "positives": 5},
            "like": {"auc": auc_like, "logloss": 0.5, "n": 10, "positives": 2}}
    return {"dataset": "toy", "model": "m", "epochs_run": 2, "best_epoch": 2, "train_seconds": 4.0,
            "monitor": "overall/mean_auc",
            "test": {"heads": cell, "cells": {"north": cell, "south": cell},
                     "overall": {"auc": (auc_click + auc_like) / 2, "logloss": logloss, "mean_auc": 0.7}}}


def test_results_from_a_hand_made_bench_folder(tmp_path):
    """results.json/.md/.csv from hand-written run folders: marks, star, the failed run left out and listed."""
    seeds = [0, 1, 2, 3, 4]
    rows = {"alpha": (0.02, 0.30), "beta": (0.0, 0.40), "gamma": (-0.03, 0.35)}  # (AUC offset, logloss)
    noises = {"alpha": [1, 3, 0, 2, 4], "beta": [0, 2, 1, 4, 3], "gamma": [2, 0, 4, 1, 3]}  # per seed, x 0.001
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump({
        "datasets": ["toy"], "seeds": seeds, "optimizers": ["adam"],  # an optimiser study: curves too
        "rows": [{"label": lb, "model": "m", "folder": lb} for lb in rows] + [{"label": "m[x=1]", "model": "m",
                                                                            "folder": "m__x=1"}]}))
    for lb, (off, loss) in rows.items():
        for s in seeds:
            d = tmp_path / "runs" / "toy" / lb / f"seed{s}"
            d.mkdir(parents=True)
            noise = 0.001 * noises[lb][s]
            (d / "metrics.json").write_text(json.dumps(_metrics(0.7 + off + noise, 0.6 + noise, loss + noise)))
            epochs = 3 if s else 2  # seed 0 stopped early
            (d / "metrics.jsonl").write_text("".join(json.dumps({
                "epoch": e, "monitor": "overall/mean_auc", "monitor_value": 0.6 + 0.01 * e + off + noise}) + "\n"
                for e in range(1, epochs + 1)))
    for s in seeds:
        d = tmp_path / "runs" / "toy" / "m__x=1" / f"seed{s}"
        d.mkdir(parents=True)
        if s == 3:
            (d / "error.json").write_text(json.dumps({"error": "boom", "type": "RuntimeError", "traceback": ""}))
        else:
            (d / "metrics.json").write_text(json.dumps(_metrics(0.5, 0.5, 0.9)))
    results, paths = write_results(tmp_path)
    table = results["datasets"]["toy"]["table"]
    keys = [c["key"] for c in table["columns"]]
    assert keys == ["cell/north/click/auc", "cell/north/like/auc", "cell/south/click/auc", "cell/south/like/auc",
                    "click/auc", "like/auc", "overall/auc", "overall/logloss"]
    click = {lb: table["cells"][lb]["click/auc"] for lb in table["cells"]}
    assert click["alpha"]["mark"] == "best" and click["alpha"]["star"]
    assert click["beta"]["mark"] == "second"
    like = {lb: table["cells"][lb]["like/auc"] for lb in table["cells"]}
    assert not any(c["star"] for c in like.values())  # like AUC differs by noise only: no star
    loss = {lb: table["cells"][lb]["overall/logloss"] for lb in table["cells"]}
    assert loss["alpha"]["mark"] == "best" and loss["gamma"]["mark"] == "second" and loss["alpha"]["star"]
    curve = results["datasets"]["toy"]["rows"]["alpha"]["curve"]
    assert curve["monitor"] == "overall/mean_auc" and curve["epochs"] == [1, 2, 3] and curve["n"] == [5, 5, 4]
    assert curve["mean"][0] == pytest.approx(np.mean([0.63 + 0.001 * n for n in noises["alpha"]]))
    failed = results["datasets"]["toy"]["rows"]["m[x=1]"]
    assert failed["seeds_ok"] == [0, 1, 2, 4] and list(failed["seeds_failed"]) == [3]
    assert failed["metrics"]["click/auc"]["n"] == 4
    md = paths["results.md"].read_text()
    assert "**0.7" in md and "<u>" in md and "\\*" in md
    assert "`m[x=1]` seed 3: RuntimeError: boom" in md
    assert "0.0625" in md and "independent" in md
    saved = json.loads(paths["results.json"].read_text())  # strict JSON: NaN written as null
    assert saved["datasets"]["toy"]["rows"]["m[x=1]"]["seeds_failed"]["3"]["type"] == "RuntimeError"
    per_seed = paths["results-per-seed.csv"].read_text().splitlines()
    assert per_seed[0] == "dataset,row,seed,metric,value"
    assert sum(1 for line in per_seed if line.startswith("toy,alpha,") and ",click/auc," in line) == 5
    assert "toy,alpha,overall/auc,5," in paths["results.csv"].read_text()


# --- rows, seeds, experiments ------------------------------------------------------------------------------
def test_bracket_syntax_and_close_match_errors(monkeypatch):
    assert split_top("mmoe[n_experts=8,expert_dims=[64,32]],ple, sharedbottom") == \
        ["mmoe[n_experts=8,expert_dims=[64,32]]", "ple", "sharedbottom"]
    assert parse_bracket("fdn[orthogonal=false]") == ("fdn", {"orthogonal": False})
    row = parse_row("mmoe[n_experts=8, expert_dims=[64,32], dropout=0.1, train.lr=0.01]")
    assert row.label == "mmoe[n_experts=8, expert_dims=[64,32], dropout=0.1, train.lr=0.01]"
    assert row.model == "mmoe" and row.params == {"n_experts": 8, "expert_dims": [64, 32], "dropout": 0.1}
    assert row.set == {"train.lr": 0.01}
    assert safe_name("mmoe/adam") == "mmoe__adam" and safe_name("fdn[orthogonal=false]") == "fdn__orthogonal=false"
    with pytest.raises(PolyrecError, match="Did you mean 'n_experts'"):
        parse_row("mmoe[n_expert=8]")
    with pytest.raises(PolyrecError, match="Did you mean 'mmoe'"):
        parse_row("mmeo")
    with pytest.raises(PolyrecError, match="not key=value"):
        parse_row("mmoe[8]")
    with pytest.raises(PolyrecError, match="Did you mean 'lr'"):
        parse_row("mmoe[train.lrr=0.1]")
    monkeypatch.setitem(VARIANTS, "mmoe-wide", ("mmoe", {"n_experts": 8}))
    wide = parse_row("mmoe-wide[dropout=0.2]")
    assert (wide.label, wide.model, wide.params) == ("mmoe-wide[dropout=0.2]", "mmoe", {"n_experts": 8, "dropout": 0.2})


def test_seeds():
    assert parse_seeds("5") == [0, 1, 2, 3, 4] and parse_seeds(3) == [0, 1, 2]
    assert parse_seeds("0,3,7") == [0, 3, 7] and parse_seeds([2, 9]) == [2, 9]
    for bad in ("0", "a", "1,1", [], [1.5]):
        with pytest.raises(PolyrecError):
            parse_seeds(bad)


def test_experiment_yaml(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"model": {"name": "ple", "embed_dim": 8},
                                                        "train": {"epochs": 3, "seed": 99}}))
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump({
        "name": "study", "datasets": ["movielens-100k", "movielens-1m"], "seeds": [0, 2],
        "config": "base.yaml",
        "base": {"train": {"lr": 0.001}, "model": {"dropout": 0.1}},
        "set": {"model.n_experts": 6},
        "dataset_set": {"movielens-1m": {"train.lr": 0.002, "train.batch_size": 2048}},
        "rows": ["sharedbottom", {"label": "mmoe-8", "model": "mmoe", "set": {"model.n_experts": 8, "train.lr": 0.003}},
                 {"model": "mmoe"}],
        "optimizers": ["adam", "sgd[lr=0.05,momentum=0.9]"],
    }))
    exp = build_experiment(tmp_path / "exp.yaml", overrides=["train.epochs=1"])
    assert exp.name == "study" and exp.seeds == [0, 2] and exp.datasets == ["movielens-100k", "movielens-1m"]
    labels = [r.label for r in exp.rows]
    assert labels == ["sharedbottom/adam", "sharedbottom/sgd[lr=0.05,momentum=0.9]", "mmoe-8/adam",
                      "mmoe-8/sgd[lr=0.05,momentum=0.9]", "mmoe/adam", "mmoe/sgd[lr=0.05,momentum=0.9]"]
    by = {r.label: r for r in exp.rows}
    sb = exp.config_for("movielens-100k", by["sharedbottom/adam"], 2)
    assert sb.model.name == "sharedbottom" and sb.model.embed_dim == 8 and sb.model.params() == {"dropout": 0.1}
    assert sb.train.seed == 2 and sb.data.split_seed is None and sb.data.dataset == "movielens-100k"
    assert sb.train.epochs == 1 and sb.train.lr == 0.001 and sb.train.optimizer == "adam"
    assert any("sharedbottom" in n and "n_experts" in n for n in exp.notes)  # not applied there, and said so
    m8 = exp.config_for("movielens-1m", by["mmoe-8/sgd[lr=0.05,momentum=0.9]"], 0)
    assert m8.model.params()["n_experts"] == 8  # row beats --set
    assert (m8.train.optimizer, m8.train.lr, m8.train.momentum) == ("sgd", 0.05, 0.9)  # optimiser beats row
    assert m8.train.batch_size == 2048  # dataset_set
    m = exp.config_for("movielens-1m", by["mmoe/adam"], 0)
    assert m.model.params()["n_experts"] == 6 and m.train.lr == 0.002  # dataset_set beats base
    d = exp.to_dict()
    assert d["rows"][2]["label"] == "mmoe-8/adam" and d["rows"][2]["folder"] == "mmoe-8__adam"
    assert d["seeds"] == [0, 2] and d["optimizers"] == ["adam", "sgd[lr=0.05,momentum=0.9]"]
    # command-line options replace the YAML's
    exp2 = build_experiment(tmp_path / "exp.yaml", datasets="movielens-100k", models="mmoe", seeds="3",
                            optimizers="")
    assert exp2.datasets == ["movielens-100k"] and [r.label for r in exp2.rows] == ["mmoe"] and exp2.seeds == [0, 1, 2]
    assert build_experiment(datasets="movielens-100k", models="mmoe").seeds == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("spec,match", [
    ({"datasets": ["movielens-100k"], "rows": ["mmoe"], "seed": 3}, "Did you mean 'seeds'"),
    ({"datasets": ["movielens-10k"], "rows": ["mmoe"]}, "Did you mean 'movielens-100k'"),
    ({"datasets": ["movielens-100k"], "rows": [{"label": "x", "model": "mmoe", "sett": {}}], }, "Did you mean 'set'"),
    ({"datasets": ["movielens-100k"], "rows": ["mmoe", "ple"], "set": {"model.n_expert": 4}},
     "Did you mean 'n_experts'"),
    ({"datasets": ["movielens-100k"], "rows": ["mmoe"], "set": {"train.sed": 1}}, "Did you mean 'seed'"),
    ({"datasets": ["movielens-100k"], "rows": ["mmoe"], "set": {"train.seed": 1}}, "set by the bench"),
    ({"datasets": ["movielens-100k"], "rows": ["mmoe", {"label": "mmoe", "model": "ple"}]}, "appears twice"),
    ({"datasets": ["movielens-100k"], "rows": ["mmoe"], "optimizers": ["adma"]}, "Did you mean 'adam'"),
    ({"datasets": ["movielens-100k"], "rows": ["mmoe"], "dataset_set": {"movielens-10m": {"train.lr": 1}}},
     "dataset_set: Unknown dataset 'movielens-10m'"),
    ({"datasets": ["movielens-100k"], "rows": []}, "No rows"),
])
def test_experiment_errors(tmp_path, spec, match):
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(PolyrecError, match=match):
        build_experiment(tmp_path / "exp.yaml")


# --- real benches on MovieLens-100K ------------------------------------------------------------------------
class Counter:
    """Wraps the real train_run; records calls; raises for chosen (row model, seed) pairs."""

    def __init__(self, fail: set[tuple[str, int]] = frozenset()):
        self.calls: list[tuple[str, int, bool]] = []
        self.fail = set(fail)
        self.real = bench_runner.train_run

    def __call__(self, cfg, run_dir, resume=False, **kw):
        label = Path(run_dir).parent.name
        self.calls.append((label, cfg.train.seed, resume))
        if (label, cfg.train.seed) in self.fail:
            raise RuntimeError(f"injected failure for {label} seed {cfg.train.seed}")
        return self.real(cfg, run_dir, resume=resume, **kw)


ROWS = "mmoe,sharedbottom,mmoe[n_experts=abc]"


def _bench(out: Path, counter: Counter, monkeypatch, report):
    """run_bench with train_run wrapped by `counter` and the report written by `report` (a FakeReport, or
    None: no report)."""
    lines: list[str] = []

    def echo(text: str = "", end: str = "\n") -> None:
        lines.append(text + end)

    monkeypatch.setattr(bench_runner, "train_run", counter)
    exp = build_experiment(datasets=DATASET, models=ROWS, seeds="2", overrides=TINY,
                           command=["polyrec", "bench", "--test"])
    outcome = bench_runner.run_bench(exp, out, echo=echo, report=report.write_report if report else None)
    return outcome, "".join(lines)


class FakeReport:
    def __init__(self, fail: bool = False):
        self.calls = []
        self.fail = fail

    def write_report(self, bench_dir):
        self.calls.append(Path(bench_dir))
        if self.fail:
            raise RuntimeError("no figures today")
        return Path(bench_dir) / "report.html"


@pytest.fixture(scope="module")
def small_bench(tmp_path_factory):
    """3 rows x 2 seeds: sharedbottom seed 1 fails (injected), mmoe[n_experts=abc] fails on both seeds."""
    require_dataset(DATASET)
    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("bench") / "b"
    counter = Counter(fail={("sharedbottom", 1)})
    report = FakeReport()
    with pytest.MonkeyPatch.context() as mp:
        outcome, text = _bench(out, counter, mp, report)
    torch.set_num_threads(threads)
    return out, outcome, text, counter, report


def test_bench_folder_layout_and_failure_isolation(small_bench):
    out, outcome, text, counter, report = small_bench
    runs = out / "runs" / DATASET
    assert (out / "bench.yaml").exists() and (out / "environment.json").exists()
    for name in ("results.json", "results.csv", "results-per-seed.csv", "results.md"):
        assert (out / name).exists(), name
    assert report.calls == [out]  # the report helper is called at the end
    assert sorted(outcome.failed) == [(DATASET, "mmoe[n_experts=abc]", 0), (DATASET, "mmoe[n_experts=abc]", 1),
                                      (DATASET, "sharedbottom", 1)]
    for seed in (0, 1):
        assert (runs / "mmoe" / f"seed{seed}" / "metrics.json").exists()
        err = json.loads((runs / "mmoe__n_experts=abc" / f"seed{seed}" / "error.json").read_text())
        assert err["type"] == "PolyrecError" and "n_experts" in err["error"] and "Traceback" in err["traceback"]
    assert (runs / "sharedbottom" / "seed0" / "metrics.json").exists()
    err = json.loads((runs / "sharedbottom" / "seed1" / "error.json").read_text())
    assert err["type"] == "RuntimeError" and "injected" in err["error"]
    # progress lines, in order dataset -> seed -> row
    assert f"[1/6] {DATASET} mmoe seed 0 ... done (test overall/auc 0." in text
    assert f"[5/6] {DATASET} sharedbottom seed 1 ... FAILED (RuntimeError: injected" in text
    # results: the failed runs are left out, and said so
    res = json.loads((out / "results.json").read_text())["datasets"][DATASET]
    assert res["rows"]["sharedbottom"]["seeds_ok"] == [0] and "1" in res["rows"]["sharedbottom"]["seeds_failed"]
    assert res["rows"]["sharedbottom"]["metrics"]["overall/auc"]["n"] == 1
    assert res["rows"]["mmoe"]["metrics"]["overall/auc"]["n"] == 2
    assert res["rows"]["mmoe"]["metrics"]["seconds_per_epoch"]["n"] == 2
    md = (out / "results.md").read_text()
    assert "`sharedbottom` seed 1: RuntimeError: injected failure" in md
    # one epoch: its best epoch is its last, so every finished row is cap-bound (†); a row with none is not
    assert "| mmoe[n_experts=abc] | 0/2 |" in md and "| sharedbottom † | 1/2 |" in md
    assert "<25/click AUC" in md and "overall LogLoss" in md
    spec = yaml.safe_load((out / "bench.yaml").read_text())
    assert spec["seeds"] == [0, 1] and [r["label"] for r in spec["rows"]] == ["mmoe", "sharedbottom",
                                                                              "mmoe[n_experts=abc]"]
    assert spec["command"] == ["polyrec", "bench", "--test"] and spec["set"]["train.epochs"] == 1
    env = json.loads((out / "environment.json").read_text())
    assert env["versions"]["torch"] == torch.__version__ and "git_commit" in env
    ds = env["datasets"][DATASET]
    assert all(f["sha256_head_tail"] for f in ds["files"].values())
    assert sorted(s for e in ds["cache_entries"].values() for s in e["seeds"]) == [0, 1]  # one split per seed
    # same seed = same split for every row: the runs of one seed share their cache entry
    entries = {json.loads((runs / lb / "seed0" / "spec.json").read_text())["cache_entry"]
               for lb in ("mmoe", "sharedbottom")}
    assert len(entries) == 1


def test_rerun_trains_only_what_is_missing(small_bench, tmp_path, monkeypatch):
    src, *_ = small_bench
    out = tmp_path / "b"
    shutil.copytree(src, out)
    runs = out / "runs" / DATASET
    (runs / "mmoe" / "seed1" / "metrics.json").unlink()  # its checkpoint stays: resumed, not retrained
    kept = runs / "mmoe" / "seed0" / "metrics.json"
    mtime = kept.stat().st_mtime_ns
    threads = torch.get_num_threads()
    counter = Counter()
    outcome, text = _bench(out, counter, monkeypatch, FakeReport())
    torch.set_num_threads(threads)
    assert sorted(counter.calls) == [("mmoe", 1, True), ("mmoe__n_experts=abc", 0, False),
                                     ("mmoe__n_experts=abc", 1, False), ("sharedbottom", 1, False)]
    assert kept.stat().st_mtime_ns == mtime
    assert "mmoe seed 0 ... finished earlier, skipped" in text
    assert "mmoe seed 1 ... resuming from its checkpoint" in text
    assert "sharedbottom seed 1 ... retrying (it failed before: RuntimeError: injected" in text
    assert not (runs / "sharedbottom" / "seed1" / "error.json").exists()
    assert (runs / "sharedbottom" / "seed1" / "metrics.json").exists()
    assert sorted(outcome.failed) == [(DATASET, "mmoe[n_experts=abc]", 0), (DATASET, "mmoe[n_experts=abc]", 1)]
    res = collect(out)["datasets"][DATASET]["rows"]
    assert res["sharedbottom"]["seeds_ok"] == [0, 1] and res["mmoe"]["seeds_ok"] == [0, 1]
    # the resumed run reproduces the deleted result exactly
    before = json.loads((src / "runs" / DATASET / "mmoe" / "seed1" / "metrics.json").read_text())
    after = json.loads((runs / "mmoe" / "seed1" / "metrics.json").read_text())
    assert before["test"]["overall"] == after["test"]["overall"]
    # nothing left to do: nothing trains; a report writer that fails is said to, and the results stand
    counter2 = Counter()
    _, text2 = _bench(out, counter2, monkeypatch, FakeReport(fail=True))
    assert [c for c in counter2.calls if c[0] != "mmoe__n_experts=abc"] == []
    assert "report: FAILED (RuntimeError: no figures today)" in text2 and (out / "results.md").exists()


def test_rerun_with_other_settings_is_refused(small_bench, monkeypatch):
    src, *_ = small_bench
    exp = build_experiment(datasets=DATASET, models="mmoe", seeds="2", overrides=TINY + ["train.lr=0.5"])
    with pytest.raises(PolyrecError, match="other settings"):
        bench_runner.run_bench(exp, src, echo=lambda *a, **k: None)


def test_killed_bench_finishes_only_missing_runs_when_rerun(tmp_path):
    """The real CLI in a subprocess, killed (SIGKILL) during its second run, then the same command again."""
    require_dataset(DATASET)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-c", "from polyrec.cli import main; main()", "bench", "--dataset", DATASET,
           "--models", "sharedbottom", "--seeds", "2", "--out", str(out), "--no-report"]
    for s in TINY:
        cmd += ["--set", s.replace("train.epochs=1", "train.epochs=2")]
    first = out / "runs" / DATASET / "sharedbottom" / "seed0" / "metrics.json"
    second = out / "runs" / DATASET / "sharedbottom" / "seed1"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not (second / "checkpoint.pt").exists():  # seed 0 done, seed 1 past its first epoch
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "the bench did not get to its second run in time"
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert first.exists()
    second_was_done = (second / "metrics.json").exists()
    mtime = first.stat().st_mtime_ns
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"[1/2] {DATASET} sharedbottom seed 0 ... finished earlier, skipped" in again.stdout
    if not second_was_done:
        assert f"[2/2] {DATASET} sharedbottom seed 1 ... resuming from its checkpoint" in again.stdout
    assert first.stat().st_mtime_ns == mtime
    assert (second / "metrics.json").exists()
    assert re.search(r"\| sharedbottom( †)? \| 2/2 \|", again.stdout) and str(out / "results.md") in again.stdout


def test_cli_bench_rejects_unknown_row_parameters_before_training(tmp_path):
    from typer.testing import CliRunner

    from polyrec.cli import app

    result = CliRunner().invoke(app, ["bench", "--dataset", DATASET, "--models", "mmoe,mmoe[n_expert=2]",
                                      "--seeds", "2", "--out", str(tmp_path / "b")])
    assert isinstance(result.exception, PolyrecError)
    assert "Did you mean 'n_experts'" in str(result.exception) and "mmoe[n_expert=2]" in str(result.exception)
    assert not (tmp_path / "b").exists()


def test_row_dataset_set_applies_to_that_row_and_dataset_only(tmp_path):
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump({
        "datasets": ["movielens-100k", "movielens-1m"], "seeds": 1, "base": {"train": {"lr": 0.001}},
        "rows": [{"label": "ple", "model": "ple",
                  "dataset_set": {"movielens-1m": {"train.lr": 0.003}, "movielens-100k": ["train.lr=0.0003"]}},
                 "mmoe"],
        "optimizers": ["adam"],
    }))
    exp = build_experiment(tmp_path / "exp.yaml")
    by = {r.label: r for r in exp.rows}
    assert exp.config_for("movielens-1m", by["ple/adam"], 0).train.lr == 0.003
    assert exp.config_for("movielens-100k", by["ple/adam"], 0).train.lr == 0.0003
    assert exp.config_for("movielens-1m", by["mmoe/adam"], 0).train.lr == 0.001
    assert exp.to_dict()["rows"][0]["dataset_set"]["movielens-1m"] == {"train.lr": 0.003}
    with pytest.raises(PolyrecError, match="params"):
        parse_row({"model": "ple", "dataset_set": {"movielens-1m": {"model.n_levels": 2}}})
    with pytest.raises(PolyrecError, match="must map"):
        parse_row({"model": "ple", "dataset_set": ["train.lr=0.1"]})
