"""Top-K data: loading ml-100k, splits, labels, the collaborative knowledge graph, negative sampling."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import quiet, require_dataset

from polyrec.config import load_config
from polyrec.data.kg_files import load_kg_files
from polyrec.data.split import temporal_split
from polyrec.errors import PolyrecError
from polyrec.topk.data import load_topk
from polyrec.topk.kg import build_ckg
from polyrec.topk.negatives import NegativeSampler
from polyrec.data.interactions import Interactions


def topk_data(*sets: str, download: bool = False):
    """Top-K data of a config given as --set assignments (default dataset: movielens-100k)."""
    return load_topk(load_config(None, list(sets), base={"topk": {}}), download=download, log=quiet)


@pytest.fixture(scope="module")
def ml100k(polyrec_env):
    require_dataset("movielens-100k")
    return topk_data()


@pytest.fixture(scope="module")
def ml100k_temporal(polyrec_env):
    require_dataset("movielens-100k")
    return topk_data("data.split=temporal", "topk.kg=false")


def keys(inter: Interactions, n_items: int) -> np.ndarray:
    return inter.user * n_items + inter.item


def raw_ratings(data) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user index, item index, rating) straight from ml-100k.inter, independent of the loader."""
    from polyrec.settings import data_dir

    raw = np.loadtxt(data_dir() / "ml-100k" / "ml-100k.inter", skiprows=1, dtype=np.int64, usecols=(0, 1, 2))
    u_of = np.full(raw[:, 0].max() + 1, -1)
    u_of[np.array(data.user_ids, dtype=np.int64)] = np.arange(data.n_users)
    i_of = np.full(raw[:, 1].max() + 1, -1)
    i_of[np.array(data.item_ids, dtype=np.int64)] = np.arange(data.n_items)
    return u_of[raw[:, 0]], i_of[raw[:, 1]], raw[:, 2]


# --- loading and splits ---------------------------------------------------------------------------
def test_counts_and_ids(ml100k):
    d = ml100k
    assert (d.n_users, d.n_items) == (943, 1682)
    assert sum(len(s) for s in d.splits.values()) == 100_000
    assert d.item_ids[:3] == ["1", "2", "3"] and d.item_ids[9] == "10"  # numeric, not string order
    assert d.item_titles[0] == "Toy Story" and len(d.item_titles) == d.n_items
    assert d.task_names == ["like", "click"] and d.target == "like"
    assert d.meta["counts"] == {"train": 60_000, "val": 20_000, "test": 20_000}
    assert set(d.meta["files"]) >= {"ml-100k.inter", "ml-100k.kg", "ml-100k.link"}
    for s in d.splits.values():
        assert s.user.dtype == np.int64 and s.labels.dtype == np.float32 and s.labels.shape == (len(s), 2)


def test_random_split_disjoint_and_seeded(ml100k):
    d = ml100k
    all_keys = np.concatenate([keys(s, d.n_items) for s in d.splits.values()])
    assert np.unique(all_keys).size == 100_000  # ml-100k has one rating per (user, item): splits are disjoint
    again = topk_data("topk.kg=false")
    other = topk_data("topk.kg=false", "train.seed=1")
    for name in ("train", "val", "test"):
        assert np.array_equal(keys(again.splits[name], d.n_items), keys(d.splits[name], d.n_items))
    assert not np.array_equal(keys(other.splits["test"], d.n_items), keys(d.splits["test"], d.n_items))


def test_labels_follow_ratings(ml100k):
    d = ml100k
    u, i, rating = raw_ratings(d)
    order = np.argsort(u * d.n_items + i)
    sorted_keys, like = (u * d.n_items + i)[order], rating[order] >= 4
    for s in d.splits.values():
        pos = np.searchsorted(sorted_keys, keys(s, d.n_items))
        assert np.array_equal(s.labels[:, 0] == 1, like[pos])
        assert (s.labels[:, 1] == 1).all()  # click = every interaction
    assert sum(int(s.labels[:, 0].sum()) for s in d.splits.values()) == 34_174 + 21_201


def test_temporal_split_respects_time(ml100k_temporal):
    d = ml100k_temporal
    n = d.n_users
    last_train = np.full(n, np.iinfo(np.int64).min)
    np.maximum.at(last_train, d.splits["train"].user, d.splits["train"].timestamp)
    first_test = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(first_test, d.splits["test"].user, d.splits["test"].timestamp)
    assert (last_train <= first_test).all()
    for name in ("train", "val", "test"):  # every ml-100k user has >= 20 ratings: all three splits per user
        assert np.unique(d.splits[name].user).size == n
    assert abs(len(d.splits["train"]) / 100_000 - 0.6) < 0.01 and abs(len(d.splits["test"]) / 100_000 - 0.2) < 0.01


def test_temporal_rounding_small_histories():
    counts = [1, 2, 3, 4, 5, 10]
    user = np.repeat(np.arange(len(counts)), counts)[::-1].copy()  # rows not grouped by user
    ts = np.zeros(len(user), dtype=np.int64)  # all tied: file order decides
    split = temporal_split(user, ts, (0.6, 0.2, 0.2))
    part = np.empty(len(user), dtype=np.int64)
    for k, name in enumerate(("train", "val", "test")):
        part[split[name]] = k
    per_user = {u: np.bincount(part[user == u], minlength=3).tolist() for u in range(len(counts))}
    assert per_user == {0: [1, 0, 0], 1: [1, 0, 1], 2: [1, 1, 1], 3: [2, 1, 1], 4: [3, 1, 1], 5: [6, 2, 2]}
    rows = np.flatnonzero(user == 5)  # ties keep file order: the first rows train, the last rows test
    assert part[rows].tolist() == [0] * 6 + [1] * 2 + [2] * 2


def test_task_selection_and_errors(ml100k):
    swapped = topk_data("data.tasks=[click,like]", "topk.kg=false")
    assert swapped.task_names == ["click", "like"]
    assert np.array_equal(swapped.splits["train"].labels[:, ::-1], ml100k.splits["train"].labels)
    with pytest.raises(PolyrecError, match="lacks column.*'buy'"):
        topk_data("data.tasks=[buy]")
    with pytest.raises(PolyrecError, match="movielens-100k"):
        topk_data("data.dataset=movielens-20m")
    with pytest.raises(PolyrecError, match="summing to 1"):
        topk_data("data.ratios=[0.5,0.2,0.2]")
    with pytest.raises(PolyrecError, match="each > 0"):
        topk_data("data.ratios=[0.8,0.2,0.0]")
    with pytest.raises(PolyrecError, match="split"):
        topk_data("data.split=leave-one-out")


def test_missing_kg_files_are_named(tmp_path, monkeypatch, ml100k):
    _kg_only_folder(tmp_path, monkeypatch)
    with pytest.raises(PolyrecError, match=r"ml-100k\.kg.*ml-100k\.link"):
        topk_data()
    assert topk_data("topk.kg=false").graph is None


def _kg_only_folder(tmp_path, monkeypatch):
    """A data dir holding ML-100K's ratings (symlinked) but not its KG files; returns the real folder."""
    from polyrec.settings import data_dir

    src = data_dir() / "ml-100k"
    (tmp_path / "ml-100k").mkdir(parents=True)
    for ext in ("inter", "user", "item"):
        (tmp_path / "ml-100k" / f"ml-100k.{ext}").symlink_to(src / f"ml-100k.{ext}")
    monkeypatch.setenv("POLYREC_DATA", str(tmp_path))
    return src


def _fake_recbole_wheel(tmp_path, src, tamper=False):
    """A zip laid out like the recbole wheel, holding the real KG files (optionally with one byte changed)."""
    wheel = tmp_path / "recbole-1.2.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name in ("ml-100k.kg", "ml-100k.link"):
            data = (src / name).read_bytes()
            if tamper and name.endswith(".link"):
                data = data[:-1] + b"#"
            zf.writestr(f"recbole/dataset_example/ml-100k/{name}", data)
    return wheel


def test_missing_kg_files_are_downloaded_and_checked(tmp_path, monkeypatch, ml100k):
    import polyrec.recipes.movielens as movielens

    src = _kg_only_folder(tmp_path / "data", monkeypatch)
    asked = []
    wheel = _fake_recbole_wheel(tmp_path, src)
    monkeypatch.setattr(movielens, "pip_wheel", lambda req, log=print: asked.append(req) or wheel)
    data = topk_data(download=True)
    assert asked == ["recbole==1.2.1"]
    assert data.graph is not None and data.meta["kg"] == ml100k.meta["kg"]
    for name in ("ml-100k.kg", "ml-100k.link"):
        assert (tmp_path / "data" / "ml-100k" / name).read_bytes() == (src / name).read_bytes()

    # a file that does not match the known digest is removed and named, never used
    (tmp_path / "data" / "ml-100k" / "ml-100k.link").unlink()
    bad = _fake_recbole_wheel(tmp_path, src, tamper=True)
    monkeypatch.setattr(movielens, "pip_wheel", lambda req, log=print: bad)
    with pytest.raises(PolyrecError, match=r"ml-100k\.link failed its checksum"):
        topk_data(download=True)
    assert not (tmp_path / "data" / "ml-100k" / "ml-100k.link").exists()


def test_movielens_1m_has_no_graph(tmp_path, monkeypatch):
    d = tmp_path / "ml-1m"
    d.mkdir()
    (d / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    (d / "movies.dat").write_text("1::Toy Story (1995)::Animation\n2::Jumanji (1995)::Adventure\n"
                                  "10::GoldenEye (1995)::Action\n")
    (d / "ratings.dat").write_text("1::1::5::978300760\n1::10::3::978300761\n2::1::4::978300762\n"
                                   "2::10::2::978300763\n")
    monkeypatch.setenv("POLYREC_DATA", str(tmp_path))
    data = topk_data("data.dataset=movielens-1m")
    assert data.graph is None and any("no knowledge graph" in n for n in data.meta["notes"])
    assert data.item_ids == ["1", "2", "10"] and data.item_titles[1] == "Jumanji (1995)"  # unrated item kept
    assert data.n_users == 2 and sum(len(s) for s in data.splits.values()) == 4

    # the user's own KG files give it one (RecBole's atomic layout, one header line)
    (tmp_path / "my.kg").write_text("head_id:token\trelation_id:token\ttail_id:token\n"
                                    "m.toy\tfilm.genre\tm.animation\nm.golden\tfilm.genre\tm.action\n"
                                    "m.toy\tfilm.director\tm.lasseter\n")
    (tmp_path / "my.link").write_text("item_id:token\tentity_id:token\n1\tm.toy\n10\tm.golden\n")
    files = (tmp_path / "my.kg", tmp_path / "my.link")
    data = topk_data("data.dataset=movielens-1m", *kg(*files))
    assert data.graph is not None and data.meta["kg"]["n_kg_triples"] == 3
    assert data.meta["kg"]["items_with_link"] == 2 and data.meta["kg"]["items_with_kg_edges"] == 2
    assert data.graph.n_entities == 3 + 3 + 2  # items, the three unlinked entities, users
    assert topk_data("data.dataset=movielens-1m", "topk.kg=false").graph is None
    # ids from another dataset link nothing: an error, not a graph without item edges
    (tmp_path / "other.link").write_text("item_id:token\tentity_id:token\n501\tm.toy\n")
    with pytest.raises(PolyrecError, match="reaches none of the 3 items"):
        topk_data("data.dataset=movielens-1m", *kg(files[0], tmp_path / "other.link"))
    with pytest.raises(PolyrecError, match="link file .*nope.link"):
        topk_data("data.dataset=movielens-1m", *kg(files[0], tmp_path / "nope.link"))


def kg(triples, links) -> list[str]:
    return [f"topk.kg_triples={triples}", f"topk.kg_links={links}"]


def test_kg_files_config_goes_together():
    from polyrec.config import TopKConfig

    assert TopKConfig(kg_triples="a.kg", kg_links="a.link").kg_links.endswith("/a.link")  # absolute: runs work from anywhere
    with pytest.raises(ValueError, match="go together"):
        TopKConfig(kg_triples="a.kg")
    with pytest.raises(ValueError, match="contradicts"):
        TopKConfig(kg=False, kg_triples="a.kg", kg_links="a.link")


def test_nan_ratings_are_rejected(tmp_path, monkeypatch):
    d = tmp_path / "ml-1m"
    d.mkdir()
    (d / "users.dat").write_text("1::F::1::10::48067\n")
    (d / "movies.dat").write_text("1::Toy Story (1995)::Animation\n")
    (d / "ratings.dat").write_text("1::1::nan::978300760\n")
    monkeypatch.setenv("POLYREC_DATA", str(tmp_path))
    with pytest.raises(PolyrecError, match="NaN"):
        topk_data("data.dataset=movielens-1m")


# --- collaborative knowledge graph ------------------------------------------------------------------
def test_ckg_on_ml100k(ml100k):
    d, g = ml100k, ml100k.graph
    train = d.splits["train"]
    rel0 = g.relation == 0
    assert rel0.sum() == np.unique(keys(train, d.n_items)).size
    assert g.user_offset == g.n_entities - d.n_users == d.n_items + 34_628 - 1_598
    assert (g.head[rel0] >= g.user_offset).all() and (g.tail[rel0] < d.n_items).all()
    # no validation/test pair is an interact edge
    edge_keys = (g.head[rel0] - g.user_offset) * d.n_items + g.tail[rel0]
    for name in ("val", "test"):
        assert not np.isin(keys(d.splits[name], d.n_items), edge_keys).any()
    # every relation 2k+1 mirrors relation 2k
    assert g.n_relations == len(g.relation_names) == 2 + 2 * 24
    for r in range(0, g.n_relations, 2):
        fwd, inv = g.relation == r, g.relation == r + 1
        assert g.relation_names[r + 1] == ("interacted_by" if r == 0 else g.relation_names[r] + "^-1")
        a = np.sort(g.head[fwd] * g.n_entities + g.tail[fwd])
        b = np.sort(g.tail[inv] * g.n_entities + g.head[inv])
        assert np.array_equal(a, b)
    kg = g.relation >= 2
    assert g.n_kg_triples == 91_631 and kg.sum() == 2 * 91_631
    assert (g.head[kg] < g.user_offset).all() and (g.tail[kg] < g.user_offset).all()
    # linked items (and only those) reach KG entities
    _, links = load_kg_files(_ml100k_dir())
    linked = np.isin(np.array(d.item_ids), np.array(list(links)))
    items_in_kg = np.unique(np.concatenate([g.head[kg], g.tail[kg]]))
    items_in_kg = items_in_kg[items_in_kg < d.n_items]
    assert np.array_equal(items_in_kg, np.flatnonzero(linked)) and linked.sum() == 1_598
    assert d.meta["kg"]["items_with_link"] == 1_598 and d.meta["kg"]["n_entities"] == g.n_entities


def _ml100k_dir() -> Path:
    from polyrec.settings import data_dir

    return data_dir() / "ml-100k"


def test_build_ckg_by_hand():
    train = Interactions(user=np.array([0, 0, 2]), item=np.array([0, 0, 3]), labels=np.ones((3, 1), np.float32))
    triples = np.array([["e1", "r_a", "x"], ["x", "r_b", "e3"], ["e3", "r_a", "y"], ["e1", "r_a", "x"]])
    links = {"10": "e1", "30": "e3", "99": "e9"}  # item 99 is not in the item space: ignored
    g = build_ckg(train, 3, 4, ["10", "20", "30", "40"], triples, links)
    # items 0-3 (e1 = item 0, e3 = item 2), other entities x=4, y=5, users 6-8
    assert (g.n_entities, g.user_offset, g.n_kg_triples) == (9, 6, 3)
    assert g.relation_names == ["interact", "interacted_by", "r_a", "r_a^-1", "r_b", "r_b^-1"]
    edges = set(zip(g.head.tolist(), g.relation.tolist(), g.tail.tolist()))
    assert edges == {(6, 0, 0), (8, 0, 3), (0, 1, 6), (3, 1, 8),
                     (0, 2, 4), (4, 4, 2), (2, 2, 5), (4, 3, 0), (2, 5, 4), (5, 3, 2)}
    assert len(g) == len(edges)  # the repeated train pair and the duplicate triple appear once


def test_load_kg_files_missing(tmp_path):
    with pytest.raises(PolyrecError, match=r"\.kg.*\.link"):
        load_kg_files(tmp_path / "ml-100k")


# --- negative sampling ----------------------------------------------------------------------------
def test_negatives_never_train_positives(ml100k):
    d = ml100k
    train = d.splits["train"]
    sampler = NegativeSampler(d.n_items, train.user, train.item)
    users = np.repeat(np.arange(d.n_users), 50)
    neg = sampler.sample(users, 4, np.random.default_rng(0))
    assert neg.shape == (len(users), 4) and neg.dtype == np.int64
    assert not np.isin(users[:, None] * d.n_items + neg, keys(train, d.n_items)).any()
    assert neg.min() >= 0 and neg.max() < d.n_items


def test_popularity_sampling_favours_popular_items(ml100k):
    d = ml100k
    train = d.splits["train"]
    count = np.bincount(train.item, minlength=d.n_items)
    users = np.arange(d.n_users)
    uni = NegativeSampler(d.n_items, train.user, train.item).sample(users, 100, np.random.default_rng(1))
    pop_sampler = NegativeSampler(d.n_items, train.user, train.item, strategy="popularity")
    pop = pop_sampler.sample(users, 100, np.random.default_rng(1))
    assert count[pop].mean() > 2 * count[uni].mean()
    assert not np.isin(users[:, None] * d.n_items + pop, keys(train, d.n_items)).any()
    w = pop_sampler.weights
    assert (w[count == 0] > 0).all() and w[count == 0].max() < w[count > 0].min()


def test_dense_user_uses_exact_fallback_and_full_user_errors(monkeypatch):
    calls = []
    exact = NegativeSampler._exact
    monkeypatch.setattr(NegativeSampler, "_exact", lambda self, u, rng: calls.append(len(u)) or exact(self, u, rng))
    n_items = 50
    user = np.r_[np.zeros(48, np.int64), np.ones(50, np.int64)]
    item = np.r_[np.arange(1, 49), np.arange(50)]  # user 0 may only get items 0 and 49; user 1 saw everything
    for strategy in ("uniform", "popularity"):
        sampler = NegativeSampler(n_items, user, item, strategy=strategy)
        neg = sampler.sample(np.zeros(400, np.int64), 5, np.random.default_rng(2))
        assert set(np.unique(neg).tolist()) == {0, 49}
    assert calls and all(c > 0 for c in calls)  # collisions survived the rejection rounds
    uniform = NegativeSampler(n_items, user, item)
    neg = uniform.sample(np.zeros(2000, np.int64), 1, np.random.default_rng(3))
    assert 0.4 < (neg == 0).mean() < 0.6
    with pytest.raises(PolyrecError, match="every one of the 50 items"):
        uniform.sample(np.array([0, 1]), 3, np.random.default_rng(0))
    with pytest.raises(PolyrecError, match="strategy"):
        NegativeSampler(n_items, user, item, strategy="hard")  # type: ignore[arg-type]
