"""Serving benchmark: latency and throughput of POST /rank over real HTTP on loopback, torch vs ONNX Runtime.

    python benchmarks/serving.py BUNDLE [BUNDLE ...] [--requests 10000] [--concurrency 1,8,32]
        [--candidates 100,500,2000] [--backends torch,onnx] [--form rows,columns] [--time-limit 120] [--threads N]
        [--client stdlib|httpx]

Give one bundle per model (e.g. MMoE and PLE exported from ML-1M runs). For each bundle and backend it starts
`polyrec serve BUNDLE` on 127.0.0.1 (a free port; never another interface) and sends at most --requests requests
per (candidates, concurrency) cell (stopping early at --time-limit seconds per cell). The client is a real HTTP
client over loopback: by default the standard library's http.client in a separate process, one persistent
keep-alive connection per concurrent request (light, so it takes little of the cores from the server);
--client httpx uses httpx.AsyncClient in this process, as the first figures did.

Per cell it prints the client-measured p50/p95/p99 latency, the server's own p50/p99 (its Server-Timing header:
body read to response start) and the median of each server stage, throughput and errors, plus the ratio of the
p50 and p99 to a bare model forward on the same encoded rows (in this process, same threads; encoding
excluded). Candidates are rows of the run's test split when the bundle's cache entry is present, else rows
synthesised from the encoders' vocabularies. --form: the /rank body as a list of candidate objects ("rows",
`candidates`) or as columns (`candidate_columns`). Bounded in count and time; loopback only.
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


def parse_server_timing(value: str | None) -> dict[str, float]:
    """`total;dur=3.2, parse;dur=0.3` -> {"total": 3.2, "parse": 0.3} (ms); {} when the header is absent."""
    out: dict[str, float] = {}
    for part in (value or "").split(","):
        name, _, dur = part.strip().partition(";dur=")
        if name and dur:
            out[name] = float(dur)
    return out


def _stdlib_worker(host: str, port: int, path: str, body: bytes, n_requests: int, concurrency: int,
                   time_limit: float, warmup: int, results) -> None:
    """The client process: `concurrency` threads, each with one persistent (keep-alive) HTTP/1.1 connection
    from the standard library's http.client; nothing else is imported, so the client costs the cores little."""
    import http.client
    import threading

    headers = {"content-type": "application/json", "content-length": str(len(body))}
    lock = threading.Lock()
    sent = 0
    rows: list[tuple[float, bool, str | None]] = []
    deadline = 0.0

    def post(conn: http.client.HTTPConnection) -> tuple[bool, str | None]:
        conn.request("POST", path, body=body, headers=headers)
        r = conn.getresponse()
        r.read()
        return r.status == 200, r.getheader("server-timing")

    def worker() -> None:
        nonlocal sent
        conn = http.client.HTTPConnection(host, port, timeout=60)
        while True:
            with lock:
                if sent >= n_requests or time.perf_counter() >= deadline:
                    break
                sent += 1
            t0 = time.perf_counter()
            try:
                ok, timing = post(conn)
            except (OSError, http.client.HTTPException):
                ok, timing = False, None
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=60)
            rows.append((time.perf_counter() - t0, ok, timing))
        conn.close()

    conn = http.client.HTTPConnection(host, port, timeout=60)
    for _ in range(warmup):  # first requests pay one-off costs: not timed
        post(conn)
    conn.close()
    deadline = time.perf_counter() + time_limit
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put((rows, time.perf_counter() - t0))


def run_cell_stdlib(url: str, body: bytes, n_requests: int, concurrency: int, time_limit: float,
                    warmup: int = 5) -> tuple[list[tuple[float, bool, str | None]], float]:
    """Runs the http.client client in a fresh process (spawned: it does not inherit torch or the bundle)."""
    import multiprocessing as mp
    from urllib.parse import urlsplit

    u = urlsplit(url)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=_stdlib_worker, args=(u.hostname, u.port, u.path, body, n_requests, concurrency,
                                                    time_limit, warmup, results))
    proc.start()
    out = results.get(timeout=time_limit + 300)
    proc.join(timeout=30)
    return out


async def _httpx_cell(url: str, body: bytes, n_requests: int, concurrency: int, time_limit: float,
                      warmup: int) -> tuple[list[tuple[float, bool, str | None]], float]:
    import httpx

    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(timeout=60.0) as client:  # first requests pay one-off costs: not timed
        for _ in range(warmup):
            await client.post(url, content=body, headers=headers)
    rows: list[tuple[float, bool, str | None]] = []
    sent = 0
    deadline = time.perf_counter() + time_limit
    async with httpx.AsyncClient(timeout=60.0, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker() -> None:
            nonlocal sent
            while sent < n_requests and time.perf_counter() < deadline:
                sent += 1
                t0 = time.perf_counter()
                try:
                    r = await client.post(url, content=body, headers=headers)
                    ok, timing = r.status_code == 200, r.headers.get("server-timing")
                except httpx.HTTPError:
                    ok, timing = False, None
                rows.append((time.perf_counter() - t0, ok, timing))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return rows, wall


def run_cell(url: str, body: bytes, n_requests: int, concurrency: int, time_limit: float, client: str = "stdlib",
             warmup: int = 5) -> dict:
    """Client-measured latency (send to full answer), the server's own time (its Server-Timing header),
    throughput and errors of one cell."""
    if client == "stdlib":
        rows, wall = run_cell_stdlib(url, body, n_requests, concurrency, time_limit, warmup)
    else:
        rows, wall = asyncio.run(_httpx_cell(url, body, n_requests, concurrency, time_limit, warmup))
    lat = np.array([r[0] for r in rows]) * 1000
    timings = [parse_server_timing(r[2]) for r in rows if r[1]]
    server = np.array([t["total"] for t in timings if "total" in t])
    stages = {k: float(np.median([t[k] for t in timings if k in t]))
              for k in dict.fromkeys(k for t in timings for k in t) if k != "total"}

    def pct(a: np.ndarray, q: float) -> float:
        return float(np.percentile(a, q)) if len(a) else float("nan")

    return {"requests": len(lat), "errors": sum(not r[1] for r in rows), "rps": len(lat) / wall if wall else 0.0,
            **{f"p{q}": pct(lat, q) for q in (50, 95, 99)},
            "server_p50": pct(server, 50), "server_p99": pct(server, 99), "stages": stages}


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
    ap.add_argument("--threads", type=int, default=None, help="torch / ONNX Runtime intra-op threads (server and "
                    "bare forward)")
    ap.add_argument("--client", default="stdlib", choices=["stdlib", "httpx"],
                    help="stdlib: http.client, one keep-alive connection per concurrent request, in a separate "
                         "process (default); httpx: httpx.AsyncClient in this process (the earlier figures)")
    args = ap.parse_args()

    import json

    from polyrec.serve.bundles import load_bundle

    sizes = [int(x) for x in args.candidates.split(",")]
    concs = [int(x) for x in args.concurrency.split(",")]
    forms = args.form.split(",")
    print(f"at most {args.requests} requests and {args.time_limit:.0f} s per cell; server on {HOST} only; client "
          f"{args.client}; threads {args.threads or 'default'}; {os.cpu_count()} CPUs; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("client p50/p95/p99: send to full answer; srv p50/p99: the server's own time (Server-Timing total: "
          "body read to response start); bare: one batched forward on the same encoded rows")
    print(f"{'model':8} {'backend':8} {'form':8} {'cands':>6} {'conc':>5} {'reqs':>6} {'errors':>6} {'p50 ms':>8} "
          f"{'p95 ms':>8} {'p99 ms':>8} {'srv p50':>8} {'srv p99':>8} {'req/s':>8} {'bare ms':>8} {'p50/bare':>8} "
          f"{'p99/bare':>8}")
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
                        body = json.dumps(rank_request(bundle, rows[n], form)).encode()
                        for c in concs:
                            m = run_cell(url, body, args.requests, c, args.time_limit, args.client)
                            ratio = (lambda x: x / bare if bare else float("nan"))
                            print(f"{bundle.info['model']:8} {backend:8} {form:8} {n:>6} {c:>5} {m['requests']:>6} "
                                  f"{m['errors']:>6} {m['p50']:>8.2f} {m['p95']:>8.2f} {m['p99']:>8.2f} "
                                  f"{m['server_p50']:>8.2f} {m['server_p99']:>8.2f} {m['rps']:>8.1f} {bare:>8.2f} "
                                  f"{ratio(m['p50']):>8.1f} {ratio(m['p99']):>8.1f}", flush=True)
                            if m["stages"]:
                                print("    server stages, p50 ms: " + ", ".join(
                                    f"{k} {v:.2f}" for k, v in m["stages"].items()), flush=True)
            finally:
                proc.terminate()  # SIGTERM: uvicorn's graceful shutdown
                proc.wait(timeout=30)


if __name__ == "__main__":
    main()
