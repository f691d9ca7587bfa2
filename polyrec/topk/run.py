"""A top-K run end to end, and `recommend` on a finished one.

Same run-folder layout as CTR-style runs (config.yaml, spec.json, metrics.jsonl, steps.jsonl,
metrics.json, model.safetensors, checkpoint.pt), so `polyrec bench` aggregates and reports top-K runs
like any other. metrics.json holds {"val": ..., "test": ...}, each {"heads": {task: {recall@K, ndcg@K,
hit@K, mrr@K, users}}}: items are always ranked by the target task's score; a task's relevant items are
that split's interactions with the task's label 1.

Nothing but ids and sizes is stored about the data: loading a run re-reads the dataset with the run's
config (the split is seeded, so it is the same one) and checks that the user/item index is unchanged.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from polyrec.balance import balancer_for_heads
from polyrec.config import RunConfig, load_config
from polyrec.errors import PolyrecError, close_matches
from polyrec.topk.data import load_topk
from polyrec.topk.models.base import TopKInfo, TopKModel, build_topk_model
from polyrec.topk.negatives import NegativeSampler
from polyrec.topk.trainer import (PairwiseTable, PointwiseTable, TopKTrainer, TrainingView, evaluate_topk,
                                  score_matrix)
from polyrec.topk.types import TopKData
from polyrec.train.trainer import WEIGHTS
from polyrec.utils.io import atomic_write_text, read_json

DEFAULT_CTR_MONITOR = "overall/mean_auc"


def topk_train_config(cfg: RunConfig, target: str, model: TopKModel):
    """The train section as a top-K run uses it: monitor defaults to the target's NDCG@20 on validation;
    embeddings always take dense updates (message passing reads whole tables every step); a model with a
    `default_balance` (waata: MetaBalance, target = the target task) gets it when train.balance is auto."""
    k = min(cfg.topk.ks, key=lambda x: (abs(x - 20), x))  # NDCG@20, or the K nearest to it
    update: dict[str, Any] = {"sparse_embeddings": False}
    if cfg.train.monitor == DEFAULT_CTR_MONITOR:
        update["monitor"] = f"{target}/ndcg@{k}"
    if cfg.train.balance == "auto":
        if model.default_balance:
            update["balance"] = model.default_balance
            update["balance_params"] = {"target": target, **cfg.train.balance_params}
        else:
            update["balance"] = "sum"
    return cfg.train.model_copy(update=update)


def load_data(cfg: RunConfig, download: bool = True, log: Callable[[str], None] = print) -> TopKData:
    tk = cfg.topk
    seed = cfg.data.split_seed if cfg.data.split_seed is not None else cfg.train.seed
    return load_topk(cfg.data.dataset, tasks=tk.tasks, like_threshold=tk.like_threshold, split=tk.split,
                     ratios=tk.ratios, seed=seed, with_kg=tk.kg, download=download, log=log,
                     kg_files=(tk.kg_triples, tk.kg_links) if tk.kg_triples else None)


def build_for(cfg: RunConfig, data: TopKData) -> TopKModel:
    info = TopKInfo(n_users=data.n_users, n_items=data.n_items, task_names=data.task_names, graph=data.graph)
    return build_topk_model(cfg.model.name, info, cfg.model.embed_dim, cfg.model.params())


def _index_fingerprint(data: TopKData) -> dict[str, Any]:
    return {"dataset": data.dataset, "n_users": data.n_users, "n_items": data.n_items,
            "task_names": data.task_names, "graph_edges": len(data.graph) if data.graph is not None else 0}


def train_topk_run(cfg: RunConfig, run_dir: Path, resume: bool = False, log: Callable[[str], None] = print,
                   progress_factory: Callable[[int], Any] | None = None, download: bool = True,
                   epoch_callback: Callable[[dict[str, Any], list[dict[str, Any]]], None] | None = None,
                   evaluate_test: bool = True):
    """Reached through `train_run` (a config with a `topk` section), which holds the run folder and checked it."""
    from polyrec.train.run import RunResult, _seed_everything, run_summary, write_run_files  # noqa: I001

    assert cfg.topk is not None
    run_dir = Path(run_dir)
    data = load_data(cfg, download=download, log=log)
    counts = ", ".join(f"{k} {len(v):,}" for k, v in data.splits.items())
    log(f"{data.dataset}: {data.n_users:,} users, {data.n_items:,} items; {counts} interactions; tasks "
        f"{data.task_names} (ranked by {data.target})"
        + (f"; CKG {data.graph.n_entities:,} entities, {len(data.graph):,} edges" if data.graph is not None else ""))
    _seed_everything(cfg.train.seed)
    model = build_for(cfg, data)
    train_cfg = topk_train_config(cfg, data.target, model)
    view = TrainingView(model)
    balancer = balancer_for_heads(train_cfg.balance, view.heads, train_cfg.balance_params)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model {cfg.model.name}: {n_params:,} parameters; heads {[h.name for h in model.heads]}; "
        f"{'pairwise (BPR)' if model.pairwise else 'pointwise (BCE per head)'}; balance {train_cfg.balance}"
        f"{train_cfg.balance_params or ''}; monitor {train_cfg.monitor}")
    sampler = NegativeSampler(data.n_items, data.splits["train"].user, data.splits["train"].item,
                              strategy=cfg.topk.sampler)
    table_cls = PairwiseTable if model.pairwise else PointwiseTable
    table = table_cls(data.splits["train"], sampler, cfg.topk.negatives)
    trainer = TopKTrainer(view, train_cfg, balancer, data, cfg.topk.ks, cfg.topk.eval_users_chunk, run_dir, log)
    if not resume:
        trainer.check_monitor(None, [])
        write_run_files(run_dir, cfg, {
            "kind": "topk", "model": cfg.model.name, "embed_dim": cfg.model.embed_dim, "params": cfg.model.params(),
            "heads": [h.__dict__ for h in model.heads], "ranking_head": model.ranking_head,
            "index": _index_fingerprint(data), "data_meta": data.meta})
    t0 = time.perf_counter()
    fit = trainer.fit(table, None, [], resume=resume, progress_factory=progress_factory,
                      epoch_callback=epoch_callback)
    scores = score_matrix(model, data.n_users, cfg.topk.eval_users_chunk)
    splits = ("val", "test") if evaluate_test else ("val",)
    metrics = {s: evaluate_topk(model, data, s, cfg.topk.ks, cfg.topk.eval_users_chunk, scores) for s in splits}
    result = run_summary(data.dataset, cfg, train_cfg.monitor, fit, n_params, t0,
                         {k: len(v) for k, v in data.splits.items()}, data.meta.get("notes", []), metrics,
                         kind="topk", balance=train_cfg.balance)
    atomic_write_text(run_dir / "metrics.json", json.dumps(result, indent=1))
    return RunResult(run_dir, result, fit.history)


# --- a finished run --------------------------------------------------------------------------------------
@dataclass
class LoadedTopKRun:
    run_dir: Path
    config: RunConfig
    data: TopKData
    model: TopKModel


def load_topk_run(run_dir: str | Path, log: Callable[[str], None] = print) -> LoadedTopKRun:
    from polyrec.train.run import load_state

    run_dir = Path(run_dir)
    for name in ("config.yaml", "spec.json", WEIGHTS):
        if not (run_dir / name).exists():
            raise PolyrecError(f"{run_dir} is not a finished polyrec run: {name} is missing.")
    info = read_json(run_dir / "spec.json")
    if info.get("kind") != "topk":
        raise PolyrecError(f"{run_dir} is a CTR-style run, not a top-K run; use `polyrec predict` for it.")
    cfg = load_config(run_dir / "config.yaml")
    data = load_data(cfg, download=False, log=log)
    if _index_fingerprint(data) != info["index"]:
        raise PolyrecError(f"The dataset now indexes users/items differently from when {run_dir} was trained "
                           "(source files changed); its recommendations would be meaningless.")
    model = build_for(cfg, data)
    view = TrainingView(model)
    load_state(view, run_dir / WEIGHTS)
    model.eval()
    return LoadedTopKRun(run_dir, cfg, data, model)


def recommend(run: LoadedTopKRun, user: str, k: int = 20, keep_test: bool = False) -> list[dict[str, Any]]:
    """Top-k items for a raw user id, never an item the user has already rated (in any split).

    `keep_test=True` leaves the user's test-split items in the ranking, as the test metrics do, so the
    hits those metrics count can be seen.
    """
    data = run.data
    index = {str(u): i for i, u in enumerate(data.user_ids)}
    if str(user) not in index:
        raise PolyrecError(f"Unknown user {user!r} for {data.dataset}.{close_matches(str(user), list(index))} "
                           f"Users are ids like {', '.join(map(str, data.user_ids[:3]))}.")
    if k < 1:
        raise PolyrecError(f"--k must be >= 1, got {k}")
    u = index[str(user)]
    with torch.inference_mode():
        scores = run.model.score_all(torch.tensor([u]), run.model.encode())[0].float()
        seen = ("train", "val") if keep_test else ("train", "val", "test")
        for inter in (data.splits[name] for name in seen):
            scores[torch.from_numpy(inter.item[inter.user == u].astype("int64"))] = -torch.inf
        k = min(k, int(torch.isfinite(scores).sum()))
        top = torch.topk(scores, k)
    return [{"rank": r + 1, "item_id": data.item_ids[i], "title": data.item_titles[i], "score": float(s)}
            for r, (s, i) in enumerate(zip(top.values.tolist(), top.indices.tolist()))]


__all__ = ["train_topk_run", "load_topk_run", "recommend", "evaluate_topk", "score_matrix"]
