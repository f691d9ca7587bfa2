"""Multi-process training under torchrun (polyrec.train.distributed): 2 CPU processes with gloo.

The K-process run deals each global batch of the shared epoch permutation to the processes, so with
train.oov_dropout=0 (its masks are drawn per share) it takes the one-process run's steps up to float
summation order: the test metrics must agree to 1e-6, not merely "within noise"."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

TINY_CLI = Path(__file__).resolve().parent / "tiny_cli.py"
ARGS = ["--dataset", "tiny-synthetic", "--model", "mmoe", "--set", "model.embed_dim=4", "--set", "model.n_experts=2",
        "--set", "model.expert_dims=[16]", "--set", "model.tower_dims=[8]", "--set", "train.batch_size=128",
        "--set", "train.progress=false", "--set", "train.tensorboard=false", "--set", "train.threads=1",
        "--set", "train.patience=0", "--set", "train.oov_dropout=0"]


def _cli(data: Path, *args: str, processes: int = 1) -> list[str]:
    if processes == 1:
        return [sys.executable, str(TINY_CLI), str(data), *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            str(TINY_CLI), str(data), *args]


def _train(data: Path, out: Path, *extra: str, processes: int = 1, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(_cli(data, "train", *ARGS, *extra, "--out", str(out), processes=processes),
                          capture_output=True, text=True, timeout=240, env={**os.environ, **(env or {})})


def _kill_processes_with(argument: str) -> None:
    """SIGKILL every process whose command line holds `argument`, and wait until they are gone."""
    def holders() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    args = (entry / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if argument.encode() in args:
                    found.append(int(entry.name))
        return found

    for pid in holders():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    while holders() and time.monotonic() < deadline:  # zombies of torchrun's children are reaped by init
        time.sleep(0.05)


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_a_share_of_each_global_batch_partitions_it():
    from polyrec.data.batching import TensorTable
    from polyrec.data.encoders import EncodedSplit

    n = 23
    split = EncodedSplit(categorical=torch.arange(n).reshape(n, 1).numpy(), numeric=torch.zeros(n, 0).numpy(),
                         sequences={}, scenario=torch.zeros(n, dtype=torch.long).numpy(),
                         labels=torch.zeros(n, 1).numpy(), user=None)
    table = TensorTable(split)

    def rows(share):
        gen = torch.Generator().manual_seed(5)
        return [b.categorical[:, 0].tolist() for b, _ in table.batches(8, shuffle=True, generator=gen, share=share)]

    whole = rows(None)
    parts = [rows((k, 3)) for k in range(3)]
    assert [len(p) for p in parts] == [3, 3, 3]  # the last global batch has 7 rows >= 3 processes: kept
    for b, batch in enumerate(whole):
        got = [r for p in parts for r in p[b]]
        assert sorted(got) == sorted(batch) and len(got) == len(batch)  # disjoint and complete
        assert parts[0][b] == batch[0::3]  # round-robin over the global batch
    assert len(rows((0, 8))) == 2  # 23 rows, batches of 8: the last (7 rows) is fewer than 8 processes: skipped


def test_two_processes_take_the_one_process_steps_and_repeat_exactly(tiny_data, tmp_path):
    one = _train(tiny_data, tmp_path / "one", "--epochs", "3")
    assert one.returncode == 0, one.stdout + one.stderr
    runs = []
    for name in ("two-a", "two-b"):
        done = _train(tiny_data, tmp_path / name, "--epochs", "3", processes=2)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.count("saved:") == 1  # process 0 speaks for the run
        runs.append(_metrics(tmp_path / name))
    a, b = runs
    assert a["processes"] == 2 and _metrics(tmp_path / "one")["processes"] == 1
    assert (tmp_path / "two-a" / "model.safetensors").read_bytes() == (tmp_path / "two-b" / "model.safetensors").read_bytes()
    assert a["test"] == b["test"]
    single = _metrics(tmp_path / "one")
    for split in ("val", "test"):
        for head, m in single[split]["heads"].items():  # AUC to a few tied pairs (see tests/test_chunked.py)
            assert abs(a[split]["heads"][head]["auc"] - m["auc"]) < 1e-4, (split, head)
            assert abs(a[split]["heads"][head]["logloss"] - m["logloss"]) < 1e-6, (split, head)


def test_a_two_process_run_killed_mid_way_resumes_bit_identical(tiny_data, tmp_path):
    extra = ["--epochs", "5", "--set", "model.dropout=0.3", "--set", "train.oov_dropout=0.1"]  # RNG in every step
    full = _train(tiny_data, tmp_path / "full", *extra, processes=2)
    assert full.returncode == 0, full.stdout + full.stderr
    cut = tmp_path / "cut"
    proc = subprocess.Popen(_cli(tiny_data, "train", *ARGS, *extra, "--out", str(cut), processes=2),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "TINY_CLI_HOLD_UNTIL": str(tmp_path / "never"),
                                 "TINY_CLI_HOLD_EPOCH": "3"})  # both processes wait before epoch 3: killed there
    try:
        deadline = time.monotonic() + 120
        log = cut / "metrics.jsonl"
        while not log.exists() or len(log.read_text().splitlines()) < 2:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
    finally:  # torchrun starts each process in its own session: kill every process of this run
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        _kill_processes_with(str(cut))
    assert not (cut / "metrics.json").exists()
    wrong = subprocess.run(_cli(tiny_data, "train", "--resume", "--out", str(cut)), capture_output=True, text=True,
                           timeout=120)
    assert wrong.returncode == 2 and "written by 2 training process(es)" in wrong.stderr, wrong.stderr
    resumed = subprocess.run(_cli(tiny_data, "train", "--resume", "--out", str(cut), processes=2),
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed from epoch 2" in resumed.stdout
    assert (cut / "model.safetensors").read_bytes() == (tmp_path / "full" / "model.safetensors").read_bytes()
    assert _metrics(cut)["test"] == _metrics(tmp_path / "full")["test"]


@pytest.mark.parametrize("what, extra, message", [
    ("a gradient balancer", ["--balance", "pcgrad"], "computes per-task gradients"),
    ("a top-K run", ["--topk"], "multi-process training (torchrun) is for CTR-style runs"),
])
def test_what_multi_process_training_cannot_do_fails_before_any_work(what, extra, message, tiny_data, tmp_path,
                                                                      monkeypatch):
    from helpers import run_cli

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    out = tmp_path / "run"
    code, _, err = run_cli("train", *ARGS, *extra, "--out", str(out))
    assert code == 2 and message in " ".join(err.split()), err
    assert not out.exists()


def test_torchrun_without_out_is_one_clear_error(tiny_data, monkeypatch):
    from helpers import run_cli

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    code, _, err = run_cli("train", *ARGS)
    assert code == 2 and "needs --out" in err


def test_sparse_embedding_gradients_are_averaged_like_dense_ones(tiny_data, tmp_path):
    """Large vocabularies get sparse embedding gradients (train.sparse_embeddings=auto); DDP must be built knowing
    which tables are sparse, or its dense buckets cannot take their gradients."""
    sparse = ("--set", "train.sparse_embeddings=true")
    one = _train(tiny_data, tmp_path / "one", "--epochs", "2", *sparse)
    two = _train(tiny_data, tmp_path / "two", "--epochs", "2", *sparse, processes=2)
    assert one.returncode == 0, one.stdout + one.stderr
    assert two.returncode == 0, two.stdout + two.stderr
    single, multi = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    for head, m in single["test"]["heads"].items():
        assert abs(multi["test"]["heads"][head]["auc"] - m["auc"]) < 1e-6, head
        assert abs(multi["test"]["heads"][head]["logloss"] - m["logloss"]) < 1e-6, head
