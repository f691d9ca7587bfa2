"""Serving benchmark: latency and throughput of POST /rank over real HTTP on loopback, torch vs ONNX Runtime.

    python benchmarks/serving.py BUNDLE [BUNDLE ...] [--requests 10000] [--concurrency 1,8,32]
        [--candidates 100,500,2000] [--backends torch,onnx] [--form rows,columns] [--time-limit 120] [--threads N]

Give one bundle per model (e.g. MMoE and PLE exported from ML-1M runs). For each bundle and backend it starts
`polyrec serve BUNDLE` on 127.0.0.1 (a free port; never another interface), sends
at most --requests requests per (candidates, concurrency) cell with httpx (stopping early at --time-limit
seconds per cell), and prints p50/p95/p99 latency, throughput and errors, plus the ratio of the p50 to a bare
model forward on the same encoded rows (in this process, same threads; encoding excluded). Candidates are rows of the run's
test split when the bundle's cache entry is present, else rows synthesised from the encoders' vocabularies.
--form: the /rank body as a list of candidate objects ("rows", `candidates`) or as columns
(`candidate_columns`). Bounded in count and time; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def candidate_rows(bundle, n: int, seed: int = 0) -> list[dict]:
    """n raw rows: from the run's test split when available, else drawn from the vocabularies."""
    from polyrec.serve.bundle import check_rows_table
    from polyrec.serve.schemas import columns

    table, _ = check_rows_table({"cache_entry": bundle.info["data"].get("cache_entry")}, None)
    keys = list(dict.fromkeys(k for _, ks, _ in bundle.joins for k in ks))
    cols = [c.name for c in columns(bundle.encoders.schema, bundle.joined_columns, keys)]
    if table is not None and all(c in table.column_names for c in cols):
        idx = np.random.default_rng(seed).integers(0, table.num_rows, n)
        rows = table.take(idx).select(cols).to_pylist()
        for r in rows:
            for k, v in r.items():
                if isinstance(v, float) and v != v:
                    r[k] = None
        return rows
    rng = np.random.default_rng(seed)
    s = bundle.encoders.schema
    out: dict[str, list] = {}
    for f in s.categorical:
        out[f.source] = rng.choice(bundle.encoders.vocabularies[f.name].tokens, n).tolist()
    for f in s.numeric:
        out[f.source] = rng.normal(size=n).tolist()
    for f in s.sequences:
        toks = bundle.encoders.sequences[f.name].vocab.tokens
        out[f.source] = [f.sep.join(rng.choice(toks, 3).tolist()) for _ in range(n)]
    if s.scenario is not None:
        out[s.scenario.source] = rng.choice(bundle.encoders.scenario.tokens, n).tolist()
    return [dict(zip(out, vals)) for vals in zip(*out.values())]


def rank_request(bundle, rows: list[dict], form: str = "rows") -> dict:
    """One context (the first row's user-side features) and the rows as candidates (objects or columns)."""
    s = bundle.encoders.schema
    item_like = [f.source for f in s.features if "item" in f.source.lower() or f.type == "sequence"]
    ctx = {k: v for k, v in rows[0].items() if k not in item_like}
    cands = [{k: r[k] for k in item_like if k in r} for r in rows]
    if form == "columns":
        return {"context": ctx, "candidate_columns": {k: [c[k] for c in cands] for k in cands[0]}}
    return {"context": ctx, "candidates": cands}


def bare_forward_ms(bundle, backend: str, rows: list[dict], threads: int | None, repeats: int = 20) -> float:
    """Median time of the bare batched forward on the same (already encoded) rows: no HTTP, JSON or encoding."""
    import pyarrow as pa

    from polyrec.serve.backends import make_backend

    b = make_backend(bundle, backend, threads)
    enc = bundle.encode(pa.Table.from_pylist(rows))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        b.scores(enc)
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


async def run_cell(url: str, body: dict, n_requests: int, concurrency: int, time_limit: float,
                   warmup: int = 5) -> dict:
    import httpx

    async with httpx.AsyncClient(timeout=60.0) as client:  # first requests pay one-off costs: not timed
        for _ in range(warmup):
            await client.post(url, json=body)
    latencies: list[float] = []
    errors = 0
    sent = 0
    deadline = time.perf_counter() + time_limit
    async with httpx.AsyncClient(timeout=60.0, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker() -> None:
            nonlocal sent, errors
            while sent < n_requests and time.perf_counter() < deadline:
                sent += 1
                t0 = time.perf_counter()
                try:
                    r = await client.post(url, json=body)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - t0)
                errors += not ok

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {"requests": len(lat), "errors": errors, "rps": len(lat) / wall if wall else 0.0,
            **{f"p{q}": float(np.percentile(lat, q)) if len(lat) else float("nan") for q in (50, 95, 99)}}


def start_server(bundle_dir: Path, backend: str, port: int, threads: int | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "polyrec.cli", "serve", str(bundle_dir), "--host", HOST, "--port", str(port),
           "--backend", backend]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    import httpx

    for _ in range(300):
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://{HOST}:{port}/health", timeout=1.0).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.terminate()
    raise SystemExit("server did not come up within 60 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", type=Path, nargs="+", help="one bundle per model (e.g. MMoE and PLE)")
    ap.add_argument("--requests", type=int, default=10_000, help="most requests per cell")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--candidates", default="100,500,2000")
    ap.add_argument("--backends", default="torch,onnx")
    ap.add_argument("--form", default="rows", help="rows, columns or both (rows,columns)")
    ap.add_argument("--time-limit", type=float, default=120.0, help="most seconds per cell")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    from polyrec.serve.bundles import load_bundle

    sizes = [int(x) for x in args.candidates.split(",")]
    concs = [int(x) for x in args.concurrency.split(",")]
    forms = args.form.split(",")
    print(f"at most {args.requests} requests and {args.time_limit:.0f} s per cell; server on {HOST} only")
    print(f"{'model':8} {'backend':8} {'form':8} {'cands':>6} {'conc':>5} {'reqs':>6} {'errors':>6} {'p50 ms':>8} "
          f"{'p95 ms':>8} {'p99 ms':>8} {'req/s':>8} {'bare ms':>8} {'p50/bare':>8}")
    for path in args.bundles:
        bundle = load_bundle(path)
        rows = {n: candidate_rows(bundle, n) for n in sizes}
        for backend in args.backends.split(","):
            port = free_port()
            proc = start_server(path, backend, port, args.threads)
            try:
                url = f"http://{HOST}:{port}/v1/models/{bundle.name}/rank"
                for n in sizes:
                    bare = bare_forward_ms(bundle, backend, rows[n], args.threads)
                    for form in forms:
                        body = rank_request(bundle, rows[n], form)
                        for c in concs:
                            m = asyncio.run(run_cell(url, body, args.requests, c, args.time_limit))
                            print(f"{bundle.info['model']:8} {backend:8} {form:8} {n:>6} {c:>5} {m['requests']:>6} "
                                  f"{m['errors']:>6} {m['p50']:>8.2f} {m['p95']:>8.2f} {m['p99']:>8.2f} "
                                  f"{m['rps']:>8.1f} {bare:>8.2f} "
                                  f"{m['p50'] / bare if bare else float('nan'):>8.1f}", flush=True)
            finally:
                proc.terminate()  # SIGTERM: uvicorn's graceful shutdown
                proc.wait(timeout=30)


if __name__ == "__main__":
    main()
