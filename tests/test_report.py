"""The benchmark report: one self-contained HTML file, built from real (tiny) MovieLens-100K trainings laid
out as the bench runner lays them out, and rendered in a real headless Chromium.

Chromium: `apt-get update && apt-get install -y chromium` (Debian); the browser tests skip, saying so,
when /usr/bin/chromium is absent.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import struct
import subprocess
import traceback
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from helpers import quiet, require_dataset
from polyrec.balance.base import BALANCERS, Balancer
from polyrec.config import load_config
from polyrec.runs import train_run

pytest.importorskip("matplotlib", reason="the report draws its figures with matplotlib (pip install matplotlib)")

from polyrec.bench.store import head_metric, load_bench  # noqa: E402
from polyrec.report import render_report, write_report  # noqa: E402
from polyrec.report.tables import summarize  # noqa: E402

pytestmark = pytest.mark.slow

DATASET = "movielens-100k"
SEEDS = [0, 1]
# label, folder name the run lands in, config overrides. Labels with "/" are stored both ways a runner
# might store them (nested folders and "__"); a row that diverges writes error.json; a planned row never runs.
ROWS = [
    ("mmoe/adam", "mmoe/adam", ["model.name=mmoe", "train.optimizer=adam"]),
    ("mmoe/sgd", "mmoe__sgd", ["model.name=mmoe", "train.optimizer=sgd", "train.lr=0.05"]),
    ("sharedbottom/learned", "sharedbottom__learned", ["model.name=sharedbottom", "train.balance=test-learned"]),
    ("diverges", "diverges", ["model.name=sharedbottom", "train.lr=1e12"]),
]
NEVER_RUN = "never-run"
COMMON = [f"data.dataset={DATASET}", "train.epochs=2", "train.batch_size=4096", "train.log_every=2",
          "train.threads=1", "train.progress=false", "train.patience=0"]  # 1 thread: ~10x faster than 2 on a busy box
# bars + learning curves + mmoe optimisers + gates of mmoe/adam and mmoe/sgd + learned task weights
EXPECTED_FIGURES = 6
CHROMIUM = Path("/usr/bin/chromium")


class LearnedWeights(Balancer):
    """Uncertainty weighting (w_t = exp(-s_t), loss sum_t w_t L_t + s_t): task weights that move every step."""

    def __init__(self, task_names, params, task_kinds=None) -> None:
        super().__init__(task_names, params, task_kinds)
        self.log_vars = nn.Parameter(torch.zeros(len(task_names)))

    def parameters(self) -> list[nn.Parameter]:
        return [self.log_vars]

    def backward(self, losses, extra, shared) -> torch.Tensor:
        total = (torch.exp(-self.log_vars) * losses + self.log_vars).sum()
        if extra is not None:
            total = total + extra
        total.backward()
        self.weights = torch.exp(-self.log_vars.detach()).clone()
        return total.detach()


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory) -> Path:
    require_dataset(DATASET)
    root = tmp_path_factory.mktemp("bench")
    (root / "bench.yaml").write_text(yaml.safe_dump({
        "datasets": [DATASET],
        "rows": [{"label": label, "model": next(o.split("=")[1] for o in ov if o.startswith("model.name=")),
                  **dict(o.split("=", 1) for o in ov if o.startswith("train."))} for label, _, ov in ROWS]
        + [{"label": NEVER_RUN, "model": "ple"}],
        "seeds": SEEDS,
        "command": ["polyrec", "bench", "grid.yaml", "--out", str(root)],
    }, sort_keys=False))
    (root / "environment.json").write_text(json.dumps({
        "versions": {"polyrec": "0.1.0", "torch": torch.__version__}, "git_commit": "0123abcd",
        "data_fingerprints": {DATASET: {"u.data": "sha256:feedbeef"}}}))
    threads = torch.get_num_threads()  # train_run sets torch's thread count for the whole process
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(BALANCERS, "test-learned", LearnedWeights)
        for _, folder, overrides in ROWS:
            for seed in SEEDS:
                run_dir = root / "runs" / DATASET / folder / f"seed{seed}"
                try:
                    train_run(load_config(overrides=COMMON + overrides + [f"train.seed={seed}"]), run_dir,
                              log=quiet, download=False)
                except Exception as exc:  # what the runner records for a failed run
                    run_dir.mkdir(parents=True, exist_ok=True)
                    (run_dir / "error.json").write_text(json.dumps({
                        "error": str(exc), "type": type(exc).__name__, "traceback": traceback.format_exc()}))
    torch.set_num_threads(threads)
    return root


def _images(text: str) -> list[str]:
    return re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", text)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_the_bench_folder_is_read_as_the_runner_lays_it_out(bench_dir):
    bench = load_bench(bench_dir)
    assert bench.datasets == [DATASET]
    assert bench.labels == [label for label, _, _ in ROWS] + [NEVER_RUN]
    found = {(r.label, r.seed): r for r in bench.runs}
    assert set(found) == {(label, s) for label, _, _ in ROWS for s in SEEDS}  # "mmoe/adam" nested, others "__"
    assert all(found["diverges", s].error and not found["diverges", s].ok for s in SEEDS)
    assert all(found["mmoe/adam", s].gates and found["mmoe/adam", s].ok for s in SEEDS)
    rows = {r["label"]: r for r in summarize(bench)[DATASET]}
    assert rows["diverges"]["seeds_ok"] == 0 and rows["diverges"]["seeds_failed"] == 2
    mean, std, n = rows["mmoe/adam"]["overall/mean_auc"]
    aucs = [found["mmoe/adam", s].metrics["test"]["overall"]["mean_auc"] for s in SEEDS]
    assert n == 2 and mean == pytest.approx(sum(aucs) / 2) and std == pytest.approx(abs(aucs[0] - aucs[1]) / 2 ** 0.5)
    assert rows["mmoe/sgd"]["cells"]["<25/click/auc"][2] == 2


def test_report_is_one_self_contained_file(bench_dir):
    path = write_report(bench_dir)
    assert path == bench_dir / "report.html"
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>")
    # nothing is fetched: no remote or relative references, no scripts, no external style sheets
    assert not re.search(r"\b(src|href)\s*=\s*[\"']?\s*(https?:)?//", text, re.I)
    assert not re.search(r"<(script|link|iframe|object|embed)\b", text, re.I)
    links = re.findall(r"\bhref=\"([^\"]*)\"", text)
    assert links and all(h.startswith("#") for h in links)  # only the in-page table of contents
    images = _images(text)
    assert len(images) == EXPECTED_FIGURES
    for src in images:
        assert src.startswith("data:image/png;base64,")
        w, h = _png_size(base64.b64decode(src.split(",", 1)[1]))
        assert 300 < w < 2000 and 150 < h < 2000
    assert len(text) < 2_500_000, f"report is {len(text):,} bytes"
    # the page leads with the results and the figures; configuration and environment come after
    order = [text.index(mark) for mark in ('id="results"', "<figure", 'id="failures"', 'id="experiment"',
                                            'id="environment"')]
    assert order == sorted(order)
    # content: command, environment, computed tables (no results.md), figure titles, failures
    assert "polyrec bench grid.yaml --out" in text
    assert "0123abcd" in text and "data_fingerprints.movielens-100k.u.data" in text and "sha256:feedbeef" in text
    assert "No results.md from the aggregator" in text
    for title in ("test AUC per cell", "learning curves", "mmoe: optimisers", "mmoe/adam: gate weights (task_gates)",
                  "mmoe/sgd: gate weights (task_gates)", "sharedbottom/learned: task weights"):
        assert f"{DATASET}: {title}" in text or f"{DATASET} / {title}" in text, title
    failures = text[text.index('id="failures"'):]
    assert failures.count("<pre>Training diverged") == 2 and failures.count("<details>") == 2
    assert "<code>PolyrecError</code>" in failures
    assert failures.count("not run: no run folder") == 2 and NEVER_RUN in failures
    assert path.stat().st_mode & 0o044 == 0o044  # readable by others: it is meant to be shared


def test_results_md_tables_are_included_as_html(bench_dir, tmp_path):
    copy = tmp_path / "bench"
    shutil.copytree(bench_dir, copy, ignore=shutil.ignore_patterns("*.safetensors", "*.pt"))
    (copy / "results.md").write_text(
        "# Results\n\n## movielens-100k: test AUC\n\n| row | click | like |\n|:--|--:|--:|\n"
        "| mmoe/adam | 0.7712 ± 0.0031 | 0.7901 ± 0.0007 |\n| <b>x</b> | 1 | 2 |\n\n- failed: `diverges`\n")
    text = render_report(load_bench(copy))
    assert "No results.md from the aggregator" not in text
    assert "<th>row</th>" in text.replace(' style="text-align:left"', "")
    assert '<td style="text-align:right">0.7712 ± 0.0031</td>' in text
    assert "&lt;b&gt;x&lt;/b&gt;" in text and "<b>x</b>" not in text  # Markdown's raw HTML stays text
    assert "<h3>Results</h3>" in text and "<code>diverges</code>" in text
    assert len(_images(text)) == EXPECTED_FIGURES


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _console_lines(stderr: str) -> list[str]:
    """What the page said on the console: script errors, CSP violations, failed loads, console.* calls."""
    return [line for line in stderr.splitlines()
            if ":CONSOLE" in line or "Uncaught" in line or "Failed to load resource" in line]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium not installed "
                    "(apt-get update && apt-get install -y chromium); CI installs it")
def test_report_renders_in_headless_chromium(bench_dir, tmp_path):
    report = write_report(bench_dir)
    shot = bench_dir / "report.png"
    proc = _chromium([f"--screenshot={shot}", "--window-size=1280,4000", report.resolve().as_uri()],
                     tmp_path / "profile1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _console_lines(proc.stderr) == []
    assert shot.exists() and shot.stat().st_size > 10_000
    assert _png_size(shot.read_bytes()) == (1280, 4000)

    # the page itself has no script; a copy with one probe script (allowed by its CSP) reports on the images
    probe = tmp_path / "probe.html"
    # (on `load`, when every image has loaded or failed; a decode() promise can outlive --dump-dom)
    probe_script = ("<script>window.addEventListener('load', () => { const im = [...document.images]; "
                    "document.body.setAttribute('data-images', im.length + '/' + "
                    "im.filter(i => i.complete && i.naturalWidth > 0).length); });</script>")
    text = report.read_text()
    assert "default-src 'none'" in text
    probe.write_text(text.replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';")
                     .replace("</body>", probe_script + "</body>"))
    proc = _chromium(["--dump-dom", probe.resolve().as_uri()], tmp_path / "profile2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _console_lines(proc.stderr) == []
    assert f'data-images="{EXPECTED_FIGURES}/{EXPECTED_FIGURES}"' in proc.stdout
    assert proc.stdout.count("<figure") == EXPECTED_FIGURES


def test_the_per_cell_figure_judges_top_k_heads_by_ndcg():
    assert head_metric({"auc": 0.7, "logloss": 0.5}) == "auc"
    assert head_metric({"rmse": 0.9}) == "rmse"
    assert head_metric({"recall@20": 0.3, "ndcg@10": 0.2, "ndcg@20": 0.25}) == "ndcg@20"  # a top-K head: no AUC
    assert head_metric({"recall@5": 0.3, "ndcg@5": 0.2}) == "ndcg@5"
    assert head_metric({"users": 10.0}) is None


def test_a_bench_rerun_with_fewer_seeds_reports_only_those(bench_dir, tmp_path):
    subset = tmp_path / "bench"
    shutil.copytree(bench_dir, subset)
    spec = yaml.safe_load((subset / "bench.yaml").read_text())
    (subset / "bench.yaml").write_text(yaml.safe_dump({**spec, "seeds": [1]}))  # seed 0 stays on disk
    bench = load_bench(subset)
    assert {r.seed for r in bench.runs} == {1}
    assert {r["label"]: r["seeds_ok"] for r in summarize(bench)[DATASET]}["mmoe/adam"] == 1
