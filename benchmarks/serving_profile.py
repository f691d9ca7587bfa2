"""In-process profile of POST /rank: where a request's time goes outside the model, without HTTP or a client.

    python benchmarks/serving_profile.py BUNDLE [--backend torch|onnx] [--candidates 500] [--form rows|columns]
                                                [--requests 100] [--profile]

Calls the FastAPI app as ASGI on this thread (a sync endpoint is run inline instead of in the threadpool, so
cProfile sees every call), on one /rank body built like benchmarks/serving.py builds it (rows of the run's test
split). Prints p50/p99 wall and CPU time per request, the median of each server stage (the Server-Timing
header), the bare forward on the same rows and the encoding alone (training encoders vs the served
RequestEncoder, interleaved); --profile adds the top cProfile entries. Figures from a shared machine are only
good for before/after comparisons run side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def asgi_caller(app, path: str, payload: bytes):
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}

    async def call() -> dict:
        sent, out = False, {"body": b""}

        async def receive() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": payload, "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(msg: dict) -> None:
            if msg["type"] == "http.response.start":
                out["status"] = msg["status"]
                out["timing"] = dict(msg.get("headers", [])).get(b"server-timing", b"").decode()
            elif msg["type"] == "http.response.body":
                out["body"] += msg.get("body", b"")

        await app(dict(scope), receive, send)
        return out

    return call


def encode_ab(bundle, rows: list[dict], repeats: int = 300) -> str:
    """The training encoders (`Encoders.encode`, one pyarrow index_in per column) against the served
    RequestEncoder on the same raw rows, calls interleaved so that a loaded machine weighs on both alike."""
    import pyarrow as pa

    from polyrec.serve.bundle import model_inputs

    table = model_inputs(pa.Table.from_pylist(rows), bundle.encoders.schema, bundle.info.get("dataset"), "rows",
                         bundle.joins)
    old, new = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        bundle.encoders.encode(table, with_labels=False)
        t1 = time.perf_counter()
        bundle.request_encoder.encode(table)
        new.append(time.perf_counter() - t1)
        old.append(t1 - t0)
    return (f"encoding {table.num_rows} rows, p50 ms: Encoders.encode {1000 * np.median(old):.3f}, "
            f"RequestEncoder {1000 * np.median(new):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--candidates", type=int, default=500)
    ap.add_argument("--form", default="rows", choices=["rows", "columns"])
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()

    import fastapi.routing
    import torch

    torch.set_num_threads(1)

    async def inline(func, *a, **k):
        return func(*a, **k)

    fastapi.routing.run_in_threadpool = inline  # the endpoint on this thread, so cProfile sees it

    from serving import bare_forward_ms, candidate_rows, parse_server_timing, rank_request

    from polyrec.serve.app import create_app
    from polyrec.serve.bundles import load_bundle

    bundle = load_bundle(args.bundle)
    rows = candidate_rows(bundle, args.candidates)
    payload = json.dumps(rank_request(bundle, rows, args.form)).encode()
    call = asgi_caller(create_app([bundle], backend=args.backend, threads=1), f"/v1/models/{bundle.name}/rank",
                       payload)
    loop = asyncio.new_event_loop()
    first = loop.run_until_complete(call())
    if first["status"] != 200:
        raise SystemExit(f"/rank answered {first['status']}: {first['body'][:500]!r}")
    for _ in range(5):
        loop.run_until_complete(call())
    wall, cpu, timings = [], [], []
    for _ in range(args.requests):
        t0, c0 = time.perf_counter(), time.process_time()
        out = loop.run_until_complete(call())
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        timings.append(parse_server_timing(out.get("timing")))
    w, c = np.array(wall) * 1000, np.array(cpu) * 1000
    print(f"{bundle.info['model']} {args.backend} {args.candidates} candidates ({args.form}), in-process /rank: "
          f"wall p50 {np.percentile(w, 50):.2f} p99 {np.percentile(w, 99):.2f} ms, CPU p50 {np.percentile(c, 50):.2f} "
          f"ms; bare forward {bare_forward_ms(bundle, args.backend, rows, 1):.2f} ms; body {len(payload)} B, "
          f"answer {len(first['body'])} B")
    names = list(dict.fromkeys(k for t in timings for k in t))
    if names:  # absent when the app sends no Server-Timing header (an older checkout)
        print("server stages, p50 ms: " + ", ".join(f"{k} {np.median([t[k] for t in timings if k in t]):.2f}"
                                                   for k in names))
    if hasattr(bundle, "request_encoder"):
        print(encode_ab(bundle, rows))
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(30):
            loop.run_until_complete(call())
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
