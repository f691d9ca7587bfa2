"""Trainer: early stopping restores the best weights, atomic checkpoint writes, exact resume."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from helpers import nan_equal, quiet
from polyrec.config import load_config
from polyrec.train import trainer as trainer_mod
from polyrec.train.checkpoint import load_checkpoint, load_weights, save_checkpoint
from polyrec.runs import train_run
from polyrec.train.run import load_run
from polyrec.train.trainer import CHECKPOINT, WEIGHTS, Trainer, evaluate_table


def tiny_config(*extra: str):
    return load_config(None, [
        "data.dataset=tiny-synthetic", "model.name=mmoe", "model.embed_dim=4", "model.n_experts=2",
        "model.expert_dims=[16]", "model.tower_dims=[8]", "model.dropout=0.2",  # dropout: the RNG matters
        "train.epochs=3", "train.batch_size=128", "train.eval_batch_size=512", "train.progress=false",
        "train.seed=1", "train.patience=0", "train.log_every=5", *extra])


def _leftover_temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp")


def script_validation(monkeypatch, scripted: list[float]) -> dict[int, dict[str, torch.Tensor]]:
    """Make the trainer's validation after epoch e report scripted[e - 1] as overall/mean_auc.

    Returns {epoch: the model's weights when that epoch was validated}. Validation calls made
    before the first epoch (e.g. a check that the monitor names a metric) get a neutral value.
    """
    trained = {"epoch": 0}
    seen: dict[int, dict[str, torch.Tensor]] = {}
    real_epoch = Trainer._train_epoch

    def epoch_then_mark(self, table, epoch, step, progress):
        out = real_epoch(self, table, epoch, step, progress)
        trained["epoch"] = epoch
        return out

    def fake_validation(model, table, batch_size, scenario_names, precision="fp32"):
        e = trained["epoch"]
        if e == 0:
            return {"heads": {}, "cells": {}, "overall": {"mean_auc": 0.5}}
        assert e not in seen, "validated twice after the same epoch"
        seen[e] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return {"heads": {}, "cells": {}, "overall": {"mean_auc": scripted[e - 1]}}

    monkeypatch.setattr(Trainer, "_train_epoch", epoch_then_mark)
    monkeypatch.setattr(trainer_mod, "evaluate_table", fake_validation)
    return seen


def test_early_stopping_restores_and_saves_the_best_epoch(tiny_recipe, tmp_path, monkeypatch):
    # best at epoch 2; patience 2 stops after epoch 4
    seen = script_validation(monkeypatch, [0.60, 0.80, 0.70, 0.65, 0.99])
    run = tmp_path / "run"
    res = train_run(tiny_config("train.epochs=5", "train.patience=2"), run, log=quiet)
    m = res.metrics
    assert (m["best_epoch"], m["epochs_run"], m["stopped_early"]) == (2, 4, True)
    assert m["best_val_monitor"] == pytest.approx(0.80)
    assert sorted(seen) == [1, 2, 3, 4]
    saved = load_weights(run / WEIGHTS)
    assert saved.keys() == seen[2].keys()
    for k in saved:
        torch.testing.assert_close(saved[k], seen[2][k], atol=0, rtol=0)
    # the weights did move after epoch 2, so saving the last epoch would have been caught
    assert any(not torch.equal(seen[2][k], seen[4][k]) for k in saved)
    # the run's reported test metrics are those of the best weights
    loaded = load_run(run)
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, seen[2][k])
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["improved"] for h in history] == [True, True, False, False]
    assert history[-1]["stopped_early"] is True


def test_patience_zero_never_stops_early(tiny_recipe, tmp_path, monkeypatch):
    script_validation(monkeypatch, [0.9, 0.5, 0.4, 0.3])
    m = train_run(tiny_config("train.epochs=4", "train.patience=0"), tmp_path / "run", log=quiet).metrics
    assert (m["epochs_run"], m["best_epoch"], m["stopped_early"]) == (4, 1, False)


def test_run_folder_complete_and_no_temp_files_left(tiny_recipe, tmp_path):
    run = tmp_path / "run"
    res = train_run(tiny_config("train.epochs=2"), run, log=quiet)
    for name in ("config.yaml", "encoders.json", "spec.json", "metrics.jsonl", "steps.jsonl", "metrics.json",
                 WEIGHTS, CHECKPOINT):
        assert (run / name).is_file(), name
    assert _leftover_temp_files(run) == []
    ckpt = load_checkpoint(run / CHECKPOINT)
    assert ckpt["epoch"] == 2 and ckpt["best_epoch"] == res.metrics["best_epoch"]
    # the run learned something: synthetic click depends on user, item and x
    assert res.metrics["test"]["heads"]["click"]["auc"] > 0.6


def test_checkpoint_write_is_atomic_when_the_writer_fails(tmp_path, monkeypatch):
    path = tmp_path / CHECKPOINT
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
    original = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == original
    assert load_checkpoint(path)["epoch"] == 1
    assert _leftover_temp_files(tmp_path) == []


def test_resume_after_interruption_equals_uninterrupted_run(tiny_recipe, tmp_path, monkeypatch):
    cfg = tiny_config("train.epochs=3")
    full = train_run(cfg, tmp_path / "full", log=quiet)

    # interrupt a second, identical run in the middle of epoch 2 (after 3 optimiser steps)
    real_epoch = Trainer._train_epoch
    epochs_trained: list[int] = []

    def interrupting_epoch(self, table, epoch, step, progress):
        epochs_trained.append(epoch)
        if epoch == 2:
            real_step, calls = self.optimizer.step, []

            def step_then_interrupt(*a, **k):
                calls.append(1)
                if len(calls) > 3:
                    raise KeyboardInterrupt
                return real_step(*a, **k)

            self.optimizer.step = step_then_interrupt
        return real_epoch(self, table, epoch, step, progress)

    monkeypatch.setattr(Trainer, "_train_epoch", interrupting_epoch)
    run = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, run, log=quiet)
    assert load_checkpoint(run / CHECKPOINT)["epoch"] == 1
    assert not (run / "metrics.json").exists()

    epochs_trained.clear()
    logs: list[str] = []

    def counting_epoch(self, table, epoch, step, progress):
        epochs_trained.append(epoch)
        return real_epoch(self, table, epoch, step, progress)

    monkeypatch.setattr(Trainer, "_train_epoch", counting_epoch)
    resumed = train_run(cfg, run, resume=True, log=logs.append)
    assert epochs_trained == [2, 3]  # it continued from the checkpoint instead of starting over
    assert any("resumed from epoch 1" in line for line in logs)

    assert nan_equal(resumed.metrics["test"], full.metrics["test"])
    assert nan_equal(resumed.metrics["val"], full.metrics["val"])
    assert resumed.metrics["best_epoch"] == full.metrics["best_epoch"]
    assert [h["val"] for h in resumed.history] == [h["val"] for h in full.history]
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]
    a, b = load_weights(tmp_path / "full" / WEIGHTS), load_weights(run / WEIGHTS)
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps_full = (tmp_path / "full" / "steps.jsonl").read_text()
    assert steps_full and steps_full == (run / "steps.jsonl").read_text()


def test_resume_refuses_a_different_config(tiny_recipe, tmp_path):
    from polyrec.errors import PolyrecError

    run = tmp_path / "run"
    train_run(tiny_config("train.epochs=1"), run, log=quiet)
    with pytest.raises(PolyrecError, match="already holds a run"):
        train_run(tiny_config("train.epochs=1"), run, log=quiet)
    with pytest.raises(PolyrecError, match="differs"):
        train_run(tiny_config("train.epochs=2"), run, resume=True, log=quiet)


def test_evaluate_table_is_independent_of_eval_batch_size(tiny_recipe, tmp_path):
    from polyrec.data.batching import TensorTable
    from polyrec.data.prepare import prepare

    cfg = tiny_config("train.epochs=1")
    train_run(cfg, tmp_path / "run", log=quiet)
    run = load_run(tmp_path / "run")
    data = prepare(cfg.data, seed=cfg.train.seed, log=quiet)
    table = TensorTable(data.splits["test"])
    big = evaluate_table(run.model, table, 100_000, run.spec.scenario_names)
    small = evaluate_table(run.model, table, 7, run.spec.scenario_names)
    for head, m in big["heads"].items():
        assert small["heads"][head]["auc"] == pytest.approx(m["auc"], abs=1e-9)
        assert small["heads"][head]["n"] == m["n"]


def test_resuming_a_finished_run_trains_nothing_and_keeps_its_results(tiny_recipe, tmp_path, monkeypatch):
    cfg = tiny_config("train.epochs=2")
    first = train_run(cfg, tmp_path / "run", log=quiet)
    trained_epochs: list[int] = []
    real_epoch = Trainer._train_epoch
    monkeypatch.setattr(Trainer, "_train_epoch",
                        lambda self, *a: trained_epochs.append(a[1]) or real_epoch(self, *a))
    again = train_run(cfg, tmp_path / "run", resume=True, log=quiet)
    assert trained_epochs == []
    assert nan_equal(again.metrics["test"], first.metrics["test"])
    assert again.metrics["best_epoch"] == first.metrics["best_epoch"]


def test_caches_and_runs_stay_out_of_the_home_directory(tiny_recipe, tmp_path):
    from pathlib import Path as _P

    from polyrec.data.prepare import prepare
    from polyrec.settings import cache_dir

    data = prepare(tiny_config().data, seed=1, log=quiet)
    assert data.entry.parent == cache_dir()
    assert not str(cache_dir()).startswith(str(_P.home() / ".cache"))


def test_adamw_without_weight_decay_warns_that_it_is_adam():
    from polyrec.config import TrainConfig
    from polyrec.train.optim import build_optimizer
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 1))
    with pytest.warns(UserWarning, match="exactly Adam"):
        build_optimizer(model, TrainConfig(optimizer="adamw"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = build_optimizer(model, TrainConfig(optimizer="adamw", weight_decay=0.01))
    assert isinstance(opt, torch.optim.AdamW) and {g["weight_decay"] for g in opt.param_groups} == {0.01, 0.0}


def test_oov_dropout_replaces_ids_but_not_padding_or_excluded_columns():
    from polyrec.data.batching import Batch
    from polyrec.train.trainer import OOV_ID, oov_dropout

    ids = torch.randint(2, 50, (20000, 3), dtype=torch.int32)
    ids[:100, 0] = 0  # padding
    batch = Batch(ids, torch.zeros(20000, 0), {}, torch.zeros(20000, dtype=torch.int64))
    out = oov_dropout(batch, 0.1, torch.Generator().manual_seed(0), torch.tensor([True, True, False]))
    replaced = (out.categorical != ids)
    assert (out.categorical[replaced] == OOV_ID).all()
    assert abs(replaced[:, :2].float().mean().item() - 0.1) < 0.01 and not replaced[:, 2].any()
    assert (out.categorical[:100, 0] == 0).all()
    again = oov_dropout(batch, 0.1, torch.Generator().manual_seed(0), torch.tensor([True, True, False]))
    assert torch.equal(again.categorical, out.categorical)  # seeded: a resumed epoch draws the same


def test_oov_dropout_trains_the_oov_rows(tiny_recipe, tmp_path):
    from polyrec.train.checkpoint import load_weights

    def oov_row(run: str, *extra: str) -> torch.Tensor:
        train_run(tiny_config("train.epochs=1", *extra), tmp_path / run, log=quiet)
        w = load_weights(tmp_path / run / WEIGHTS)
        return w["embedding.embedding.table.weight"][1]  # field 0 (user_id): row 0 padding, row 1 OOV

    untouched, trained = oov_row("plain", "train.oov_dropout=0"), oov_row("dropout", "train.oov_dropout=0.1")
    torch.manual_seed(1)  # the initialisation both runs started from
    from polyrec.models import build_model
    from polyrec.data.prepare import prepare

    data = prepare(tiny_config().data, seed=1, log=quiet)
    init = build_model("mmoe", data.model_spec(), 4, {"n_experts": 2, "expert_dims": [16], "tower_dims": [8],
                                                       "dropout": 0.2}).embedding.embedding.table.weight[1]
    assert torch.equal(untouched, init.detach())  # min_freq 1 and no dropout: the OOV row never moves
    assert not torch.allclose(trained, init.detach())
