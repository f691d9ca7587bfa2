"""Cost of behaviour histories against max_len: history building + encoding time, training samples/s and peak
memory, per sequence encoder, on MovieLens-1M (examples/ml-1m-history/schema.yaml with max_len replaced).

What is measured
----------------
For each max_len: `prepare` of ML-1M with the history schema (computing the histories, fitting the encoders,
encoding and caching all splits; a fresh cache folder, so nothing is reused), in its own process. Then, per
encoder kind, in a fresh process each (so its peak RSS is its own): MMoE (embed 16) trained for --steps steps of
batch --batch-size on shuffled training rows (forward, HeadLosses, backward, Adam step), after --warmup steps;
samples/s = steps x batch / wall time of the timed steps. Peak RSS is the process's ru_maxrss (the split tensors
are part of it; they grow with max_len). Run it alone on the machine: it is a timing benchmark.

Usage:
  POLYREC_DATA=/path/to/data python benchmarks/sequence_cost.py [--max-lens 10,50,200]
      [--kinds none,mean,din,gru,lstm,bst] [--steps 100] [--warmup 10] [--batch-size 1024] [--threads 2]
      [--json-out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "examples" / "ml-1m-history" / "schema.yaml"


def schema_file(max_len: int | None, out: Path) -> Path:
    """The example schema with the history's max_len replaced (None: no history at all)."""
    import yaml

    s = yaml.safe_load(SCHEMA.read_text())
    if max_len is None:
        s.pop("history")
    else:
        s["history"][0]["max_len"] = max_len
    path = out / f"schema-{max_len}.yaml"
    path.write_text(yaml.safe_dump(s, sort_keys=False))
    return path


def _config(schema: Path, kind: str):
    from polyrec.config import load_config

    sets = ["data.dataset=movielens-1m", f"data.schema_file={schema}", "train.oov_dropout=0"]
    if kind not in ("none", "mean"):
        sets.append(f"model.sequence_encoder={kind}")
    return load_config(None, sets)


def one_prepare(schema: Path) -> dict:
    from polyrec.data.prepare import prepare

    cfg = _config(schema, "mean")
    start = time.perf_counter()
    data = prepare(cfg.data, seed=cfg.train.seed, log=lambda m: None)
    return {"prepare_s": time.perf_counter() - start, "rows": data.meta["rows"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def one_train(schema: Path, kind: str, steps: int, warmup: int, batch_size: int) -> dict:
    import torch

    from polyrec.data.batching import TensorTable
    from polyrec.data.prepare import prepare
    from polyrec.layers.sequence import resolve_sequence_encoders
    from polyrec.models import build_model
    from polyrec.train.losses import HeadLosses

    cfg = _config(schema, kind)
    data = prepare(cfg.data, seed=cfg.train.seed, log=lambda m: None)
    spec = data.model_spec()
    spec.sequence_encoders = resolve_sequence_encoders(cfg.model.sequence_encoder, cfg.model.sequences,
                                                       spec.sequence_fields, list(spec.sequence_sides))
    torch.manual_seed(0)
    model = build_model("mmoe", spec, 16, {})
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = HeadLosses(model.heads, spec.task_names)
    table = TensorTable(data.splits["train"])
    gen = torch.Generator().manual_seed(0)
    model.train()
    done, timed_start = 0, None
    while done < warmup + steps:
        for batch, labels in table.batches(batch_size, shuffle=True, generator=gen):
            if done == warmup:
                timed_start = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            losses(model(batch), labels).sum().backward()
            opt.step()
            done += 1
            if done >= warmup + steps:
                break
    wall = time.perf_counter() - timed_start
    return {"samples_per_s": steps * batch_size / wall, "step_ms": 1000 * wall / steps,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=os.environ)
    if out.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-lens", default="10,50,200")
    ap.add_argument("--kinds", default="none,mean,din,gru,lstm,bst")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json-out")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    if a.child:
        what, schema = a.child[0], Path(a.child[1])
        res = one_prepare(schema) if what == "prepare" else one_train(schema, what, a.steps, a.warmup, a.batch_size)
        print(json.dumps(res))
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["POLYREC_CACHE"] = str(Path(tmp) / "cache")
        common = ["--steps", str(a.steps), "--warmup", str(a.warmup), "--batch-size", str(a.batch_size),
                  "--threads", str(a.threads)]
        kinds = a.kinds.split(",")
        plan: list[tuple[int | None, list[str]]] = []
        if "none" in kinds:
            plan.append((None, ["none"]))
        plan += [(int(m), [k for k in kinds if k != "none"]) for m in a.max_lens.split(",")]
        for max_len, ks in plan:
            schema = schema_file(max_len, Path(tmp))
            prep = child(["--child", "prepare", str(schema), *common])
            for k in ks:
                r = child(["--child", k, str(schema), *common])
                results.append({"max_len": max_len, "kind": k, **r, "prepare_s": prep["prepare_s"],
                                "prepare_peak_rss_mb": prep["peak_rss_mb"]})
                print(f"max_len {max_len or '-':>4} {k:5s} prepare {prep['prepare_s']:6.1f} s "
                      f"(peak {prep['peak_rss_mb']:6.0f} MB)  train {r['samples_per_s']:9.0f} samples/s "
                      f"{r['step_ms']:7.1f} ms/step  peak {r['peak_rss_mb']:6.0f} MB", flush=True)
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
