"""Hyper-parameter tuning: a resumable SQLite study, best.yaml for `polyrec train`, validation-only objective,
pruning, failed trials, and the search spaces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import make_batch, make_spec
from polyrec.cli import app
from polyrec.config import load_config
from polyrec.errors import PolyrecError
from polyrec.models import MODELS, build_model
from polyrec.tune import BEST, STUDY_DB, TRIALS, search_space, tune
from polyrec.tune.search import Width, apply_overrides, sample, scaled_dims

optuna = pytest.importorskip("optuna")
runner = CliRunner()

ML_ARGS = ["--dataset", "movielens-100k", "--model", "mmoe", "--set", "train.epochs=1",
           "--set", "train.batch_size=8192", "--set", "train.threads=2", "--set", "model.expert_dims=[16]",
           "--set", "train.progress=false", "--set", "train.tensorboard=false",
           "--set", "data.ratios=[0.2,0.1,0.7]"]  # a small train split keeps the test quick; test is never read


def _states(study_dir: Path) -> list[str]:
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{study_dir / STUDY_DB}")
    return [t.state.name for t in study.trials]


class PoisonSplit:
    """Stands in for the test split: any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"a tuning trial read the test split ({name})")

    def __len__(self):
        raise AssertionError("a tuning trial read the test split (len)")


@pytest.mark.slow
def test_tune_movielens_writes_study_and_best_yaml_and_resumes(ml100k_files, tmp_path, monkeypatch):
    import polyrec.train.run as run_mod

    real_prepare = run_mod.prepare

    def prepare_without_test(*args, **kwargs):
        data = real_prepare(*args, **kwargs)
        data.splits = {**data.splits, "test": PoisonSplit()}
        return data

    monkeypatch.setattr(run_mod, "prepare", prepare_without_test)
    study_dir = tmp_path / "study"
    result = runner.invoke(app, ["tune", *ML_ARGS, "--trials", "3", "--study-dir", str(study_dir)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert (study_dir / STUDY_DB).is_file() and (study_dir / BEST).is_file()
    assert _states(study_dir) == ["COMPLETE"] * 3
    assert "best: trial" in result.output and "val overall/mean_auc" in result.output

    study = optuna.load_study(study_name="movielens-100k-mmoe", storage=f"sqlite:///{study_dir / STUDY_DB}")
    for t in study.trials:
        run = study_dir / TRIALS / str(t.number)
        metrics = json.loads((run / "metrics.json").read_text())
        assert "test" not in metrics  # trials never score the test split
        epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert t.value == pytest.approx(max(e["monitor_value"] for e in epochs), abs=0)
        assert t.value == pytest.approx(metrics["best_val_monitor"], abs=0)
        assert t.value == pytest.approx(metrics["val"]["overall"]["mean_auc"], abs=1e-12)

    best = study.best_trial
    cfg = load_config(study_dir / BEST)
    assert cfg.model.name == "mmoe" and cfg.data.dataset == "movielens-100k"
    assert cfg.train.lr == best.params["train.lr"]
    assert cfg.model.embed_dim == best.params["model.embed_dim"]
    assert cfg.model.params()["dropout"] == best.params["model.dropout"]
    assert cfg.model.params()["n_experts"] == best.params["model.n_experts"]
    assert cfg.model.params()["expert_dims"] == [16]  # pinned by --set, not searched
    assert "model.expert_dims.width" not in best.params
    assert cfg.train.weight_decay == (best.params["train.weight_decay"] if best.params["train.weight_decay>0"]
                                      else 0.0)
    assert cfg.train.epochs == 1 and cfg.train.batch_size == 8192
    # `polyrec train --config best.yaml` accepts it: the exact config the best trial trained
    assert cfg == load_config(study_dir / TRIALS / str(best.number) / "config.yaml")

    again = runner.invoke(app, ["tune", *ML_ARGS, "--trials", "4", "--study-dir", str(study_dir)])
    assert again.exit_code == 0, again.output + repr(again.exception)
    assert _states(study_dir) == ["COMPLETE"] * 4  # exactly one more trial
    assert sorted(p.name for p in (study_dir / TRIALS).iterdir()) == ["0", "1", "2", "3"]


# --- fast tests with a stand-in for train_run ------------------------------------------------------
def fake_trainer(values_by_trial: dict[int, list[float]] | None = None, calls: list | None = None,
                 fail: set[int] = frozenset()):
    """A train_run stand-in: trial n reports values_by_trial[n][e - 1] after epoch e (default 0.5 + lr)."""

    def train_fn(cfg, run_dir, log, download, epoch_callback, evaluate_test):
        assert evaluate_test is False
        n = int(Path(run_dir).name)
        if n in fail:
            raise PolyrecError(f"invalid combination in trial {n}")
        for e in range(1, cfg.train.epochs + 1):
            v = values_by_trial[n][e - 1] if values_by_trial else 0.5 + cfg.train.lr
            if calls is not None:
                calls.append((n, e))
            epoch_callback({"epoch": e, "monitor_value": v, "stopped_early": False, "val": {}}, [])

    return train_fn


def base_cfg(*extra: str):
    return load_config(None, ["data.dataset=movielens-100k", "model.name=mmoe", "train.epochs=3", *extra])


def test_pruner_stops_bad_trials_early_and_they_count(tmp_path):
    values = {0: [0.7, 0.8, 0.9], 1: [0.7, 0.8, 0.9], 2: [0.1, 0.2, 0.3], 3: [0.75, 0.85, 0.95], 4: [0.1, 0.1, 0.1]}
    calls: list = []
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    res = tune(base_cfg(), 5, tmp_path / "s", log=lambda m: None, pruner=pruner,
               train_fn=fake_trainer(values, calls))
    assert [t.state for t in res.trials] == ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE", "PRUNED"]
    assert [e for n, e in calls if n == 2] == [1]  # stopped after its first epoch
    assert res.ran == 5 and res.best.number == 3 and res.best.value == 0.95
    assert res.trials[2].value == 0.1  # a pruned trial keeps its last reported value


def test_never_pruned_on_the_last_epoch(tmp_path):
    values = {0: [0.8], 1: [0.8], 2: [0.1]}
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    res = tune(base_cfg("train.epochs=1"), 3, tmp_path / "s", log=lambda m: None, pruner=pruner,
               train_fn=fake_trainer(values))
    assert [t.state for t in res.trials] == ["COMPLETE"] * 3


def test_objective_is_the_best_epoch_and_direction_follows_the_monitor(tmp_path):
    values = {0: [0.50, 0.40, 0.45], 1: [0.60, 0.30, 0.35]}
    res = tune(base_cfg("train.monitor=click/logloss"), 2, tmp_path / "s", log=lambda m: None,
               train_fn=fake_trainer(values))
    assert res.direction == "minimize"
    assert [t.value for t in res.trials] == [0.40, 0.30]
    assert [t.best_epoch for t in res.trials] == [2, 2]
    assert res.best.number == 1


def test_failed_trials_are_recorded_and_the_study_goes_on(tmp_path):
    logs: list[str] = []
    res = tune(base_cfg(), 3, tmp_path / "s", log=logs.append, train_fn=fake_trainer(fail={1}))
    assert [t.state for t in res.trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert "invalid combination in trial 1" in res.trials[1].error
    assert any("trial 1: failed" in line for line in logs)
    # a study where every trial fails gives up instead of looping
    res = tune(base_cfg(), 3, tmp_path / "t", log=lambda m: None, train_fn=fake_trainer(fail=set(range(99))))
    assert res.best is None and res.stopped and res.ran == 3
    assert not (tmp_path / "t" / BEST).exists()


def test_resume_runs_the_missing_trials_with_the_uninterrupted_params(tmp_path):
    full = tune(base_cfg(), 4, tmp_path / "full", log=lambda m: None, train_fn=fake_trainer())
    part = tune(base_cfg(), 2, tmp_path / "part", log=lambda m: None, train_fn=fake_trainer())
    assert part.ran == 2
    rest = tune(base_cfg(), 4, tmp_path / "part", log=lambda m: None, train_fn=fake_trainer())
    assert rest.ran == 2
    assert [t.overrides for t in rest.trials] == [t.overrides for t in full.trials]
    assert len({json.dumps(t.overrides, sort_keys=True) for t in full.trials}) == 4  # no repeated draws
    done = tune(base_cfg(), 4, tmp_path / "part", log=lambda m: None, train_fn=fake_trainer())
    assert done.ran == 0 and done.best.number == full.best.number
    assert load_config(tmp_path / "part" / BEST) == load_config(tmp_path / "full" / BEST)


def test_resume_refuses_another_base_config(tmp_path):
    tune(base_cfg(), 1, tmp_path / "s", log=lambda m: None, train_fn=fake_trainer())
    with pytest.raises(PolyrecError, match="train.epochs: 3 -> 2"):
        tune(base_cfg("train.epochs=2"), 2, tmp_path / "s", log=lambda m: None, train_fn=fake_trainer())
    with pytest.raises(PolyrecError, match="--set keys"):
        tune(base_cfg(), 2, tmp_path / "s", fixed=["train.lr"], log=lambda m: None, train_fn=fake_trainer())
    other = load_config(None, ["data.dataset=movielens-100k", "model.name=ple", "train.epochs=3"])
    with pytest.raises(PolyrecError, match="its own --study-dir"):
        tune(other, 1, tmp_path / "s", log=lambda m: None, train_fn=fake_trainer())


def test_a_trial_left_running_by_a_killed_process_is_failed_on_resume(tmp_path):
    tune(base_cfg(), 1, tmp_path / "s", log=lambda m: None, train_fn=fake_trainer())
    study = optuna.load_study(study_name="movielens-100k-mmoe", storage=f"sqlite:///{tmp_path / 's' / STUDY_DB}")
    study.ask()  # trial 1 starts and its process dies: never told
    logs: list[str] = []
    res = tune(base_cfg(), 2, tmp_path / "s", log=logs.append, train_fn=fake_trainer())
    assert [t.state for t in res.trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert res.trials[1].error == "interrupted" and any("trial 1: left running" in m for m in logs)


def test_timeout_starts_no_new_trial(tmp_path):
    res = tune(base_cfg(), 3, tmp_path / "s", timeout=0, log=lambda m: None, train_fn=fake_trainer())
    assert res.ran == 0 and "timeout" in res.stopped and res.best is None


def test_cli_reports_a_user_error_for_an_unknown_model(tmp_path):
    result = runner.invoke(app, ["tune", "--model", "mmeo", "--trials", "1", "--study-dir", str(tmp_path / "s")])
    assert isinstance(result.exception, PolyrecError) and "mmoe" in str(result.exception)
    assert not (tmp_path / "s").exists()


# --- search spaces ----------------------------------------------------------------------------------
def test_every_model_has_a_valid_search_space():
    spec = make_spec()
    batch, _ = make_batch(spec, 16, seed=0)
    for name in MODELS:
        space = search_space(name)
        keys = {p.key for p in space}
        assert {"train.lr", "model.embed_dim", "model.dropout", "train.weight_decay"} <= keys, name
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        cfg = load_config(None, [f"model.name={name}"])
        for _ in range(3):  # sampled combinations build and run
            trial_cfg = apply_overrides(cfg, sample(space, study.ask(), cfg))
            model = build_model(name, spec, trial_cfg.model.embed_dim, trial_cfg.model.params())
            assert model(batch).shape == (16, len(model.heads)), name


def test_expert_models_search_expert_count_and_width():
    assert {p.key for p in search_space("mmoe")} >= {"model.n_experts", "model.expert_dims"}
    assert {p.key for p in search_space("ple")} >= {"model.n_shared_experts", "model.n_task_experts",
                                                     "model.expert_dims"}
    assert "model.n_experts" not in {p.key for p in search_space("sharedbottom")}
    assert "train.lr" not in {p.key for p in search_space("mmoe", fixed=["train.lr"])}


def test_widths_keep_the_shape_and_weight_decay_can_be_zero():
    assert scaled_dims([128, 64], 32) == [32, 16]
    assert scaled_dims([], 64) == [64]
    trial = optuna.trial.FixedTrial({"model.expert_dims.width": 64})
    assert Width("model.expert_dims", (32, 64)).sample(trial, [128, 64]) == [64, 32]
    cfg = base_cfg()
    space = search_space("mmoe")
    params = {"train.lr": 1e-3, "model.embed_dim": 8, "model.dropout": 0.1, "train.weight_decay>0": False,
              "model.n_experts": 3, "model.expert_dims.width": 32}
    overrides = sample(space, optuna.trial.FixedTrial(params), cfg)
    assert overrides["train.weight_decay"] == 0.0 and overrides["model.expert_dims"] == [32, 16]
