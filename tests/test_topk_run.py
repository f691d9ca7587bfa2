"""Top-K runs end to end on a tiny synthetic dataset with a knowledge graph (the loader is replaced, so
these tests exercise training, resume, evaluation, recommend and bench without the real files)."""

import json

import numpy as np
import pytest
import torch

import polyrec.topk.run as topk_run
from helpers import quiet
from polyrec.config import load_config
from polyrec.errors import PolyrecError
from polyrec.topk.kg import build_ckg
from polyrec.data.interactions import Interactions, TopKData
from polyrec.train.checkpoint import load_checkpoint
from polyrec.runs import evaluate_run, train_run
from polyrec.train.trainer import CHECKPOINT, Trainer

N_USERS, N_ITEMS = 24, 30


def tiny_data(seed: int = 0) -> TopKData:
    rng = np.random.default_rng(seed)
    pairs = np.unique(np.stack([rng.integers(0, N_USERS, 700), rng.integers(0, N_ITEMS, 700)], 1), axis=0)
    # every user likes the items of their own parity more often: something learnable
    like = ((pairs[:, 0] % 2) == (pairs[:, 1] % 2)) & (rng.random(len(pairs)) < 0.8)
    labels = np.stack([like, np.ones(len(pairs), bool)], 1).astype(np.float32)
    split = rng.choice(3, len(pairs), p=[0.6, 0.2, 0.2])
    splits = {name: Interactions(pairs[split == k, 0].astype(np.int64), pairs[split == k, 1].astype(np.int64),
                                 labels[split == k]) for k, name in enumerate(("train", "val", "test"))}
    item_ids = [str(i + 1) for i in range(N_ITEMS)]
    triples = np.array([[f"e{i}", "genre", f"g{i % 3}"] for i in range(N_ITEMS)], dtype=str)
    links = {item_ids[i]: f"e{i}" for i in range(N_ITEMS)}
    graph = build_ckg(splits["train"], N_USERS, N_ITEMS, item_ids, triples, links)
    return TopKData("movielens-100k", ["like", "click"], N_USERS, N_ITEMS, [str(u + 100) for u in range(N_USERS)],
                    item_ids, [f"Movie {i + 1}" for i in range(N_ITEMS)], splits, graph, {"notes": ["synthetic"]})


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(topk_run, "load_topk", lambda cfg, download=True, log=print: tiny_data())


def cfg(model: str, *sets: str, **params):
    overrides = [f"model.name={model}", "model.embed_dim=8", "train.epochs=3", "train.batch_size=64",
                 "train.patience=0", "train.tensorboard=false", "train.lr=0.01", "topk.ks=[5,10]", *sets]
    overrides += [f"model.{k}={json.dumps(v)}" for k, v in params.items()]
    return load_config(base={"topk": {}}, overrides=overrides)


SMALL_GRAPH = {"layer_dims": [8, 4], "kg_batch_size": 32}


@pytest.mark.parametrize("model,params", [("mf", {}), ("kgat", SMALL_GRAPH), ("mmoe", {}),
                                          ("waata", {**SMALL_GRAPH, "expert_dims": [8], "tower_dims": [4]})])
def test_topk_run_writes_ranking_metrics(tiny, tmp_path, model, params):
    res = train_run(cfg(model, **params), tmp_path / model, log=quiet)
    m = res.metrics
    assert m["kind"] == "topk" and m["monitor"] == "like/ndcg@10" and m["epochs_run"] == 3
    for split in ("val", "test"):
        heads = m[split]["heads"]
        assert set(heads) == {"like", "click"}
        for task, hm in heads.items():
            assert {"recall@5", "ndcg@10", "hit@10", "mrr@5", "users"} <= set(hm)
            assert 0 <= hm["recall@5"] <= hm["recall@10"] <= 1 and 0 <= hm["ndcg@10"] <= 1
    assert m["test"]["ranking"] == {"by": "like", "excluded": "train+val"}
    # no balancer named: waata brings MetaBalance (target = like), the others sum
    assert m["balance"] == ("metabalance" if model == "waata" else "sum")
    history = [json.loads(x) for x in (tmp_path / model / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3] and all("like/ndcg@10" in h["val"] for h in history)
    # evaluate re-loads the run and reproduces the stored test metrics exactly
    again = evaluate_run(tmp_path / model, "test", log=quiet)
    assert again["heads"]["like"] == pytest.approx(m["test"]["heads"]["like"])
    with pytest.raises(PolyrecError, match="val or test"):
        evaluate_run(tmp_path / model, "train", log=quiet)


def test_training_improves_over_the_initial_ranking(tiny, tmp_path):
    res = train_run(cfg("mf", "train.epochs=25", "train.lr=0.05"), tmp_path / "mf", log=quiet)
    history = res.history
    first, best = history[0]["val"]["like/ndcg@10"], res.metrics["best_val_monitor"]
    assert best > first + 0.05, (first, best)


def test_waata_metabalance_resume_equals_uninterrupted(tiny, tmp_path, monkeypatch):
    c = cfg("waata", "train.balance=metabalance", "train.balance_params={target: like}", **SMALL_GRAPH,
            expert_dims=[8], tower_dims=[4], message_dropout=0.2)
    full = train_run(c, tmp_path / "full", log=quiet)
    steps = json.loads((tmp_path / "full" / "steps.jsonl").read_text().splitlines()[0]) if (
        tmp_path / "full" / "steps.jsonl").read_text() else None
    real_epoch = Trainer._train_epoch

    def interrupting(self, table, epoch, step, progress):
        if epoch == 2:
            raise KeyboardInterrupt
        return real_epoch(self, table, epoch, step, progress)

    monkeypatch.setattr(Trainer, "_train_epoch", interrupting)
    with pytest.raises(KeyboardInterrupt):
        train_run(c, tmp_path / "cut", log=quiet)
    assert load_checkpoint(tmp_path / "cut" / CHECKPOINT)["epoch"] == 1
    monkeypatch.setattr(Trainer, "_train_epoch", real_epoch)
    resumed = train_run(c, tmp_path / "cut", resume=True, log=quiet)
    assert resumed.metrics["test"] == full.metrics["test"]
    assert steps is None or "weights" in steps


def test_recommend_excludes_seen_items_and_names_titles(tiny, tmp_path):
    train_run(cfg("mf"), tmp_path / "run", log=quiet)
    run = topk_run.load_topk_run(tmp_path / "run", log=quiet)
    data = run.data
    user = data.user_ids[3]
    recs = topk_run.recommend(run, user, k=N_ITEMS)
    rated = {s: {int(i) for i in data.splits[s].item[data.splits[s].user == 3]} for s in ("train", "val", "test")}
    assert rated["test"] - rated["train"] - rated["val"]  # the tiny data gives user 3 test-only items
    seen = rated["train"] | rated["val"] | rated["test"]
    got = [data.item_ids.index(r["item_id"]) for r in recs]
    assert not seen & set(got) and len(got) == N_ITEMS - len(seen)
    # --keep-test: the test items come back into the ranking, train and validation items never do
    kept = [data.item_ids.index(r["item_id"]) for r in topk_run.recommend(run, user, k=N_ITEMS, keep_test=True)]
    assert set(kept) == set(range(N_ITEMS)) - rated["train"] - rated["val"]
    assert [r["rank"] for r in recs] == list(range(1, len(recs) + 1))
    assert all(a["score"] >= b["score"] for a, b in zip(recs, recs[1:]))
    assert recs[0]["title"] == f"Movie {got[0] + 1}"
    with pytest.raises(PolyrecError, match="Unknown user"):
        topk_run.recommend(run, "nobody", k=5)
    with pytest.raises(PolyrecError, match="--k"):
        topk_run.recommend(run, user, k=0)


def test_recommend_command_prints_titles_and_json(tiny, tmp_path):
    from typer.testing import CliRunner

    from polyrec.cli import app

    train_run(cfg("mf"), tmp_path / "run", log=quiet)
    runner = CliRunner()
    out = runner.invoke(app, ["recommend", str(tmp_path / "run"), "--user", "103", "--k", "4", "--json"])
    assert out.exit_code == 0, out.output
    recs = json.loads(out.output)
    run = topk_run.load_topk_run(tmp_path / "run", log=quiet)
    assert recs == topk_run.recommend(run, "103", k=4)
    table = runner.invoke(app, ["recommend", str(tmp_path / "run"), "--user", "103", "--k", "4"])
    assert table.exit_code == 0 and recs[0]["title"] in table.output
    bad = runner.invoke(app, ["recommend", str(tmp_path / "run"), "--user", "nobody"])
    assert isinstance(bad.exception, PolyrecError) and "Unknown user" in str(bad.exception)  # main() prints it


def test_loading_refuses_a_changed_index(tiny, tmp_path, monkeypatch):
    train_run(cfg("mf"), tmp_path / "run", log=quiet)
    other = tiny_data()
    other.n_items += 1
    monkeypatch.setattr(topk_run, "load_topk", lambda cfg, download=True, log=print: other)
    with pytest.raises(PolyrecError, match="differently"):
        topk_run.load_topk_run(tmp_path / "run", log=quiet)


def test_graph_model_without_graph_is_a_clear_error(tmp_path, monkeypatch):
    data = tiny_data()
    data.graph = None
    monkeypatch.setattr(topk_run, "load_topk", lambda cfg, download=True, log=print: data)
    with pytest.raises(PolyrecError, match="knowledge graph"):
        train_run(cfg("kgat", **SMALL_GRAPH), tmp_path / "run", log=quiet)


def test_unknown_topk_model_fails_before_loading(tmp_path):
    with pytest.raises(PolyrecError, match="Unknown model|unknown model"):
        train_run(cfg("mff"), tmp_path / "run", log=quiet)


def test_bench_tables_topk_runs(tiny, tmp_path):
    from polyrec.bench.runner import run_bench
    from polyrec.bench.spec import build_experiment

    exp = build_experiment(datasets="movielens-100k", models="mf,waata-no-decomposition", seeds="2",
                           overrides=["topk.ks=[5,10]", "train.epochs=2", "train.batch_size=64",
                                      "model.embed_dim=8", "train.tensorboard=false"])
    exp.rows[1].params.update({**SMALL_GRAPH, "expert_dims": [8], "tower_dims": [4]})
    run_bench(exp, tmp_path / "bench", echo=lambda *a, **k: None, report=False)
    md = (tmp_path / "bench" / "results.md").read_text()
    assert "like NDCG@10" in md and "click Recall@5" in md and "waata-no-decomposition" in md
    per_seed = (tmp_path / "bench" / "results-per-seed.csv").read_text()
    assert "like/ndcg@10" in per_seed


def test_explicit_balancer_overrides_the_model_default(tiny, tmp_path):
    res = train_run(cfg("waata", "train.balance=sum", "train.epochs=1", **SMALL_GRAPH, expert_dims=[8], tower_dims=[4]),
                    tmp_path / "run", log=quiet)
    assert res.metrics["balance"] == "sum"
    assert load_config(tmp_path / "run" / "config.yaml").train.balance == "sum"


def test_eval_users_sample_is_seeded_and_cuts_only_the_users(tiny, tmp_path):
    from polyrec.topk.trainer import eval_users, evaluate_topk

    data = tiny_data()
    assert eval_users(data, None) is None and eval_users(data, N_USERS) is None
    sample = eval_users(data, 10)
    assert len(sample) == 10 and np.array_equal(sample, eval_users(data, 10))  # the same users every time
    res = train_run(cfg("mf", "topk.eval_users=10"), tmp_path / "mf", log=quiet)
    test = res.metrics["test"]
    assert test["ranking"]["users_sampled"] == 10
    run = topk_run.load_topk_run(tmp_path / "mf", log=quiet)
    relevant_users = np.unique(data.splits["test"].user[data.splits["test"].labels[:, 0] == 1])
    assert test["heads"]["like"]["users"] == len(np.intersect1d(relevant_users, sample))
    # the sampled metrics are those of the full evaluation restricted to the sampled users
    full = evaluate_topk(run.model, data, "test", [5, 10], users=None)
    assert full["heads"]["like"]["users"] == len(relevant_users) > test["heads"]["like"]["users"]
    again = evaluate_topk(run.model, data, "test", [5, 10], users=sample)
    assert again["heads"] == test["heads"]
