"""A synthetic multi-scenario, multi-task interaction log of any size, with a planted (known) signal.

Why: scaling work (sharded reading, hashed ids, distributed training) needs logs of 10^8+ rows that nobody has
to download, and a model-quality check needs a ground truth. `polyrec datasets synth` writes one:

  - every random number is a pure function of (seed, row or entity id, stream): a counter-based generator
    (splitmix64 over the index), so the output depends on the arguments only, never on --chunk-rows, and a
    chunk is generated without any state from the previous ones (memory flat in the row count; nothing of size
    users or items is held either: latent vectors are recomputed from the id);
  - user and item ids follow a bounded Zipf-like law (inverse CDF of a continuous power law truncated to
    [1, N]: rank 1 is the most popular id);
  - each user has a home scenario (70% of their rows), the others are drawn with a geometric skew;
  - labels come from a planted logistic model: a user/item latent dot product shared by all tasks (so
    multi-task sharing helps), a task-specific one, user / item / category biases, a price effect and
    per-(scenario, task) offsets. task0 is a click; every later task is nested in it (task_k = 1 only where
    task0 = 1, like a conversion: CTR / CTCVR), its true probability p0 * p_k;
  - the Bayes AUC of each task (the true probability as the score, against the generated labels) is measured
    chunk-wise from per-class histograms of the true probability (4096 bins; exact up to ties within a bin)
    and written to synth.json: a trained model should approach it from below.

Output folder: part-00000.parquet, ... (one shard per chunk), schema.yaml (a polyrec schema reading them) and
synth.json (arguments, rows per shard, positive rates, Bayes AUCs). `polyrec train --data DIR --schema
DIR/schema.yaml` trains on it directly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from polyrec.errors import PolyrecError
from polyrec.utils.io import _umask, atomic_directory

DIM = 8  # latent dimension of the shared user/item interaction
TASK_DIM = 4  # latent dimension of each task's own interaction
USER_ZIPF, ITEM_ZIPF = 0.9, 1.1  # power-law exponents of id popularity
HOME_SHARE = 0.7  # share of a user's rows in their home scenario
N_SEGMENTS = 4
AUC_BINS = 4096
MAX_TASKS = 16  # the random streams of an entity (see Generator.user_part) stay below 250
T0 = 1_700_000_000  # first timestamp (unix seconds); one row per second after it

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_STREAMS = np.uint64(256)  # stream numbers per index (streams < 256)
_DOMAINS = {"row": 1, "user": 2, "item": 3, "category": 4, "scenario": 5, "split": 6}  # split: polyrec.data.chunked


def _splitmix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 with good avalanche (uint64 arithmetic wraps)."""
    with np.errstate(over="ignore"):
        z = x + _GAMMA
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))


class Streams:
    """Counter-based random numbers: uniform(domain, index, stream) is a pure function of the seed and its
    arguments, so any chunking of the rows (and any order of generation) gives the same values."""

    def __init__(self, seed: int) -> None:
        base = _splitmix(np.array([seed & 0xFFFFFFFFFFFFFFFF], np.uint64))[0]
        self.keys = {d: _splitmix(np.array([base ^ np.uint64(tag)], np.uint64))[0] for d, tag in _DOMAINS.items()}

    def bits(self, domain: str, index: np.ndarray, stream: int) -> np.ndarray:
        with np.errstate(over="ignore"):
            x = index.astype(np.uint64) * _STREAMS + np.uint64(stream)
        return _splitmix(x ^ self.keys[domain])

    def uniform(self, domain: str, index: np.ndarray, stream: int) -> np.ndarray:
        """In the open interval (0, 1)."""
        return ((self.bits(domain, index, stream) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53

    def normal(self, domain: str, index: np.ndarray, stream: int) -> np.ndarray:
        """Standard normal (Box-Muller over streams 2k, 2k + 1)."""
        u1, u2 = self.uniform(domain, index, 2 * stream), self.uniform(domain, index, 2 * stream + 1)
        return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)

    def normals(self, domain: str, index: np.ndarray, first: int, k: int) -> np.ndarray:
        """[len(index), k] standard normals from streams first .. first + k - 1."""
        return np.stack([self.normal(domain, index, first + j) for j in range(k)], axis=1)


def zipf_ranks(u: np.ndarray, n: int, a: float) -> np.ndarray:
    """0-based ids in [0, n) with P(rank r) ~ r^-a: the inverse CDF of a power law on [1, n + 1) (vectorised, no
    table of size n)."""
    if n == 1:
        return np.zeros(len(u), np.int64)
    e = 1.0 - a
    x = ((n + 1.0) ** e - 1.0) * u + 1.0
    r = np.log(x) if abs(e) < 1e-12 else x ** (1.0 / e)
    return np.clip(np.floor(r).astype(np.int64) - 1, 0, n - 1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class Generator:
    """The planted model and the row generator. `chunk(start, n)` gives rows start .. start + n - 1."""

    def __init__(self, users: int, items: int, scenarios: int, tasks: int, seed: int) -> None:
        self.users, self.items, self.scenarios, self.tasks, self.seed = users, items, scenarios, tasks, seed
        self.categories = max(1, min(50, items))
        self.rng = Streams(seed)
        sidx = np.arange(scenarios)
        # per-(scenario, task) offsets; task0 around a 20% click rate, nested tasks around 30% given a click
        base = np.array([-1.8] + [-1.2] * (tasks - 1))
        self.offsets = base[None, :] + 0.5 * self.rng.normals("scenario", sidx, 0, tasks)  # [S, T]
        # the scenario mix: geometric weights (s0 the largest)
        w = 0.7 ** sidx
        self.scenario_cdf = np.cumsum(w / w.sum())

    # --- entity attributes, recomputed from the id (nothing of size users / items is stored) -------------
    def user_part(self, uid: np.ndarray) -> dict[str, np.ndarray]:
        r = self.rng
        return {"vec": r.normals("user", uid, 0, DIM), "task": r.normals("user", uid, DIM, TASK_DIM * self.tasks),
                "bias": 0.5 * r.normal("user", uid, DIM + TASK_DIM * self.tasks),
                "home": (r.bits("user", uid, 250) % np.uint64(self.scenarios)).astype(np.int64),
                "segment": (r.bits("user", uid, 251) % np.uint64(N_SEGMENTS)).astype(np.int64)}

    def item_part(self, iid: np.ndarray) -> dict[str, np.ndarray]:
        r = self.rng
        return {"vec": r.normals("item", iid, 0, DIM), "task": r.normals("item", iid, DIM, TASK_DIM * self.tasks),
                "bias": 0.5 * r.normal("item", iid, DIM + TASK_DIM * self.tasks),
                "log_price": 3.0 + 0.8 * r.normal("item", iid, DIM + TASK_DIM * self.tasks + 1)}

    def chunk(self, start: int, n: int) -> tuple[pa.Table, np.ndarray]:
        """Rows start .. start + n - 1 as an Arrow table, and their true probabilities [n, T]."""
        r = self.rng
        row = np.arange(start, start + n, dtype=np.int64)
        uid = zipf_ranks(r.uniform("row", row, 0), self.users, USER_ZIPF)
        iid = zipf_ranks(r.uniform("row", row, 1), self.items, ITEM_ZIPF)
        u, it = self.user_part(uid), self.item_part(iid)
        other = np.minimum(np.searchsorted(self.scenario_cdf, r.uniform("row", row, 2)), self.scenarios - 1)
        scen = np.where(r.uniform("row", row, 3) < HOME_SHARE, u["home"], other)
        cat = iid % self.categories
        cat_bias = 0.4 * r.normal("category", cat, 0)
        price = np.exp(it["log_price"] + 0.1 * r.normal("row", row, 3))  # streams 6, 7
        price_z = (np.log(price) - 3.0) / 0.8
        shared = (u["vec"] * it["vec"]).sum(1) / np.sqrt(DIM)
        probs = np.empty((n, self.tasks))
        labels = np.empty((n, self.tasks), np.int8)
        for t in range(self.tasks):
            own = (u["task"][:, t * TASK_DIM:(t + 1) * TASK_DIM] * it["task"][:, t * TASK_DIM:(t + 1) * TASK_DIM]
                   ).sum(1) / np.sqrt(TASK_DIM)
            logit = (self.offsets[scen, t] + 0.9 * shared + 0.6 * own + u["bias"] + it["bias"] + cat_bias
                     - (0.4 if t == 0 else 0.2) * price_z)
            p = _sigmoid(logit)
            y = r.uniform("row", row, 10 + t) < p
            if t == 0:
                probs[:, 0], labels[:, 0] = p, y
            else:  # nested in task0 (a conversion needs a click)
                probs[:, t], labels[:, t] = probs[:, 0] * p, y & (labels[:, 0] == 1)
        names = pa.array([f"s{k}" for k in range(self.scenarios)], pa.string())
        segs = pa.array([f"g{k}" for k in range(N_SEGMENTS)], pa.string())
        cols: dict[str, pa.Array] = {
            "user_id": pa.array(uid), "item_id": pa.array(iid), "scenario": names.take(pa.array(scen)),
            "category": pa.array(cat.astype(np.int32)), "segment": segs.take(pa.array(u["segment"])),
            "price": pa.array(np.round(price, 2)), "ts": pa.array(T0 + row),
        }
        cols.update({f"task{t}": pa.array(labels[:, t]) for t in range(self.tasks)})
        return pa.table(cols), probs


class AucHistogram:
    """Per-class histograms of a score in [0, 1]: the AUC of many chunks without keeping their rows."""

    def __init__(self, bins: int = AUC_BINS) -> None:
        self.bins = bins
        self.pos = np.zeros(bins, np.int64)
        self.neg = np.zeros(bins, np.int64)

    def add(self, score: np.ndarray, label: np.ndarray) -> None:
        b = np.minimum((score * self.bins).astype(np.int64), self.bins - 1)
        y = label.astype(bool)
        self.pos += np.bincount(b[y], minlength=self.bins)
        self.neg += np.bincount(b[~y], minlength=self.bins)

    def auc(self) -> float | None:
        """P(score of a positive > score of a negative), ties within a bin counted one half; None without both."""
        p, q = int(self.pos.sum()), int(self.neg.sum())
        if p == 0 or q == 0:
            return None
        below = np.cumsum(self.neg) - self.neg
        return float((self.pos * (below + 0.5 * self.neg)).sum() / (p * q))


def schema_dict(tasks: int) -> dict[str, Any]:
    """The polyrec schema of the generated shards."""
    return {
        "features": [{"name": "user_id", "type": "categorical"}, {"name": "item_id", "type": "categorical"},
                     {"name": "category", "type": "categorical"}, {"name": "segment", "type": "categorical"},
                     {"name": "price", "type": "numeric", "scale": "log_standard"}],
        "scenario": {"name": "scenario"},
        "tasks": [{"name": f"task{t}", "type": "binary"} for t in range(tasks)],
        "user": "user_id", "item": "item_id", "time": "ts",
    }


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise PolyrecError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}.")
    return int(value)


def synthesize(out: str | Path, rows: int, users: int, items: int, scenarios: int = 3, tasks: int = 2,
               seed: int = 0, chunk_rows: int = 1_000_000, log: Callable[[str], None] | None = None
               ) -> dict[str, Any]:
    """Write the synthetic log to `out` (see the module docstring); returns what synth.json holds."""
    for name, v in (("rows", rows), ("users", users), ("items", items), ("scenarios", scenarios),
                    ("tasks", tasks), ("chunk_rows", chunk_rows)):
        _positive(name, v)
    if tasks > MAX_TASKS:
        raise PolyrecError(f"--tasks must be at most {MAX_TASKS}, got {tasks}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise PolyrecError(f"--seed must be a non-negative integer, got {seed!r}.")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PolyrecError(f"{out} already exists and is not an empty folder: choose a new --out (nothing written).")
    gen = Generator(users, items, scenarios, tasks, seed)
    hists = [AucHistogram() for _ in range(tasks)]
    positives = np.zeros(tasks, np.int64)
    shards: list[int] = []
    started = time.time()

    def build(tmp: Path) -> None:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700; the folder should be as readable as any other
        for k, start in enumerate(range(0, rows, chunk_rows)):
            n = min(chunk_rows, rows - start)
            table, probs = gen.chunk(start, n)
            for t in range(tasks):
                y = table[f"task{t}"].to_numpy()
                hists[t].add(probs[:, t], y)
                positives[t] += int(y.sum())
            pq.write_table(table, tmp / f"part-{k:05d}.parquet")
            shards.append(n)
            if log is not None and (k + 1) % 10 == 0:
                log(f"  {start + n} / {rows} rows")
            del table, probs
        import yaml

        (tmp / "schema.yaml").write_text(yaml.safe_dump(schema_dict(tasks), sort_keys=False))
        info.update({
            "shards": len(shards), "rows_per_shard": shards,
            "positive_rate": {f"task{t}": round(float(positives[t]) / rows, 6) for t in range(tasks)},
            "bayes_auc": {f"task{t}": None if hists[t].auc() is None else round(hists[t].auc(), 6)
                          for t in range(tasks)},
            "seconds": round(time.time() - started, 2),
        })
        (tmp / "synth.json").write_text(json.dumps(info, indent=2) + "\n")

    info: dict[str, Any] = {
        "generator": "polyrec.data.synth", "format": 1,
        "arguments": {"rows": rows, "users": users, "items": items, "scenarios": scenarios, "tasks": tasks,
                      "seed": seed, "chunk_rows": chunk_rows},
        "model": {"dim": DIM, "task_dim": TASK_DIM, "user_zipf": USER_ZIPF, "item_zipf": ITEM_ZIPF,
                  "home_share": HOME_SHARE, "categories": gen.categories, "segments": N_SEGMENTS,
                  "nested": "task_k (k >= 1) = 1 only where task0 = 1; true probability p0 * p_k"},
    }
    atomic_directory(out, build)
    return info
