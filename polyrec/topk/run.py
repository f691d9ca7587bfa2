"""Top-K runs (one of the two run kinds, polyrec.train.kind), and `recommend` on a finished one.

The data come through the one data path (polyrec.topk.data); the loop is the one Trainer with a
PairTrainable model and full-ranking validation injected as its evaluator. Same run-folder layout as
CTR-style runs (config.yaml, spec.json, metrics.jsonl, steps.jsonl,
metrics.json, model.safetensors, checkpoint.pt), so `polyrec bench` aggregates and reports top-K runs
like any other. metrics.json holds {"val": ..., "test": ...}, each {"heads": {task: {recall@K, ndcg@K,
hit@K, mrr@K, users}}}: items are always ranked by the target task's score; a task's relevant items are
that split's interactions with the task's label 1.

Nothing but ids and sizes is stored about the data: loading a run re-reads the dataset with the run's
config (the split is seeded, so it is the same one) and checks that the user/item index is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from polyrec.balance import balancer_for_heads
from polyrec.config import RunConfig, load_config
from polyrec.errors import PolyrecError, close_matches
from polyrec.topk.data import load_topk
from polyrec.topk.models import TOPK_MODELS, TopKInfo, TopKModel, build_topk_model, topk_model_params
from polyrec.topk.seqtrain import SequenceTable, SequenceTrainable
from polyrec.topk.sequences import check_sequential, user_sequences
from polyrec.topk.negatives import NegativeSampler
from polyrec.topk.trainer import (PairTrainable, PairwiseTable, PointwiseTable, eval_users, evaluate_topk,
                                  ranking_evaluator, score_matrix)
from polyrec.data.interactions import TopKData
from polyrec.train.checkpoint import load_state
from polyrec.train.kind import Built, RunKind
from polyrec.train.trainer import WEIGHTS, Trainer
from polyrec.utils.io import read_json

DEFAULT_CTR_MONITOR = "overall/mean_auc"


def topk_train_config(cfg: RunConfig, target: str, model: TopKModel):
    """The train section as a top-K run uses it: monitor defaults to the target's NDCG@20 on validation;
    embeddings always take dense updates (message passing reads whole tables every step); a model with a
    `default_balance` (waata: MetaBalance, target = the target task) gets it when train.balance is auto; no
    OOV dropout (every user and item of the data has its own index: there is no OOV row)."""
    k = min(cfg.topk.ks, key=lambda x: (abs(x - 20), x))  # NDCG@20, or the K nearest to it
    update: dict[str, Any] = {"sparse_embeddings": False, "oov_dropout": 0.0}
    if cfg.train.monitor == DEFAULT_CTR_MONITOR:
        update["monitor"] = f"{target}/ndcg@{k}"
    if cfg.train.balance == "auto":
        if model.default_balance:
            update["balance"] = model.default_balance
            update["balance_params"] = {"target": target, **cfg.train.balance_params}
        else:
            update["balance"] = "sum"
    return cfg.train.model_copy(update=update)


def is_sequential(name: str) -> bool:
    """A next-item model (gru4rec, sasrec, ...): trained on users' sequences, evaluated leave-last-out."""
    return name in TOPK_MODELS and getattr(TOPK_MODELS[name], "sequential", False)


def build_for(cfg: RunConfig, data: TopKData) -> TopKModel:
    sequences = None
    if is_sequential(cfg.model.name):
        check_sequential(data, cfg.model.name)
        sequences = user_sequences(data)
    info = TopKInfo(n_users=data.n_users, n_items=data.n_items, task_names=data.task_names, graph=data.graph,
                    sequences=sequences)
    return build_topk_model(cfg.model.name, info, cfg.model.embed_dim, cfg.model.params())


def _index_fingerprint(data: TopKData) -> dict[str, Any]:
    return {"dataset": data.dataset, "n_users": data.n_users, "n_items": data.n_items,
            "task_names": data.task_names, "graph_edges": len(data.graph) if data.graph is not None else 0}


class TopKKind(RunKind):
    """Users x items: rank every item for every user, judged by Recall/NDCG/Hit/MRR@K on held-out interactions."""

    name = "topk"

    def validate_model(self, cfg: RunConfig) -> None:
        topk_model_params(cfg.model.name, cfg.model.params())
        if cfg.train.loss_reduction != "task":
            raise PolyrecError("train.loss_reduction=scenario_task needs scenarios; top-K runs have none.")
        if is_sequential(cfg.model.name) and cfg.data.split not in (None, "leave_last_out"):
            raise PolyrecError(f"Model {cfg.model.name!r} predicts each user's next item and is evaluated "
                               f"leave-last-out: set data.split=leave_last_out (not {cfg.data.split}).")

    def prepare(self, cfg: RunConfig, download: bool, log: Callable[[str], None], evaluate_test: bool) -> TopKData:
        data = load_topk(cfg, download=download, log=log)
        counts = ", ".join(f"{k} {len(v):,}" for k, v in data.splits.items())
        log(f"{data.dataset}: {data.n_users:,} users, {data.n_items:,} items; {counts} interactions; tasks "
            f"{data.task_names} (ranked by {data.target})"
            + (f"; CKG {data.graph.n_entities:,} entities, {len(data.graph):,} edges" if data.graph is not None else ""))
        return data

    def build(self, cfg: RunConfig, data: TopKData, run_dir: Path, log: Callable[[str], None]) -> Built:
        tk = cfg.topk
        model = build_for(cfg, data)
        train_cfg = topk_train_config(cfg, data.target, model)
        trainable = SequenceTrainable(model) if getattr(model, "sequential", False) else PairTrainable(model)
        balancer = balancer_for_heads(train_cfg.balance, trainable.heads, train_cfg.balance_params)
        n_params = sum(p.numel() for p in model.parameters())
        sequential = getattr(model, "sequential", False)
        loss = (f"next item at every position ({model.params.loss}), max_len {model.params.max_len}" if sequential
                else 'pairwise (BPR)' if model.pairwise else 'pointwise (BCE per head)')
        log(f"model {cfg.model.name}: {n_params:,} parameters; heads {[h.name for h in model.heads]}; "
            f"{loss}; balance {train_cfg.balance}{train_cfg.balance_params or ''}; monitor {train_cfg.monitor}")
        sampler = NegativeSampler(data.n_items, data.splits["train"].user, data.splits["train"].item,
                                  strategy=tk.sampler)
        if sequential:
            table = SequenceTable(model.sequences, sampler, model.params.max_len, model.pad, model.params.loss)
        else:
            table = (PairwiseTable if model.pairwise else PointwiseTable)(data.splits["train"], sampler, tk.negatives)
        evaluate = ranking_evaluator(model, data, tk.ks, tk.eval_users_chunk, eval_users(data, tk.eval_users))
        trainer = Trainer(trainable, train_cfg, balancer, evaluate, run_dir, log)
        spec = {"kind": self.name, "model": cfg.model.name, "embed_dim": cfg.model.embed_dim,
                "params": cfg.model.params(), "heads": [h.__dict__ for h in model.heads],
                "ranking_head": model.ranking_head, "index": _index_fingerprint(data), "data_meta": data.meta}
        return Built(trainable, trainer, table, train_cfg, spec, None, n_params, model.params.model_dump(mode="json"),
                     {"kind": self.name, "balance": train_cfg.balance})

    def evaluate(self, cfg: RunConfig, built: Built, data: TopKData, splits: tuple[str, ...]) -> dict[str, Any]:
        tk, model = cfg.topk, built.model.model
        users = eval_users(data, tk.eval_users)
        if getattr(model, "sequential", False):  # the input sequence depends on the split (val: train items only)
            return {s: evaluate_topk(model, data, s, tk.ks, tk.eval_users_chunk, users=users) for s in splits}
        scores = score_matrix(model, data.n_users, tk.eval_users_chunk, users)
        return {s: evaluate_topk(model, data, s, tk.ks, tk.eval_users_chunk, scores, users) for s in splits}

    def describe(self, data: TopKData) -> tuple[str, Any, list[str]]:
        return data.dataset, {k: len(v) for k, v in data.splits.items()}, data.meta.get("notes", [])

    def load(self, run_dir: Path, log: Callable[[str], None] = print) -> "LoadedTopKRun":
        return load_topk_run(run_dir, log)

    def evaluate_folder(self, run_dir: Path, split: str, log: Callable[[str], None]) -> dict[str, Any]:
        run = load_topk_run(run_dir, log=log)
        tk = run.config.topk
        return evaluate_topk(run.model, run.data, split, tk.ks, tk.eval_users_chunk,
                             users=eval_users(run.data, tk.eval_users))


# --- a finished run --------------------------------------------------------------------------------------
@dataclass
class LoadedTopKRun:
    run_dir: Path
    config: RunConfig
    data: TopKData
    model: TopKModel


def load_topk_run(run_dir: str | Path, log: Callable[[str], None] = print) -> LoadedTopKRun:
    run_dir = Path(run_dir)
    for name in ("config.yaml", "spec.json", WEIGHTS):
        if not (run_dir / name).exists():
            raise PolyrecError(f"{run_dir} is not a finished polyrec run: {name} is missing.")
    info = read_json(run_dir / "spec.json")
    if info.get("kind") != "topk":
        raise PolyrecError(f"{run_dir} is a CTR-style run, not a top-K run; use `polyrec predict` for it.")
    cfg = load_config(run_dir / "config.yaml")
    data = load_topk(cfg, download=False, log=log)
    if _index_fingerprint(data) != info["index"]:
        raise PolyrecError(f"The dataset now indexes users/items differently from when {run_dir} was trained "
                           "(source files changed); its recommendations would be meaningless.")
    model = build_for(cfg, data)
    load_state(SequenceTrainable(model) if getattr(model, "sequential", False) else PairTrainable(model),
               run_dir / WEIGHTS)
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
    if getattr(run.model, "sequential", False):  # next items after everything the user did (or before test)
        run.model.set_history("test" if keep_test else "all")
    with torch.inference_mode():
        scores = run.model.score_all(torch.tensor([u]), run.model.encode())[0].float()
        seen = ("train", "val") if keep_test else ("train", "val", "test")
        for inter in (data.splits[name] for name in seen):
            scores[torch.from_numpy(inter.item[inter.user == u].astype("int64"))] = -torch.inf
        k = min(k, int(torch.isfinite(scores).sum()))
        top = torch.topk(scores, k)
    return [{"rank": r + 1, "item_id": data.item_ids[i], "title": data.item_titles[i], "score": float(s)}
            for r, (s, i) in enumerate(zip(top.values.tolist(), top.indices.tolist()))]


__all__ = ["TopKKind", "load_topk_run", "recommend", "evaluate_topk", "score_matrix"]
