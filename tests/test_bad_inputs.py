"""Run and CLI bad inputs and faults: each case is one line on stderr, the documented exit code, no traceback,
and nothing half-written. The same table is docs/reliability.md (a test keeps the two identical:
`python tests/test_bad_inputs.py` prints it).

Plus the faults that need real processes: two trainings racing for one folder, kill -9 then --resume, and the
CLI's last line of defence (OSError -> one line, a bug -> traceback and "this is a bug")."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from helpers import run_cli

REPO = Path(__file__).resolve().parents[1]
TINY_CLI = Path(__file__).resolve().parent / "tiny_cli.py"
TINY = ["--dataset", "tiny-synthetic", "--set", "model.embed_dim=4", "--set", "model.n_experts=2",
        "--set", "model.expert_dims=[16]", "--set", "model.tower_dims=[8]", "--set", "train.batch_size=128",
        "--set", "train.progress=false", "--set", "train.tensorboard=false", "--epochs", "2"]


@dataclass(frozen=True)
class Case:
    name: str
    setup: str  # what the sandbox holds before the command (see _setup)
    args: tuple[str, ...]  # {tmp} is the sandbox, {run} a finished run copied into it, {pid} the lock holder
    expect: str  # substring of stderr (whitespace-normalised)
    code: int = 2
    before_data: bool = True  # fails before any data is prepared


CASES = [
    # --- run folders ---------------------------------------------------------------------------------------
    Case("--out is a file", "file", ("train", *TINY, "--out", "{tmp}/afile"), "is a file, not a folder"),
    Case("--out under a file", "file", ("train", *TINY, "--out", "{tmp}/afile/run"),
         "Cannot create the run folder"),
    Case("--out held by another process", "locked", ("train", *TINY, "--out", "{tmp}/held"),
         "is in use by pid {pid}"),
    Case("--out holds a finished run", "finished", ("train", *TINY, "--out", "{run}"), "already holds a run"),
    Case("--resume without a run", "none", ("train", "--resume", "--out", "{tmp}/nothing"), "Cannot resume"),
    Case("--resume without --out", "none", ("train", "--resume"), "--resume needs --out"),
    # --- config bounds and names, checked before data preparation ---------------------------------------------
    Case("lr = 0", "none", ("train", *TINY, "--set", "train.lr=0", "--out", "{tmp}/r"),
         "train.lr: Input should be greater than 0"),
    Case("threads = 0", "none", ("train", *TINY, "--set", "train.threads=0", "--out", "{tmp}/r"),
         "train.threads: Input should be greater than or equal to 1"),
    Case("device not a device", "none", ("train", *TINY, "--set", "train.device=gpu", "--out", "{tmp}/r"),
         "'gpu' is not a device"),
    Case("CUDA device on a CPU build", "no-cuda", ("train", *TINY, "--set", "train.device=cuda", "--out", "{tmp}/r"),
         "sees no CUDA GPU"),
    Case("negative expert count", "none", ("train", *TINY, "--set", "model.n_experts=-2", "--out", "{tmp}/r"),
         "n_experts=-2: counts and sizes must be >= 1"),
    Case("zero layer size", "none", ("train", *TINY, "--set", "model.expert_dims=[16,0]", "--out", "{tmp}/r"),
         "expert_dims=[16, 0]: counts and sizes must be >= 1"),
    Case("dropout >= 1", "none", ("train", *TINY, "--set", "model.dropout=1.5", "--out", "{tmp}/r"),
         "dropout: Input should be less than 1"),
    Case("split ratio 0", "none", ("train", *TINY, "--set", "data.ratios=[0.9,0.1,0]", "--out", "{tmp}/r"),
         "each > 0, summing to 1"),
    Case("unknown config key", "none", ("train", *TINY, "--set", "train.lrr=0.1", "--out", "{tmp}/r"),
         "Did you mean 'lr'"),
    Case("unknown section", "none", ("train", *TINY, "--set", "trian.lr=0.1", "--out", "{tmp}/r"),
         "Did you mean 'train'"),
    Case("--set without =", "none", ("train", *TINY, "--set", "train.lr", "--out", "{tmp}/r"),
         "--set expects key=value"),
    Case("unknown model", "none", ("train", *TINY, "--model", "mmeo", "--out", "{tmp}/r"), "Did you mean 'mmoe'"),
    Case("unknown model parameter", "none", ("train", *TINY, "--set", "model.n_expert=3", "--out", "{tmp}/r"),
         "Did you mean 'n_experts'"),
    Case("unknown balancer", "none", ("train", *TINY, "--balance", "uncertanty", "--out", "{tmp}/r"),
         "Did you mean 'uncertainty'"),
    Case("unknown dataset", "none", ("train", "--dataset", "tiny-synthetc", "--out", "{tmp}/r"),
         "Did you mean 'tiny-synthetic'"),
    Case("config file missing", "none", ("train", "--config", "{tmp}/none.yaml", "--out", "{tmp}/r"),
         "Config file not found"),
    Case("config file not YAML", "bad-yaml", ("train", "--config", "{tmp}/bad.yaml", "--out", "{tmp}/r"),
         "is not valid YAML"),
    Case("monitor names no metric", "none", ("train", *TINY, "--set", "train.monitor=click/aucc", "--out", "{tmp}/r"),
         "Did you mean 'click/auc'", before_data=False),
    Case("monitor NaN before training", "none",
         ("train", *TINY[:1], "tiny-onelike", *TINY[2:], "--set", "train.monitor=like/auc", "--out", "{tmp}/r"),
         "'like/auc' is NaN on the val split before training", before_data=False),
    # --- corrupt or truncated run files -------------------------------------------------------------------
    Case("truncated model.safetensors", "finished:model.safetensors", ("evaluate", "{run}"),
         "model.safetensors is corrupt or truncated"),
    Case("truncated checkpoint.pt", "finished:checkpoint.pt", ("train", "--resume", "--out", "{run}"),
         "checkpoint.pt is corrupt or truncated"),
    Case("checkpoint of another version", "finished:old-optimizer", ("train", "--resume", "--out", "{run}"),
         "does not fit this model and optimiser", before_data=False),
    Case("truncated encoders.json", "finished:encoders.json",
         ("predict", "{run}", "--input", "{tmp}/rows.parquet", "--output", "{tmp}/out.parquet"),
         "encoders.json is corrupt or truncated"),
    Case("truncated spec.json", "finished:spec.json", ("evaluate", "{run}"), "spec.json is corrupt or truncated"),
    Case("weights of another model", "finished:swap-spec", ("evaluate", "{run}"),
         "does not fit the model described by"),
    # --- finished runs used wrongly -------------------------------------------------------------------------
    Case("evaluate a non-run", "none", ("evaluate", "{tmp}"), "is not a finished polyrec run"),
    Case("predict with a non-run", "rows",
         ("predict", "{tmp}", "--input", "{tmp}/rows.parquet", "--output", "{tmp}/o.parquet"),
         "is not a finished polyrec run"),
    Case("predict --output is a folder", "finished",
         ("predict", "{run}", "--input", "{tmp}/rows.parquet", "--output", "{tmp}/dir.parquet"), "is a folder"),
    Case("predict --output under a file", "finished",
         ("predict", "{run}", "--input", "{tmp}/rows.parquet", "--output", "{tmp}/afile/o.parquet"),
         "afile is a file, not a folder"),
    Case("predict input missing", "finished",
         ("predict", "{run}", "--input", "{tmp}/none.parquet", "--output", "{tmp}/o.parquet"), "not found"),
    Case("evaluate an unknown split", "finished", ("evaluate", "{run}", "--split", "tset"), "Unknown split 'tset'"),
    Case("recommend on a CTR run", "finished", ("recommend", "{run}", "--user", "u1"), "is a CTR-style run"),
    # --- continual re-training (--init-from) -----------------------------------------------------------------
    Case("--init-from a missing folder", "none", ("train", "--init-from", "{tmp}/none", *TINY, "--out", "{tmp}/r"),
         "no such run folder"),
    Case("--init-from truncated weights", "finished:model.safetensors",
         ("train", "--init-from", "{run}", *TINY, "--out", "{tmp}/r"), "model.safetensors is corrupt or truncated"),
    Case("--init-from another model setting", "finished",
         ("train", "--init-from", "{run}", *TINY, "--set", "model.embed_dim=8", "--out", "{tmp}/r"),
         "the model differs from the old run's (model.embed_dim: 4 -> 8)"),
    Case("--topk with --init-from", "finished", ("train", "--topk", "--init-from", "{run}", "--out", "{tmp}/r"),
         "warm-starts CTR-style runs only"),
]


# --- sandbox ------------------------------------------------------------------------------------------------
# tiny_data (conftest.py): a folder with the tiny recipes' files, the recipes registered for the module


@pytest.fixture(scope="module")
def finished_run(tiny_data, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    code, _, err = run_cli("train", *TINY, "--out", str(run))
    assert code == 0, err
    return run


def _setup(kind: str, tmp: Path, finished: Path) -> dict[str, str]:
    subs = {"tmp": str(tmp)}
    (tmp / "afile").write_text("not a folder\n")
    (tmp / "dir.parquet").mkdir()
    if kind == "no-cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    if kind == "bad-yaml":
        (tmp / "bad.yaml").write_text("train: {lr: [0.1\n")
    if kind.startswith("finished") or kind == "rows":
        run = tmp / "run"
        shutil.copytree(finished, run)
        subs["run"] = str(run)
        from polyrec.data.prepare import prepare
        from polyrec.train.run import load_run

        cfg = load_run(run).config
        prepared = prepare(cfg.data, seed=cfg.train.seed, download=False, log=lambda _: None)
        shutil.copy(prepared.raw_split_path("test"), tmp / "rows.parquet")
        if kind == "rows":
            shutil.rmtree(run)
        damaged = kind.partition(":")[2]
        if damaged == "swap-spec":  # spec.json of a bigger model beside these weights
            spec = json.loads((run / "spec.json").read_text())
            spec["params"]["n_experts"] = 3
            (run / "spec.json").write_text(json.dumps(spec))
        elif damaged == "old-optimizer":  # an older layout: one parameter group fewer
            from polyrec.train.checkpoint import load_checkpoint, save_checkpoint

            ckpt = load_checkpoint(run / "checkpoint.pt")
            groups = ckpt["optimizer"]["param_groups"]
            ckpt["optimizer"]["param_groups"] = [{**groups[0], "params": [i for g in groups for i in g["params"]]}]
            ckpt["finished"] = False
            save_checkpoint(ckpt, run / "checkpoint.pt")
            (run / "metrics.json").unlink()
        elif damaged:
            data = (run / damaged).read_bytes()
            (run / damaged).write_bytes(data[: len(data) // 2])
    return subs


@pytest.fixture
def lock_holder(tmp_path):
    """A process holding {tmp}/held the way a running `polyrec train` does."""
    code = ("import sys, time; from polyrec.train.rundir import claim; c = claim(sys.argv[1]); c.__enter__(); "
            "print('held', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "held")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait()


def _norm(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, tiny_data, finished_run, tmp_path, request):
    subs = _setup(case.setup, tmp_path, finished_run)
    if case.setup == "locked":
        subs["pid"] = str(request.getfixturevalue("lock_holder").pid)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code, out, err = run_cli(*(a.format(**subs) for a in case.args))
    assert code == case.code, out + err
    assert "Traceback" not in out + err
    assert err.startswith("error:") and case.expect.format(**subs) in _norm(err), err
    assert len(err.strip().splitlines()) == 1, err  # one line
    if case.before_data:
        assert "positive rate" not in out, out  # the data was never prepared
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.name != ".polyrec.lock")
    assert [p for p in after if p not in before] == [], "a failed command left files behind"


# --- the same table in the docs -------------------------------------------------------------------------------
def _display(args: tuple[str, ...]) -> str:
    """The command as the doc shows it: the small-model settings of TINY as '…', sandbox paths shortened."""
    text = " ".join(args).replace(" ".join(TINY[2:]), "…")
    return "polyrec " + text.replace("{tmp}/", "").replace("{run}", "RUN").replace("{tmp}", "DIR")


def markdown_table() -> str:
    setups = {"none": "", "file": "`afile` is a file", "locked": "another process holds `held`",
              "finished": "RUN is a finished run", "no-cuda": "CPU-only PyTorch", "bad-yaml": "`bad.yaml` is broken",
              "rows": "DIR holds rows, no run", "finished:swap-spec": "RUN's spec.json says n_experts=3",
              "finished:old-optimizer": "RUN's checkpoint holds an older optimiser layout"}
    lines = ["| case | setting | command | message contains | exit |", "|---|---|---|---|---|"]
    for c in CASES:
        setting = setups.get(c.setup) or (f"RUN's {c.setup.partition(':')[2]} cut in half" if ":" in c.setup else "")
        lines.append(f"| {c.name} | {setting} | `{_display(c.args)}` | {c.expect.replace('{pid}', 'PID')} | {c.code} |")
    return "\n".join(lines)


def test_reliability_doc_shows_this_table():
    doc = (REPO / "docs" / "reliability.md").read_text()
    assert markdown_table() in doc, "docs/reliability.md is out of date: paste `python tests/test_bad_inputs.py`"


# --- faults with real processes -------------------------------------------------------------------------------
def _tiny_cli(data: Path, *args: str) -> list[str]:
    return [sys.executable, str(TINY_CLI), str(data), *args]


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, f"{path} did not appear in time"
        time.sleep(0.01)


def test_second_training_into_a_held_folder_exits_at_once_and_the_first_finishes(tiny_data, tmp_path):
    out, release = tmp_path / "run", tmp_path / "release"
    first = subprocess.Popen(_tiny_cli(tiny_data, "train", *TINY[:-1], "8", "--set", "train.patience=0",
                                       "--out", str(out)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "TINY_CLI_HOLD_UNTIL": str(release)})  # holds until released
    try:
        _wait_for(out / ".polyrec.lock", first)
        t0 = time.monotonic()
        second = subprocess.run(_tiny_cli(tiny_data, "train", "--dataset", "tiny-synthetic", "--model", "sharedbottom",
                                          "--set", "train.progress=false", "--out", str(out)),
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"is in use by pid {first.pid}" in _norm(second.stderr) and "polyrec train" in second.stderr
        assert time.monotonic() - t0 < 30  # at once: no data preparation, no waiting
        release.touch()  # the first run goes on to train
        output, _ = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, output
    info = json.loads((out / "spec.json").read_text())
    assert info["model"] == "mmoe" and json.loads((out / "metrics.json").read_text())["epochs_run"] == 8
    assert not (out / ".polyrec.lock").exists()


def test_kill_9_then_resume_is_bit_identical(tiny_data, tmp_path):
    args = ["train", *TINY[:-1], "10", "--set", "train.patience=0", "--set", "model.dropout=0.2"]
    full = tmp_path / "full"
    assert subprocess.run(_tiny_cli(tiny_data, *args, "--out", str(full)), capture_output=True,
                          timeout=120).returncode == 0
    cut = tmp_path / "cut"
    proc = subprocess.Popen(_tiny_cli(tiny_data, *args, "--out", str(cut)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True,  # waits before epoch 3: killed there
                            env={**os.environ, "TINY_CLI_HOLD_UNTIL": str(tmp_path / "never"),
                                 "TINY_CLI_HOLD_EPOCH": "3"})
    try:
        deadline = time.monotonic() + 90
        while not (cut / "metrics.jsonl").exists() or len((cut / "metrics.jsonl").read_text().splitlines()) < 2:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (cut / "metrics.json").exists()  # killed mid-run
    resumed = subprocess.run(_tiny_cli(tiny_data, "train", "--resume", "--out", str(cut)), capture_output=True,
                             text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed from epoch" in resumed.stdout
    assert (cut / "model.safetensors").read_bytes() == (full / "model.safetensors").read_bytes()
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (full, cut))
    assert a["test"] == b["test"] and a["val"] == b["val"] and a["best_epoch"] == b["best_epoch"]
    assert b["sessions"] == 2 and a["sessions"] == 1


def test_failed_start_leaves_a_folder_that_can_be_rerun(tiny_data, tmp_path):
    out = tmp_path / "run"
    code, _, err = run_cli("train", *TINY, "--set", "train.monitor=click/aucc", "--out", str(out))
    assert code == 2 and "Did you mean" in err
    assert not out.exists()  # nothing written before training starts
    out.mkdir()
    (out / "config.yaml").write_text("data: {dataset: tiny-synthetic}\n")  # left by an older version's failed start
    code, _, err = run_cli("train", *TINY, "--out", str(out))
    assert code == 0, err
    code, out_text, err = run_cli("train", "--resume", "--out", str(out))
    assert code == 0 and "resumed from epoch 2" in out_text, err


def test_never_started_folder_resumes_from_epoch_1(tiny_data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    code, _, _ = run_cli("train", *TINY, "--out", str(out / "x"))
    assert code == 0
    for name in ("checkpoint.pt", "metrics.json", "model.safetensors", "metrics.jsonl"):
        (out / "x" / name).unlink()  # as if killed during epoch 1
    code, text, err = run_cli("train", "--resume", "--out", str(out / "x"))
    assert code == 0, err
    assert "never finished an epoch" in text and (out / "x" / "metrics.json").exists()


def test_wall_seconds_of_a_resumed_run_count_every_session(tiny_data, tmp_path):
    from polyrec.train.checkpoint import load_checkpoint, save_checkpoint

    out = tmp_path / "run"
    assert run_cli("train", *TINY, "--out", str(out))[0] == 0
    ckpt = load_checkpoint(out / "checkpoint.pt")
    ckpt["wall_seconds"] = 1000.0  # an earlier session that ran 1000 s before its last checkpoint
    ckpt["finished"] = False
    save_checkpoint(ckpt, out / "checkpoint.pt")
    (out / "metrics.json").unlink()
    assert run_cli("train", "--resume", "--out", str(out))[0] == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 1000.0 < metrics["wall_seconds"] < 1100.0 and metrics["sessions"] == 2


def test_os_errors_are_one_line_and_bugs_say_so(monkeypatch, tiny_data):
    import polyrec.runs as run_module

    def disk_full(*_a, **_k):
        raise OSError(28, "No space left on device", "/data/cache")

    monkeypatch.setattr(run_module, "evaluate_run", disk_full)
    code, out, err = run_cli("evaluate", "somewhere")
    assert code == 2 and _norm(err) == "error: No space left on device: /data/cache"

    def bug(*_a, **_k):
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(run_module, "evaluate_run", bug)
    code, out, err = run_cli("evaluate", "somewhere")
    assert code == 1 and "Traceback" in err and "ZeroDivisionError" in err and "this is a bug" in err


def test_bench_rerun_finishes_a_run_whose_metrics_json_is_truncated(tiny_data, tmp_path):
    out = tmp_path / "bench"
    args = ("bench", "--dataset", "tiny-synthetic", "--models", "mmoe", "--seeds", "1", "--no-report",
            "--out", str(out), *[a for a in TINY[2:-2] if a], "--set", "train.epochs=2")
    code, text, err = run_cli(*args)
    assert code == 0, text + err
    metrics = out / "runs" / "tiny-synthetic" / "mmoe" / "seed0" / "metrics.json"
    good = json.loads(metrics.read_text())
    metrics.write_text(metrics.read_text()[:40])
    code, text, err = run_cli(*args)
    assert code == 0, text + err
    assert "metrics.json is unreadable" in text
    again = json.loads(metrics.read_text())
    assert again["test"] == good["test"]


def test_two_benches_into_one_folder(tiny_data, tmp_path, lock_holder):
    code, _, err = run_cli("bench", "--dataset", "tiny-synthetic", "--models", "mmoe", "--seeds", "1",
                           "--out", str(tmp_path / "held"))
    assert code == 2 and f"bench folder {tmp_path / 'held'} is in use by pid {lock_holder.pid}" in _norm(err)


if __name__ == "__main__":
    print(markdown_table())
