"""TensorBoard tracking: a run writes the expected tags; train.tensorboard=false or a missing package writes none."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import quiet
from polyrec.config import load_config
from polyrec.train import tracking
from polyrec.runs import train_run
from polyrec.train.tracking import TB_DIR, chain_callbacks


def tiny_config(*extra: str):
    return load_config(None, [
        "data.dataset=tiny-synthetic", "model.name=mmoe", "model.embed_dim=4", "model.n_experts=2",
        "model.expert_dims=[16]", "model.tower_dims=[8]", "train.epochs=2", "train.batch_size=256",
        "train.eval_batch_size=1024", "train.progress=false", "train.seed=1", "train.patience=0",
        "train.log_every=3", *extra])


def read_events(run_dir: Path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / TB_DIR), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_run_writes_epoch_step_and_config_tags(tiny_recipe, tmp_path):
    pytest.importorskip("tensorboard")
    seen = []
    res = train_run(tiny_config(), tmp_path / "run", log=quiet, epoch_callback=lambda r, s: seen.append(r["epoch"]))
    assert seen == [1, 2]  # a user callback still runs, chained after the tracker
    assert list((tmp_path / "run" / TB_DIR).glob("events.out.tfevents.*"))
    acc = read_events(tmp_path / "run")
    scalars = set(acc.Tags()["scalars"])
    flat = res.history[0]["val"]
    expected_val = {f"val/{k}" for k in flat if not k.endswith(("/n", "/positives"))}
    assert expected_val and expected_val <= scalars
    assert not {t for t in scalars if t.endswith(("/n", "/positives"))}  # counts are skipped
    for tag in ("val/monitor", "best/val_monitor", "train/loss/click", "train/loss/like", "train/loss/total",
                "train/samples_per_s", "step/loss/click", "step/loss/like", "step/weight/click", "step/weight/like"):
        assert tag in scalars, tag
    monitor = acc.Scalars("val/monitor")
    assert [e.step for e in monitor] == [1, 2]
    assert [e.value for e in monitor] == pytest.approx([h["monitor_value"] for h in res.history], rel=1e-6)
    best = max(h["monitor_value"] for h in res.history)
    assert acc.Scalars("best/val_monitor")[-1].value == pytest.approx(best, rel=1e-6)
    steps = [line for line in (tmp_path / "run" / "steps.jsonl").read_text().splitlines() if line]
    assert len(acc.Scalars("step/loss/click")) == len(steps) > 0
    assert "config/text_summary" in acc.Tags()["tensors"]
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "n_experts: 2" in text and "tensorboard: true" in text
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")


def test_tensorboard_false_writes_no_events(tiny_recipe, tmp_path):
    train_run(tiny_config("train.epochs=1", "train.tensorboard=false"), tmp_path / "run", log=quiet)
    assert (tmp_path / "run" / "metrics.json").exists()
    assert not (tmp_path / "run" / TB_DIR).exists()


def test_missing_package_warns_once_and_training_goes_on(tiny_recipe, tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "_summary_writer_class", lambda: None)
    monkeypatch.setattr(tracking, "_warned", False)
    logs: list[str] = []
    train_run(tiny_config("train.epochs=1"), tmp_path / "a", log=logs.append)
    train_run(tiny_config("train.epochs=1"), tmp_path / "b", log=logs.append)
    warnings = [line for line in logs if "tensorboard" in line.lower()]
    assert warnings == [tracking.MISSING_WARNING]  # one line, once per process
    assert "pip install 'polyrec[track]'" in warnings[0]
    assert (tmp_path / "a" / "metrics.json").exists() and not (tmp_path / "a" / TB_DIR).exists()


def test_chain_callbacks_order_and_none():
    calls = []
    assert chain_callbacks(None, None) is None
    single = lambda r, s: calls.append("a")  # noqa: E731
    assert chain_callbacks(None, single) is single
    chain_callbacks(single, None, lambda r, s: calls.append("b"))({}, [])
    assert calls == ["a", "b"]
