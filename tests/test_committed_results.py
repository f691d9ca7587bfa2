"""Re-aggregating committed benches gives the committed tables, byte for byte (results.md: its tables).

The run folders of docs/results/<bench>/ are not committed, but results-per-seed.csv holds every number a
run's metrics.json contributed (flattened test metrics and cost, in their order), so the folders are rebuilt
from it and aggregated again: a refactor of the bench reader, statistics or tables that changed a number,
a mark, a star or the layout of results.md / .csv / .json fails here.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from polyrec.bench.aggregate import FILES, write_results

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
BENCHES = ["balance-census-income", "sarnet-debias"]  # CTR benches without optimiser curves (no metrics.jsonl)
COST = ("train_seconds", "wall_seconds", "epochs_run", "best_epoch")  # seconds_per_epoch is derived


def _metrics(values: dict[str, float]) -> dict:
    """A metrics.json whose flattened test metrics and cost are `values` (inverse of aggregate.seed_values)."""
    test: dict = {}
    out: dict = {"test": test}
    for key, v in values.items():
        if key in COST:
            out[key] = int(v) if key in ("epochs_run", "best_epoch") and v == int(v) else v
        elif key == "seconds_per_epoch":
            continue
        elif key.startswith("overall/"):
            test.setdefault("overall", {})[key.split("/", 1)[1]] = v
        elif key.startswith("cell/"):
            scenario, head, metric = key[len("cell/"):].rsplit("/", 2)
            test.setdefault("cells", {}).setdefault(scenario, {}).setdefault(head, {})[metric] = v
        else:
            head, metric = key.rsplit("/", 1)
            test.setdefault("heads", {}).setdefault(head, {})[metric] = v
    return out


def rebuild(src: Path, dst: Path) -> Path:
    """bench.yaml and one run folder per (dataset, row, seed), from the committed files of bench `src`."""
    dst.mkdir(parents=True)
    shutil.copy(src / "bench.yaml", dst / "bench.yaml")
    committed = json.loads((src / "results.json").read_text())
    per_run: dict[tuple[str, str, int], dict[str, float]] = {}
    with (src / "results-per-seed.csv").open() as f:
        for rec in csv.DictReader(f):
            per_run.setdefault((rec["dataset"], rec["row"], int(rec["seed"])), {})[rec["metric"]] = float(rec["value"])
    for (ds, label, seed), values in per_run.items():
        folder = committed["datasets"][ds]["rows"][label]["folder"]
        run = dst / "runs" / ds / folder / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps(_metrics(values)))
    for ds, res in committed["datasets"].items():  # failed seeds: their error.json
        for label, info in res["rows"].items():
            for seed, err in info["seeds_failed"].items():
                run = dst / "runs" / ds / info["folder"] / f"seed{seed}"
                run.mkdir(parents=True)
                (run / "error.json").write_text(json.dumps({"type": err["type"], "error": err["error"]}))
    return dst


@pytest.mark.parametrize("bench", BENCHES)
def test_re_aggregating_a_committed_bench_gives_the_committed_tables(bench, tmp_path):
    src = RESULTS / bench
    dst = rebuild(src, tmp_path / bench)
    write_results(dst)
    for name in FILES:
        got, want = (dst / name).read_text(), (src / name).read_text()
        if name == "results.json":  # the folder it was aggregated in is recorded
            got = got.replace(json.dumps(str(dst)), json.dumps(json.loads(want)["bench_dir"]), 1)
        if name == "results.md":  # its prose (notes under the tables) has been reworded since; the tables not
            got, want = _tables(got), _tables(want)
            assert len(want) > 10
        assert got == want, f"{bench}/{name} differs"


def _tables(markdown: str) -> list[str]:
    """The headings and table lines of a results.md."""
    return [line for line in markdown.splitlines() if line.startswith(("|", "#"))]
