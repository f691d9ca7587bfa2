"""The bench's convergence rules: learning-rate grids chosen on validation that must bracket the best rate
(extended at either edge, a bounded number of times, then a loud failure naming the row), patience >= 3, and
the cap-bound mark (best epoch = last epoch run) in results.md and report.html.

The bench here trains nothing: `train_run` is replaced by a fake whose validation score is a known function
of the learning rate (peaked at a chosen optimum), so the grid's path is exact and the tests take seconds."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from polyrec.bench import runner as bench_runner
from polyrec.bench.aggregate import collect
from polyrec.bench.lrgrid import Point, best_point, decide, extension
from polyrec.bench.spec import MIN_PATIENCE, build_experiment, parse_lr_grid
from polyrec.bench.store import load_bench
from polyrec.errors import PolyrecError
from polyrec.report.html import render_report

pytest.importorskip("scipy.stats", reason="polyrec bench needs scipy (pip install scipy)")

DATASET = "movielens-100k"  # only its name: the fake trains nothing and reads no data
GRID = [0.001, 0.003, 0.01]


class FakeTrain:
    """Stands in for polyrec.runs.train_run: writes config.yaml and metrics.json with a validation monitor
    of -(log10 lr - log10 optimum)^2 (+ a small per-seed offset); records every (row folder, lr, seed)."""

    def __init__(self, optimum: dict[str, float], epochs: dict[str, tuple[int, int]] | None = None):
        self.optimum = optimum  # row folder -> best rate
        self.epochs = epochs or {}  # row folder -> (epochs run, best epoch)
        self.calls: list[tuple[str, float, int]] = []

    def __call__(self, cfg, run_dir, resume=False, **kw):
        run_dir = Path(run_dir)
        grid = run_dir.parent.name.startswith("lr=")
        folder = run_dir.parent.parent.name if grid else run_dir.parent.name
        lr, seed = cfg.train.lr, cfg.train.seed
        self.calls.append((folder, lr, seed))
        val = -(math.log10(lr) - math.log10(self.optimum[folder])) ** 2 - 0.001 * seed
        run, best = self.epochs.get(folder, (6, 4))
        head = {"auc": 0.7 + val / 100, "logloss": 0.5}
        metrics = {"monitor": cfg.train.monitor, "best_val_monitor": val, "epochs_run": run, "best_epoch": best,
                   "stopped_early": best < run, "train_seconds": 1.0,
                   "test": {"heads": {"click": head}, "overall": {"auc": head["auc"], "logloss": 0.5}}}
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump()))
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        return SimpleNamespace(metrics=metrics)


def _run(tmp_path: Path, monkeypatch, fake: FakeTrain, models: str = "mmoe", seeds: str = "2",
         sets: list[str] | None = None, out: str = "b"):
    lines: list[str] = []
    monkeypatch.setattr(bench_runner, "train_run", fake)
    exp = build_experiment(datasets=DATASET, models=models, seeds=seeds,
                           overrides=[f"bench.lr_grid={GRID}", *(sets or [])], command=["polyrec", "bench"])
    outcome = bench_runner.run_bench(exp, tmp_path / out, echo=lambda t="", end="\n": lines.append(t + end))
    return outcome, "".join(lines), tmp_path / out


# --- the decision, on its own -------------------------------------------------------------------------------
def test_extension_is_one_log_step_beyond_the_edge():
    assert extension(GRID, "up") == 0.0333 and extension(GRID, "down") == 0.000333
    assert extension([0.001, 0.01], "up") == 0.1 and extension([0.001, 0.01], "down") == 0.0001
    points = [Point(0.001, {0: 0.1}), Point(0.003, {0: 0.3}), Point(0.01, {0: 0.2})]
    assert decide(points, True, 0, 2, "row 'x'").action == "chosen"
    assert decide(points, True, 0, 2, "row 'x'").lr == 0.003
    low = decide(points, False, 0, 2, "row 'x'")  # a loss: smallest wins, at the lower edge
    assert (low.action, low.lr, low.direction) == ("extend", 0.000333, "down")
    stuck = decide(points, False, 2, 2, "row 'x' on d")
    assert stuck.action == "failed" and "row 'x' on d" in stuck.message and "smallest" in stuck.message
    # a failed seed disqualifies its rate; ties go to the smaller rate
    assert best_point([Point(0.001, {0: 0.5}), Point(0.003, {0: 0.9}, failed={1: "boom"})], True).lr == 0.001
    assert best_point([Point(0.003, {0: 0.5}), Point(0.001, {0: 0.5})], True).lr == 0.001
    assert decide([Point(0.001, failed={0: "x"}), Point(0.01, missing=[0])], True, 0, 2, "r").action == "failed"


# --- the bench, with a fake trainer -----------------------------------------------------------------------
def test_a_winner_at_the_upper_edge_extends_the_grid(tmp_path, monkeypatch):
    fake = FakeTrain({"mmoe": 0.05})  # above the grid: 0.01 wins, then 0.0333, then 0.111 loses to it
    outcome, text, out = _run(tmp_path, monkeypatch, fake)
    grid_calls = sorted(lr for f, lr, s in fake.calls if s == 0)
    assert grid_calls == [0.001, 0.003, 0.01, 0.0333, 0.111]  # seed 0 only: the selection seed
    assert [(lr, s) for f, lr, s in fake.calls if s == 1] == [(0.0333, 1)]  # seed 1 trained at the choice
    sel = json.loads((out / "lr-grid.json").read_text())["datasets"][DATASET]["mmoe"]
    assert sel["status"] == "chosen" and sel["chosen"] == 0.0333
    assert sel["extensions"] == [{"direction": "up", "lr": 0.0333}, {"direction": "up", "lr": 0.111}]
    assert [p["lr"] for p in sel["points"]] == [0.001, 0.003, 0.01, 0.0333, 0.111]
    assert sel["mode"] == "max" and sel["monitor"] == "overall/mean_auc"
    # the bench's runs are at the chosen rate; seed 0's is the grid's own run, linked, not retrained
    for seed in (0, 1):
        cfg = yaml.safe_load((out / "runs" / DATASET / "mmoe" / f"seed{seed}" / "config.yaml").read_text())
        assert cfg["train"]["lr"] == 0.0333 and cfg["train"]["patience"] == MIN_PATIENCE
    assert outcome.linked == [(DATASET, "mmoe", 0)] and not outcome.failed
    assert "adding lr=0.0333 (extension 1 of at most 2)" in text and "lr=0.0333 (validation" in text
    md = (out / "results.md").read_text()
    assert "**0.0333: " in md and "up to 0.0333, up to 0.111" in md
    # re-running trains nothing and chooses the same rate
    fake2 = FakeTrain({"mmoe": 0.05})
    outcome2, _, _ = _run(tmp_path, monkeypatch, fake2)
    assert fake2.calls == [] and outcome2.selections[(DATASET, "mmoe")].chosen == 0.0333


def test_a_winner_at_the_lower_edge_extends_the_grid_downwards(tmp_path, monkeypatch):
    fake = FakeTrain({"mmoe": 0.0002, "ple": 0.004})  # mmoe below the grid; ple inside it
    outcome, _, out = _run(tmp_path, monkeypatch, fake, models="mmoe,ple", seeds="1")
    sels = json.loads((out / "lr-grid.json").read_text())["datasets"][DATASET]
    assert sels["mmoe"]["chosen"] == 0.000333
    assert [e["direction"] for e in sels["mmoe"]["extensions"]] == ["down", "down"]
    assert sels["ple"]["chosen"] == 0.003 and sels["ple"]["extensions"] == []
    assert sorted(lr for f, lr, _ in fake.calls if f == "ple") == GRID  # no extension, no extra run
    rows = collect(out)["datasets"][DATASET]["rows"]
    assert rows["mmoe"]["seeds_ok"] == [0] and rows["ple"]["seeds_ok"] == [0]


def test_extensions_are_bounded_then_the_row_fails_with_one_line(tmp_path, monkeypatch):
    fake = FakeTrain({"mmoe": 10.0, "ple": 0.004})  # mmoe's optimum is far above any reachable rate
    outcome, text, out = _run(tmp_path, monkeypatch, fake, models="mmoe,ple",
                              sets=["bench.lr_grid_extensions=1"])
    assert sorted(lr for f, lr, _ in fake.calls if f == "mmoe") == [0.001, 0.003, 0.01, 0.0333]
    failed = [line for line in text.splitlines() if line.startswith("FAILED: ")]
    assert failed and len(set(failed)) == 1  # one line, said at the decision and again at the end
    assert "row 'mmoe' on movielens-100k" in failed[0] and "0.0333" in failed[0] and "largest" in failed[0]
    assert sorted(outcome.failed) == [(DATASET, "mmoe", 0), (DATASET, "mmoe", 1)]  # exit code 1
    err = json.loads((out / "runs" / DATASET / "mmoe" / "seed1" / "error.json").read_text())
    assert err["type"] == "LrGridError" and "row 'mmoe'" in err["error"]
    assert json.loads((out / "lr-grid.json").read_text())["datasets"][DATASET]["mmoe"]["status"] == "failed"
    assert (out / "runs" / DATASET / "ple" / "seed1" / "metrics.json").exists()  # the other row goes on
    assert "FAILED: lr grid of row 'mmoe'" in (out / "results.md").read_text()
    # allowing one more extension finishes it, reusing every grid run already made
    fake2 = FakeTrain({"mmoe": 10.0, "ple": 0.004})
    outcome2, _, _ = _run(tmp_path, monkeypatch, fake2, models="mmoe,ple", sets=["bench.lr_grid_extensions=3"])
    assert [lr for f, lr, s in fake2.calls if s == 0] == [0.111, 0.37]
    assert outcome2.selections[(DATASET, "mmoe")].status == "failed"  # 10.0 is still far: fails again
    assert sum(1 for f, _, _ in fake2.calls if f == "mmoe") == 2


def test_cap_bound_rows_are_marked_in_the_table_and_the_report(tmp_path, monkeypatch):
    fake = FakeTrain({"mmoe": 0.003, "ple": 0.003}, epochs={"mmoe": (6, 6), "ple": (9, 5)})
    _, _, out = _run(tmp_path, monkeypatch, fake, models="mmoe,ple")
    res = collect(out)["datasets"][DATASET]
    assert res["rows"]["mmoe"]["cap_bound_seeds"] == [0, 1] and res["rows"]["ple"]["cap_bound_seeds"] == []
    assert res["convergence"] == {"cap_bound_rows": ["mmoe"], "cap_bound_runs": 2, "finished_runs": 4}
    md = (out / "results.md").read_text()
    assert "| mmoe † | 2/2 |" in md and "| ple | 2/2 |" in md
    assert "†: cap-bound" in md and "Convergence: 1 of 2 row(s) cap-bound (2 of 4 finished run(s)): `mmoe`." in md
    html = render_report(load_bench(out))
    assert "mmoe †" in html and "seed 0: 6/6 †" in html and "seed 1: 5/9," not in html
    assert "1 of 2 row(s) cap-bound (2 of 4 finished run(s))" in html
    assert "Learning-rate selection" in html and "0.0000 ✓" in html  # 0.003, the optimum, chosen


def test_benches_made_before_the_rules_aggregate_as_before(tmp_path, monkeypatch):
    """No `convergence` in bench.yaml: no marks, no new keys (committed results re-aggregate byte for byte)."""
    fake = FakeTrain({"mmoe": 0.003}, epochs={"mmoe": (6, 6)})
    _, _, out = _run(tmp_path, monkeypatch, fake, sets=["bench.lr_grid=[]"])
    spec = yaml.safe_load((out / "bench.yaml").read_text())
    del spec["convergence"]
    (out / "bench.yaml").write_text(yaml.safe_dump(spec))
    res = collect(out)
    assert "convergence" not in res and "cap_bound_seeds" not in res["datasets"][DATASET]["rows"]["mmoe"]
    assert "†" not in bench_runner.write_results(out)[0]["markdown"]
    assert "mmoe †" in render_report(load_bench(out))  # the report reads the run folders: it still says so


# --- the rules before any training ------------------------------------------------------------------------
def test_patience_below_three_is_refused_unless_allowed():
    with pytest.raises(PolyrecError, match=r"row 'mmoe' on movielens-100k: train.patience=2 .* >= 3"):
        build_experiment(datasets=DATASET, models="mmoe", seeds="1", overrides=["train.patience=2"])
    with pytest.raises(PolyrecError, match="train.patience=1"):
        build_experiment(datasets=DATASET, models="mmoe,ple[train.patience=1]", seeds="1")
    allowed = build_experiment(datasets=DATASET, models="mmoe", seeds="1",
                               overrides=["train.patience=2", "bench.allow_short_patience=true"])
    assert allowed.config_for(DATASET, allowed.rows[0], 0).train.patience == 2
    never = build_experiment(datasets=DATASET, models="mmoe", seeds="1", overrides=["train.patience=0"])
    assert never.config_for(DATASET, never.rows[0], 0).train.patience == 0  # never stops early: accepted
    default = build_experiment(datasets=DATASET, models="mmoe", seeds="1")
    assert default.config_for(DATASET, default.rows[0], 0).train.patience == MIN_PATIENCE


def test_lr_grid_settings_and_their_errors(tmp_path):
    assert parse_lr_grid(["1e-3", 0.01, "3e-3"], "x") == GRID  # YAML reads 1e-3 as text; sorted
    assert parse_lr_grid("0.001,0.01", "x") == [0.001, 0.01] and parse_lr_grid([], "x") == []
    for bad, match in (([0.001], "one rate"), ([0.001, 0.001], "repeats"), ([0.001, -1], "not a positive"),
                       ([0.001, "fast"], "not a positive"), (0.001, "must be a list")):
        with pytest.raises(PolyrecError, match=match):
            parse_lr_grid(bad, "lr_grid")
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump({
        "datasets": [DATASET], "seeds": 3, "lr_grid": GRID, "lr_selection_seeds": 2,
        "rows": ["mmoe", {"label": "star", "model": "star", "lr_grid": ["1e-4", "1e-3"]},
                 {"label": "fixed", "model": "ple", "lr_grid": [], "set": {"train.lr": 0.002}}]}))
    exp = build_experiment(tmp_path / "exp.yaml")
    assert [exp.grid_for(r) for r in exp.rows] == [GRID, [0.0001, 0.001], []]
    assert exp.selection_seeds == [0, 1] and exp.to_dict()["convergence"]["lr_selection_seeds"] == [0, 1]
    assert exp.config_for(DATASET, exp.rows[2], 0).train.lr == 0.002
    for spec, match in (
        ({"lr_grid": GRID, "rows": [{"label": "m", "model": "mmoe", "set": {"train.lr": 0.1}}]},
         "sets train.lr=0.1 and has the lr grid"),
        ({"lr_grid": GRID, "lr_selection_seeds": 4, "rows": ["mmoe"]}, "lr_selection_seeds=4"),
        ({"lr_grid_extensions": -1, "rows": ["mmoe"]}, "lr_grid_extensions must be an integer >= 0"),
        ({"rows": ["mmoe"], "set": {"bench.lr_gird": GRID}}, "Did you mean 'lr_grid'"),
        ({"rows": ["mmoe[bench.lr_grid_extensions=3]"]}, "setting of the whole bench"),
        ({"rows": ["mmoe"], "dataset_set": {DATASET: {"bench.lr_grid": GRID}}}, "not of a dataset"),
    ):
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"datasets": [DATASET], "seeds": 3, **spec}))
        with pytest.raises(PolyrecError, match=match):
            build_experiment(tmp_path / "bad.yaml")


def test_cli_refuses_a_malformed_grid_in_one_line(tmp_path):
    root = str(Path(__file__).resolve().parents[1])  # this checkout's polyrec, whatever is installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "polyrec.cli", "bench", "--dataset", DATASET, "--models", "mmoe",
                           "--seeds", "1", "--set", "bench.lr_grid=[0.001]", "--out", str(tmp_path / "b")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "lr_grid" in lines[0] and "one rate" in lines[0]
    assert not (tmp_path / "b").exists()
