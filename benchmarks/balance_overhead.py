"""Step-time overhead of each task balancer relative to `sum`, for MMoE and PLE.

What is measured
----------------
One training step exactly as polyrec's trainer runs it: forward, per-head losses (HeadLosses),
``zero_grad(set_to_none=True)``, ``balancer.backward(losses, extra, shared)``, ``optimizer.step()``
(the trainer's own ``build_optimizer``, Adam lr 1e-3, with the balancer's parameters added).
Batches are pre-sliced from the census-income training split (polyrec's ``prepare`` with
POLYREC_DATA; ``--dataset synthetic`` uses random data of the same shape: 32 categorical fields,
7 numeric, 2 binary tasks) so that data access is not part of the figure.

Every strategy has its own model (same seed, so the same initial weights), optimiser and balancer,
warmed up by ``--warmup`` steps. Then ``--rounds`` rounds each time one step of every strategy,
the order rotated every round, so that a neighbour loading a small shared machine slows the steps
of one round alike. Reported per strategy: the median and the 10th percentile (the least
disturbed steps: interference only ever slows a step down) of its step times; ``ratio``, the
median over rounds of (its step time / sum's step time in the same round); and ``ratio(p10)``,
its 10th percentile over sum's. ``fixed`` (all weights 1) does exactly what ``sum`` does, so its
distance from 1.00x shows how noisy the machine was.

The target (not a measurement): gradient-level strategies (gradnorm, pcgrad, metabalance) within
TARGET_RATIO x the step time of sum.

Usage:
  POLYREC_DATA=/path/to/data python benchmarks/balance_overhead.py [--dataset census-income|synthetic]
      [--models mmoe,ple] [--batch-size 1024] [--threads 2] [--rounds 60] [--warmup 3]
      [--json-out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

TARGET_RATIO = 3.0
GRADIENT_LEVEL = {"gradnorm", "pcgrad", "metabalance"}
STRATEGIES: list[tuple[str, str, dict]] = [  # label, balancer name, balance_params
    ("sum", "sum", {}),
    ("fixed", "fixed", {"weights": {}}),
    ("uncertainty", "uncertainty", {}),
    ("dwa", "dwa", {}),
    ("gradnorm(last)", "gradnorm", {}),
    ("gradnorm(all)", "gradnorm", {"layer": "all"}),
    ("pcgrad", "pcgrad", {}),
    ("metabalance(global)", "metabalance", {}),
    ("metabalance(parameter)", "metabalance", {"norm": "parameter"}),
]
MODELS = {
    "mmoe": {"n_experts": 8, "expert_dims": [64, 32], "tower_dims": [32]},
    "ple": {"n_levels": 2, "n_shared_experts": 2, "n_task_experts": 2, "expert_dims": [64], "tower_dims": [32]},
}
EMBED_DIM = 16


def census_batches(batch_size: int, n_batches: int, seed: int):
    from polyrec.config import DataConfig
    from polyrec.data.batching import TensorTable
    from polyrec.recipes import prepare

    data = prepare(DataConfig(dataset="census-income"), seed=seed, download=False, log=lambda s: None)
    table = TensorTable(data.splits["train"])
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for batch, labels in table.batches(batch_size, shuffle=True, generator=gen):
        if len(batch) == batch_size:
            batches.append((batch, labels))
        if len(batches) == n_batches:
            break
    return data.model_spec(), batches


def synthetic_batches(batch_size: int, n_batches: int, seed: int):
    from polyrec.data.batching import Batch
    from polyrec.data.spec import ModelSpec, TaskInfo

    g = torch.Generator().manual_seed(seed)
    vocab = [int(v) for v in torch.randint(4, 55, (31,), generator=g)] + [2]  # the last field: scenario
    spec = ModelSpec(vocab_sizes=vocab, categorical_fields=[f"c{i}" for i in range(32)],
                     numeric_fields=[f"x{i}" for i in range(7)], sequence_vocab={},
                     scenario_names=["<unknown>", "all"],
                     tasks=[TaskInfo("income", "binary"), TaskInfo("never_married", "binary")])
    batches = []
    for _ in range(n_batches):
        cats = torch.stack([torch.randint(0, v, (batch_size,), generator=g) for v in vocab], 1)
        cats[:, -1] = 1
        batch = Batch(cats.to(torch.int32), torch.randn(batch_size, 7, generator=g), {},
                      torch.ones(batch_size, dtype=torch.int64))
        labels = (torch.rand(batch_size, 2, generator=g) < torch.tensor([0.06, 0.43])).float()
        batches.append((batch, labels))
    return spec, batches


class Runner:
    """One strategy's model, optimiser and balancer, stepping like the trainer's inner loop."""

    def __init__(self, model_name: str, spec, balancer: str, params: dict, seed: int) -> None:
        from polyrec.balance import build_balancer
        from polyrec.config import TrainConfig
        from polyrec.models import build_model
        from polyrec.train.losses import HeadLosses
        from polyrec.train.optim import build_optimizer

        torch.manual_seed(seed)
        self.model = build_model(model_name, spec, EMBED_DIM, MODELS[model_name])
        self.losses = HeadLosses(self.model.heads, spec.task_names)
        self.balancer = build_balancer(balancer, self.losses.names, params,
                                       task_kinds=[h.kind for h in self.model.heads if h.train])
        self.optimizer = build_optimizer(self.model, TrainConfig(), self.balancer.parameters())
        self.shared = self.model.shared_parameters()
        self.i = 0

    def step(self, batches) -> None:
        batch, labels = batches[self.i % len(batches)]
        self.i += 1
        logits = self.model(batch)
        losses = self.losses(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.balancer.backward(losses, self.model.extra_loss(logits, labels), self.shared)
        self.optimizer.step()


def bench_model(model_name: str, spec, batches, args) -> list[dict]:
    runners = {label: Runner(model_name, spec, name, params, args.seed) for label, name, params in STRATEGIES}
    labels = list(runners)
    for runner in runners.values():
        for _ in range(args.warmup):
            runner.step(batches)
    times: dict[str, list[float]] = {label: [] for label in labels}  # one timed step per round, ms
    for r in range(args.rounds):
        shift = r % len(labels)
        for label in labels[shift:] + labels[:shift]:
            t0 = time.perf_counter()
            runners[label].step(batches)
            times[label].append((time.perf_counter() - t0) * 1e3)

    def p10(xs: list[float]) -> float:
        return statistics.quantiles(xs, n=10, method="inclusive")[0] if len(xs) > 1 else xs[0]

    rows = []
    for label, name, _ in STRATEGIES:
        ms = times[label]
        finite = all(torch.isfinite(p).all() for p in runners[label].model.parameters())
        rows.append({"model": model_name, "strategy": label, "balancer": name, "steps_timed": len(ms),
                     "ms_median": statistics.median(ms), "ms_p10": p10(ms),
                     "ratio": statistics.median(m / s for m, s in zip(ms, times["sum"])),
                     "ratio_p10": p10(ms) / p10(times["sum"]),
                     "gradient_level": name in GRADIENT_LEVEL, "params_finite": bool(finite),
                     "final_weights": [round(w, 4) for w in runners[label].balancer.weights.tolist()],
                     "ms_all": ms})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=["census-income", "synthetic"], default="census-income")
    ap.add_argument("--models", default="mmoe,ple")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json-out")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    n_batches = 16
    if args.dataset == "census-income":
        spec, batches = census_batches(args.batch_size, n_batches, args.seed)
    else:
        spec, batches = synthetic_batches(args.batch_size, n_batches, args.seed)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    rows = []
    for model_name in args.models.split(","):
        rows += bench_model(model_name, spec, batches, args)
    load1 = os.getloadavg()

    print(f"balance overhead: {args.dataset}, batch {args.batch_size}, {args.threads} threads, torch "
          f"{torch.__version__}; {args.rounds} rounds of one timed step per strategy (+{args.warmup} warm-up "
          f"steps each); {time.perf_counter() - t0:.0f} s; "
          f"load average {load0[0]:.1f} -> {load1[0]:.1f} on {os.cpu_count()} CPUs")
    print("ms/step: median and 10th percentile over the rounds; ratio: median over the rounds of (step / sum's "
          "step in the same round); ratio(p10): p10 / sum's p10; `fixed` does exactly sum's work, so its "
          "distance from 1.00x is the noise")
    print(f"target for gradient-level strategies: ratio <= {TARGET_RATIO:g}x")
    header = (f"{'model':<6} {'strategy':<24} {'ms/step':>8} {'p10':>8} {'ratio':>7} {'ratio(p10)':>10}  "
              f"target  final weights")
    print(header)
    print("-" * len(header))
    for row in rows:
        verdict = ""
        if row["gradient_level"]:
            verdict = "ok" if row["ratio"] <= TARGET_RATIO else "MISSED"
        print(f"{row['model']:<6} {row['strategy']:<24} {row['ms_median']:>8.2f} {row['ms_p10']:>8.2f} "
              f"{row['ratio']:>6.2f}x {row['ratio_p10']:>9.2f}x  {verdict:<6}  {row['final_weights']}")
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump({"args": vars(args), "load_average": [load0, load1], "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
