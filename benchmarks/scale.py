"""How cost grows with rows on the larger-than-memory path: encode time, epoch time, samples/s and peak memory
for 1M / 5M / 20M synthetic rows, one process and torchrun with 2 processes.

What is measured
----------------
Per row count N, on `polyrec datasets synth --rows N` with a fixed number of users and items (so the embedding
tables, hence the model, do not grow with N; only the data does):

  encode   `prepare` with data.chunk_rows (two passes over the Parquet shards: streaming fit, then encoding into
           the cache's memory maps), in a fresh process and a fresh cache folder;
  train    `polyrec train --data DIR --schema DIR/schema.yaml --epochs 1` on that cache (MMoE, batch 2048, block
           shuffle), one process with train.threads=2; "epoch s" is the training pass of the epoch (metrics.jsonl's
           train_seconds), "wall s" the whole command (start-up, loading, validation and test scoring included);
  torchrun the same under `torchrun --standalone --nproc_per_node 2` with train.threads=1 per process.

Peak memory is sampled from /proc every 0.1 s over the whole process tree (torchrun and its workers summed):
RssAnon is the memory the processes own; VmRSS adds the file pages of the memory-mapped cache they touched, which
the kernel can drop at any time (page cache, not a requirement). The targets: encode and epoch time within 1.3x
of linear from the smallest to the largest N (ratio = (t_N / t_1) / (N / N_1)), and peak RssAnon at the largest
N at most 1.5x that at the smallest.

--shuffle-cost adds the AUC cost of block shuffling: the smallest log, sorted by user (a log dumped user by user,
the case where reading order carries signal), trained to early stopping (patience 3, cap 40 epochs) with a full
shuffle (data.shuffle_window_rows >= rows) and with block shuffling (blocks of data.block_rows, windows of
--window rows), --seeds seeds each; test AUC per task, paired by seed.

Run it alone on the machine: it is a timing benchmark.

Usage:
  python benchmarks/scale.py [--rows 1000000,5000000,20000000] [--users 200000] [--items 100000]
      [--chunk-rows 1000000] [--batch-size 2048] [--procs 1,2] [--shuffle-cost] [--window 65536] [--seeds 3]
      [--workdir DIR] [--json-out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _tree(pid: int) -> list[int]:
    """pid and all its descendants (from /proc/*/stat's parent field)."""
    parents: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += parents.get(p, [])
    return out


def _rss_kb(pids: list[int]) -> tuple[int, int]:
    anon = total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                elif line.startswith("RssAnon:"):
                    anon += int(line.split()[1])
        except OSError:
            continue
    return anon, total


def measured(cmd: list[str], env: dict[str, str], log: Path) -> dict:
    """Run cmd, sampling the process tree's memory; its output goes to `log`."""
    peak = {"anon": 0, "rss": 0}
    with open(log, "w") as fh:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                anon, rss = _rss_kb(_tree(proc.pid))
                peak["anon"], peak["rss"] = max(peak["anon"], anon), max(peak["rss"], rss)
                done.wait(0.1)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        rc = proc.wait()
        wall = time.perf_counter() - start
        done.set()
        t.join()
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (rc {rc}):\n{log.read_text()[-3000:]}")
    return {"wall_s": wall, "peak_anon_mb": peak["anon"] / 1024, "peak_rss_mb": peak["rss"] / 1024}


def encode_child(data: str, chunk_rows: int) -> None:
    """(in a fresh process) prepare the synthetic log into the cache POLYREC_CACHE names; prints its timing."""
    from polyrec.config import load_config
    from polyrec.data.prepare import prepare

    sets = [f"data.files.path={json.dumps(data)}", f"data.schema_file={json.dumps(str(Path(data) / 'schema.yaml'))}"]
    cfg = load_config(None, sets + ([f"data.chunk_rows={chunk_rows}"] if chunk_rows else []))
    start = time.perf_counter()
    prepared = prepare(cfg.data, seed=cfg.train.seed, log=lambda m: None)
    print(json.dumps({"encode_s": time.perf_counter() - start, "rows": prepared.meta["rows"]}))


def train_cmd(data: Path, out: Path, procs: int, a: argparse.Namespace, extra: list[str]) -> list[str]:
    head = ([sys.executable, "-m", "polyrec"] if procs == 1 else
            [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
             "-m", "polyrec"])
    sets = [f"data.chunk_rows={a.chunk_rows}", f"train.batch_size={a.batch_size}", "train.eval_batch_size=16384",
            f"train.threads={max(1, a.threads // procs)}", *extra]
    return [*head, "train", "--data", str(data), "--schema", str(data / "schema.yaml"), "--model", a.model,
            "--out", str(out), *[x for s in sets for x in ("--set", s)]]


def epochs_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def scale_rows(a: argparse.Namespace, work: Path, env: dict[str, str]) -> list[dict]:
    rows = []
    for n in [int(x) for x in a.rows.split(",")]:
        data = work / f"synth-{n}"
        if not (data / "synth.json").exists():
            shutil.rmtree(data, ignore_errors=True)
            m = measured([sys.executable, "-m", "polyrec", "datasets", "synth", "--rows", str(n), "--users",
                          str(a.users), "--items", str(a.items), "--out", str(data)], env, work / f"synth-{n}.log")
            print(f"{n:>11,} rows  synth {m['wall_s']:.1f} s", flush=True)
        cache = work / f"cache-{n}"
        shutil.rmtree(cache, ignore_errors=True)
        cenv = {**env, "POLYREC_CACHE": str(cache)}
        m = measured([sys.executable, __file__, "--encode-child", str(data), "--chunk-rows", str(a.chunk_rows)],
                     cenv, work / f"encode-{n}.log")
        enc = json.loads((work / f"encode-{n}.log").read_text().strip().splitlines()[-1])
        row = {"rows": n, "encode_s": enc["encode_s"], "encode_wall_s": m["wall_s"],
               "encode_peak_anon_mb": m["peak_anon_mb"], "encode_peak_rss_mb": m["peak_rss_mb"],
               "train_rows": enc["rows"]["train"], "cache_mb": _size_mb(cache)}
        print(f"{n:>11,} rows  encode {enc['encode_s']:.1f} s  peak anon {m['peak_anon_mb']:.0f} MB "
              f"rss {m['peak_rss_mb']:.0f} MB  cache {row['cache_mb']:.0f} MB", flush=True)
        if n <= a.whole_max:  # the whole path (everything in memory), for comparison; its own cache entry
            m = measured([sys.executable, __file__, "--encode-child", str(data), "--chunk-rows", "0"], cenv,
                         work / f"whole-{n}.log")
            whole = json.loads((work / f"whole-{n}.log").read_text().strip().splitlines()[-1])
            row["whole"] = {"encode_s": whole["encode_s"], "peak_anon_mb": m["peak_anon_mb"]}
            print(f"{n:>11,} rows  whole-path encode {whole['encode_s']:.1f} s  peak anon {m['peak_anon_mb']:.0f} MB",
                  flush=True)
        for procs in [int(x) for x in a.procs.split(",")]:
            out = work / f"run-{n}-{procs}"
            shutil.rmtree(out, ignore_errors=True)
            m = measured(train_cmd(data, out, procs, a, ["train.epochs=1"]), cenv, work / f"train-{n}-{procs}.log")
            ep = epochs_of(out)[0]
            test = json.loads((out / "metrics.json").read_text()).get("test", {})
            row[f"p{procs}"] = {"epoch_s": ep["train_seconds"], "samples_per_s": ep["train_samples_per_s"],
                                "wall_s": m["wall_s"], "peak_anon_mb": m["peak_anon_mb"],
                                "peak_rss_mb": m["peak_rss_mb"],
                                "test_auc": {k: v for k, v in _flat(test).items() if k.endswith("/auc")}}
            print(f"{n:>11,} rows  train x{procs}  epoch {ep['train_seconds']:.1f} s  "
                  f"{ep['train_samples_per_s']:,.0f} samples/s  wall {m['wall_s']:.1f} s  peak anon "
                  f"{m['peak_anon_mb']:.0f} MB rss {m['peak_rss_mb']:.0f} MB", flush=True)
            shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
        rows.append(row)
    return rows


def _size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def _flat(d: dict, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)):
            out[f"{prefix}{k}"] = float(v)
    return out


def ratio_table(rows: list[dict], procs: list[int]) -> str:
    """Markdown: one line per N, with each time's ratio to linear growth from the first N."""
    base = rows[0]
    head = ["rows", "encode s", "(ratio)", "encode anon MB"]
    for p in procs:
        head += [f"x{p} epoch s", "(ratio)", f"x{p} samples/s", f"x{p} anon MB", f"x{p} rss MB", f"x{p} wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        scale = r["rows"] / base["rows"]
        cells = [f"{r['rows']:,}", f"{r['encode_s']:.1f}", f"{r['encode_s'] / base['encode_s'] / scale:.2f}",
                 f"{r['encode_peak_anon_mb']:.0f}"]
        for p in procs:
            q, q0 = r[f"p{p}"], base[f"p{p}"]
            cells += [f"{q['epoch_s']:.1f}", f"{q['epoch_s'] / q0['epoch_s'] / scale:.2f}",
                      f"{q['samples_per_s']:,.0f}", f"{q['peak_anon_mb']:.0f}", f"{q['peak_rss_mb']:.0f}",
                      f"{q['wall_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    last = rows[-1]
    mem = [("encode", last["encode_peak_anon_mb"] / base["encode_peak_anon_mb"])]
    mem += [(f"train x{p}", last[f"p{p}"]["peak_anon_mb"] / base[f"p{p}"]["peak_anon_mb"]) for p in procs]
    whole = [r for r in rows if "whole" in r]
    if whole:
        lines.append("")
        lines.append("Whole path (no data.chunk_rows) for comparison: " + ", ".join(
            f"{r['rows']:,} rows encode {r['whole']['encode_s']:.1f} s, peak anon {r['whole']['peak_anon_mb']:.0f} MB"
            for r in whole) + ".")
    lines.append("")
    lines.append(f"Peak RssAnon at {last['rows']:,} / at {base['rows']:,} rows: "
                 + ", ".join(f"{k} {v:.2f}x" for k, v in mem) + " (target <= 1.5x). Time ratios: target <= 1.3.")
    return "\n".join(lines)


def shuffle_cost(a: argparse.Namespace, work: Path, env: dict[str, str]) -> list[dict]:
    import pyarrow.parquet as pq

    n = int(a.rows.split(",")[0])
    src, data = work / f"synth-{n}", work / f"sorted-{n}"
    if not (data / "schema.yaml").exists():
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir()
        table = pq.read_table(sorted(src.glob("part-*.parquet")))
        pq.write_table(table.sort_by([("user_id", "ascending"), ("ts", "ascending")]), data / "part-00000.parquet")
        shutil.copy(src / "schema.yaml", data / "schema.yaml")
    cenv = {**env, "POLYREC_CACHE": str(work / "cache-sorted")}
    results = []
    for seed in range(a.seeds):
        for mode, window in (("full", max(n, 1 << 20) * 2), ("block", a.window)):
            out = work / f"shuffle-{mode}-{seed}"
            shutil.rmtree(out, ignore_errors=True)
            sets = [f"data.shuffle_window_rows={window}", f"train.seed={seed}", "train.epochs=40", "train.patience=3"]
            measured(train_cmd(data, out, 1, a, sets), cenv, work / f"shuffle-{mode}-{seed}.log")
            eps = epochs_of(out)
            test = {k: v for k, v in _flat(json.loads((out / "metrics.json").read_text())["test"]).items()
                    if k.endswith("/auc")}
            results.append({"seed": seed, "mode": mode, "window": window, "epochs": len(eps),
                            "best_epoch": max(e["epoch"] for e in eps if e["improved"]), "test_auc": test})
            print(f"shuffle {mode:5s} seed {seed}: {len(eps)} epochs, test "
                  + "  ".join(f"{k} {v:.4f}" for k, v in sorted(test.items())), flush=True)
            shutil.rmtree(out, ignore_errors=True)
    return results


def shuffle_table(results: list[dict]) -> str:
    import numpy as np
    from scipy import stats

    keys = sorted(k for k in results[0]["test_auc"] if not k.startswith("cells/"))
    lines = ["| test AUC | full shuffle | block shuffle | block - full | paired t p |", "|---|---|---|---|---|"]
    for k in keys:
        full = np.array([r["test_auc"][k] for r in results if r["mode"] == "full"])
        block = np.array([r["test_auc"][k] for r in results if r["mode"] == "block"])
        p = stats.ttest_rel(block, full).pvalue if len(full) > 1 else float("nan")
        lines.append(f"| {k} | {full.mean():.4f} ± {full.std(ddof=1) if len(full) > 1 else 0:.4f} | "
                     f"{block.mean():.4f} ± {block.std(ddof=1) if len(block) > 1 else 0:.4f} | "
                     f"{(block - full).mean():+.4f} | {p:.3f} |")
    eps = {m: [f"{r['best_epoch']}/{r['epochs']}" for r in results if r["mode"] == m] for m in ("full", "block")}
    capped = sum(r["epochs"] == 40 and r["best_epoch"] == 40 for r in results)
    lines.append("")
    lines.append(f"Best/run epochs (patience 3, cap 40): full {eps['full']}, block {eps['block']}; "
                 f"{capped} of {len(results)} runs cap-bound.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="1000000,5000000,20000000")
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--chunk-rows", type=int, default=1_000_000)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--model", default="mmoe")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in all (divided among the processes)")
    ap.add_argument("--procs", default="1,2")
    ap.add_argument("--whole-max", type=int, default=5_000_000,
                    help="also time the whole (in-memory) encode path up to this many rows")
    ap.add_argument("--shuffle-cost", action="store_true")
    ap.add_argument("--skip-scale", action="store_true", help="only the shuffle-cost part")
    ap.add_argument("--window", type=int, default=65536, help="shuffle window of the block-shuffle arm")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--workdir", help="keep the synthetic logs here (reused when present)")
    ap.add_argument("--json-out")
    ap.add_argument("--encode-child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.encode_child:
        encode_child(a.encode_child, a.chunk_rows)
        return
    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="polyrec-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    result: dict = {"args": vars(a), "cpus": os.cpu_count()}
    if not a.skip_scale:
        result["scale"] = scale_rows(a, work, env)
        print(ratio_table(result["scale"], [int(x) for x in a.procs.split(",")]))
    if a.shuffle_cost:
        result["shuffle"] = shuffle_cost(a, work, env)
        print(shuffle_table(result["shuffle"]))
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(result, indent=1))
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
