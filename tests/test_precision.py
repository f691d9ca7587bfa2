"""The accelerator path, checked on CPU: bf16 autocast (polyrec.train.device) and host-stored splits whose
batches are delivered on another device."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from polyrec.config import load_config
from polyrec.data.batching import TensorTable
from polyrec.data.encoders import EncodedSplit
from polyrec.runs import train_run
from polyrec.train import device as device_mod
from polyrec.train.device import split_storage
from polyrec.train.run import load_run


def _config(*extra: str):
    return load_config(None, [
        "data.dataset=tiny-synthetic", "model.name=mmoe", "model.embed_dim=4", "model.n_experts=2",
        "model.expert_dims=[16]", "model.tower_dims=[8]", "train.epochs=3", "train.batch_size=128",
        "train.progress=false", "train.tensorboard=false", "train.seed=1", "train.patience=0", *extra])


def test_bf16_runs_the_forward_in_bfloat16_and_keeps_float32_weights(tiny_recipe, tmp_path, monkeypatch):
    seen: list[torch.dtype] = []
    real = nn.Linear.forward

    def spy(self, x):
        out = real(self, x)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(nn.Linear, "forward", spy)
    bf16 = train_run(_config("train.precision=bf16"), tmp_path / "bf16", log=lambda s: None).metrics
    assert seen and set(seen) == {torch.bfloat16}  # every Linear, in training and scoring
    seen.clear()
    fp32 = train_run(_config(), tmp_path / "fp32", log=lambda s: None).metrics
    assert set(seen) == {torch.float32}
    run = load_run(tmp_path / "bf16")
    assert all(p.dtype == torch.float32 for p in run.model.parameters())
    for head in ("click", "like"):
        a, b = bf16["test"]["heads"][head]["auc"], fp32["test"]["heads"][head]["auc"]
        assert math.isfinite(a) and abs(a - b) < 0.05, (head, a, b)  # the same model, rounded differently
    assert bf16["test"] != fp32["test"]  # bf16 really changed the arithmetic


def test_split_storage_keeps_splits_on_the_accelerator_only_when_they_fit(monkeypatch):
    assert split_storage("cpu", "auto", 10**12) == ("cpu", False)
    monkeypatch.setattr(device_mod.torch.cuda, "mem_get_info", lambda device=None: (1000, 4000))
    assert split_storage("cuda", "auto", 500) == ("cuda", False)  # half of the free memory: fits
    assert split_storage("cuda", "auto", 501) == ("cpu", True)  # pinned host memory
    assert split_storage("cuda", True, 10**9) == ("cuda", False)
    assert split_storage("cuda", False, 1) == ("cpu", True)


def test_a_host_stored_split_delivers_its_batches_on_the_model_device():
    n = 10
    split = EncodedSplit(categorical=np.arange(n, dtype=np.int32).reshape(n, 1), numeric=np.zeros((n, 2), np.float32),
                         sequences={"s": np.zeros((n, 3), np.int32)}, scenario=np.zeros(n, np.int32),
                         labels=np.ones((n, 1), np.float32), user=None)
    table = TensorTable(split, "cpu", deliver_to="meta")  # "meta": a device without data, as good as a GPU here
    assert table.categorical.device.type == "cpu"
    gen = torch.Generator().manual_seed(0)
    for batch, labels in table.batches(4, shuffle=True, generator=gen):
        assert {batch.categorical.device.type, batch.numeric.device.type, batch.sequences["s"].device.type,
                batch.scenario.device.type, labels.device.type} == {"meta"}
    batch, _ = table.take(slice(0, 3))
    assert batch.categorical.device.type == "meta" and len(batch) == 3
    assert TensorTable(split).deliver_to is None  # stored where it is used: no copy per batch
