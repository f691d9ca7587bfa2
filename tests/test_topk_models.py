"""Top-K models (polyrec.topk.models) and the sparse graph layers (polyrec.layers.kg)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from polyrec.errors import PolyrecError
from polyrec.layers.kg import (BiInteraction, KGPropagation, KnowledgeAttention, TransD, across_entity_share,
                               neighbourhood, transd_project)
from polyrec.topk.models import TOPK_MODELS, CTRAdapter, TopKInfo, build_topk_model, topk_model_params
from polyrec.topk.models.graph import GraphEncoder, GraphParams
from polyrec.data.interactions import KnowledgeGraph
from polyrec.train.losses import HeadLosses

N_USERS, N_ITEMS, N_OTHER = 4, 5, 3
TASKS = ["like", "click"]
EMBED = 8
SMALL = {"kgat": {"layer_dims": [8, 4], "kg_batch_size": 16},
         "waata": {"layer_dims": [8, 4], "kg_batch_size": 16, "expert_dims": [8], "tower_dims": [4]}}


def tiny_graph() -> KnowledgeGraph:
    """Entities: items 0-4, KG entities 5-7, users 8-11. Relations: interact, its inverse, genre, its inverse."""
    interactions = [(0, 0), (0, 1), (1, 1), (1, 2), (2, 3), (3, 0), (3, 4)]  # (user, item); item 4 only via user 3
    genre = [(0, 5), (1, 5), (2, 6), (3, 7)]  # (item, entity); item 4 has no KG link
    off = N_ITEMS + N_OTHER
    triples = [(off + u, 0, i) for u, i in interactions] + [(i, 1, off + u) for u, i in interactions]
    triples += [(i, 2, e) for i, e in genre] + [(e, 3, i) for i, e in genre]
    h, r, t = (np.array(x, dtype=np.int64) for x in zip(*triples))
    return KnowledgeGraph(N_ITEMS + N_OTHER + N_USERS, 4, N_USERS, N_ITEMS, h, r, t,
                          ["interact", "interact^-1", "genre", "genre^-1"], len(genre))


def tiny_sequences():
    """The tiny graph's interactions as time-ordered training sequences (for the sequential models)."""
    from polyrec.topk.sequences import build_sequences

    user, item = (np.array(x, dtype=np.int64) for x in zip(*[(0, 0), (0, 1), (1, 1), (1, 2), (2, 3), (3, 0), (3, 4)]))
    labels = np.ones((len(user), len(TASKS)), dtype=np.float32)
    return build_sequences(user, item, labels, np.zeros(len(user), dtype=np.int64), np.arange(len(user)), N_USERS)


def info(graph: bool = True) -> TopKInfo:
    return TopKInfo(N_USERS, N_ITEMS, list(TASKS), tiny_graph() if graph else None, tiny_sequences())


def build(name: str, seed: int = 0, **params):
    torch.manual_seed(seed)
    return build_topk_model(name, info(), EMBED, {**SMALL.get(name, {}), **params})


def random_graph(n: int, e: int, n_rel: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    head = torch.randint(0, n - 2, (e,), generator=g)  # the last two nodes have no out-edges
    return head, torch.randint(0, n_rel, (e,), generator=g), torch.randint(0, n, (e,), generator=g)


# --- TransD ---------------------------------------------------------------------------------------
def test_transd_projection_by_hand():
    v, vp = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, -1.0, 2.0])  # vp . v = 4.5
    # z = 2 < d = 3: r_p * 4.5 + first two dims of v
    assert torch.allclose(transd_project(v, vp, torch.tensor([1.0, -2.0])), torch.tensor([5.5, -7.0]))
    # z = 4 > d = 3: I_{z x d} pads v with a zero
    out = transd_project(v, vp, torch.tensor([1.0, 0.0, -1.0, 2.0]))
    assert torch.allclose(out, torch.tensor([5.5, 2.0, -1.5, 9.0]))
    # against the materialised matrix M = r_p v_p^T + I_{z x d}, for z < d, z = d, z > d
    g = torch.Generator().manual_seed(0)
    for z in (2, 3, 5):
        v, vp, rp = torch.randn(3, generator=g), torch.randn(3, generator=g), torch.randn(z, generator=g)
        m = torch.outer(rp, vp) + torch.eye(z, 3)
        assert torch.allclose(transd_project(v, vp, rp), m @ v, atol=1e-6)


def test_transd_score_and_loss_by_hand():
    td = TransD(3, 1, dim=3, relation_dim=2)
    with torch.no_grad():
        td.entity.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, -1.0], [1.0, 0.0, 0.0]]))
        td.entity_proj.weight.copy_(torch.tensor([[0.5, -1.0, 2.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
        td.relation.weight.copy_(torch.tensor([[0.5, 0.5]]))
        td.relation_proj.weight.copy_(torch.tensor([[1.0, -2.0]]))
    h, r, t, t_neg = (torch.tensor([x]) for x in (0, 0, 1, 2))
    # h_perp = [5.5, -7], t_perp = [0, 1] (v_tp . v_t = 0): h_perp + v_r - t_perp = [6, -7.5]
    assert torch.allclose(td.score(h, r, t), torch.tensor([-(36.0 + 56.25)]))
    # t' = entity 2: projection [1, 0]: [5.5 + 0.5 - 1, -7 + 0.5 - 0] = [5, -6.5] -> g = -67.25
    assert torch.allclose(td.score(h, r, t_neg), torch.tensor([-67.25]))
    expected = -torch.log(torch.sigmoid(torch.tensor(-92.25 + 67.25, dtype=torch.float64)))
    assert torch.allclose(td.kg_loss(h, r, t, t_neg).double(), expected)


# --- attention and propagation ---------------------------------------------------------------------
def test_attention_normalised_per_head_and_matches_definition():
    n = 12
    head, rel, tail = random_graph(n, 40, 3, seed=1)
    torch.manual_seed(0)
    td = TransD(n, 3, dim=6, relation_dim=4)
    w = KnowledgeAttention()(td, head, rel, tail, n)
    sums = torch.zeros(n).index_add(0, head, w)
    has_edges = torch.bincount(head, minlength=n) > 0
    assert torch.allclose(sums[has_edges], torch.ones(int(has_edges.sum())), atol=1e-6)
    assert (w > 0).all()
    # per-edge logits with TransD's explicit matrices, softmax over each head's out-edges by a loop
    ent, ent_p = td.entity.weight.detach(), td.entity_proj.weight.detach()
    r_v, r_p = td.relation.weight.detach(), td.relation_proj.weight.detach()
    logits = torch.stack([(torch.outer(r_p[r], ent_p[t]) + torch.eye(4, 6)) @ ent[t]
                          @ torch.tanh((torch.outer(r_p[r], ent_p[h]) + torch.eye(4, 6)) @ ent[h] + r_v[r])
                          for h, r, t in zip(head, rel, tail)])
    for node in head.unique():
        sel = head == node
        assert torch.allclose(w[sel], torch.softmax(logits[sel], 0), atol=1e-5)
    # nodes without out-edges get a zero neighbourhood
    assert not has_edges[-2:].any()
    v_n = neighbourhood(torch.randn(n, 6), head, tail, w.detach())
    assert torch.equal(v_n[-2:], torch.zeros(2, 6))


@pytest.mark.parametrize("weight_grad", [False, True])  # sparse.mm path / gather + index_add path
def test_propagation_equals_dense_reference(weight_grad):
    n, d = 9, 5
    head, _, tail = random_graph(n, 25, 1, seed=2)
    head, tail = torch.cat([head, head[:3]]), torch.cat([tail, tail[:3]])  # duplicate edges add up
    g = torch.Generator().manual_seed(3)
    w = torch.rand(head.shape[0], generator=g).requires_grad_(weight_grad)
    v = torch.randn(n, d, generator=g, requires_grad=True)
    dense = torch.zeros(n, n)
    for h, t, x in zip(head.tolist(), tail.tolist(), w.tolist()):
        dense[h, t] += x
    assert torch.allclose(neighbourhood(v, head, tail, w), dense @ v, atol=1e-6)

    torch.manual_seed(0)
    prop = KGPropagation(d, [4, 3], dropout=0.0)
    out = prop(v, head, tail, w)
    outs, x = [v], v
    for layer in prop.layers:
        assert isinstance(layer, BiInteraction)
        x_n = dense @ x
        x = F.relu(layer.sum(x + x_n)) + F.relu(layer.product(x * x_n))
        outs.append(F.normalize(x, dim=-1))
    assert out.shape == (n, d + 4 + 3) == (n, prop.out_dim)
    assert torch.allclose(out, torch.cat(outs, -1), atol=1e-5)
    out.sum().backward()
    assert v.grad is not None and (w.grad is not None) == weight_grad
    last = KGPropagation(d, [4, 3], combine="last")
    assert last(v, head, tail, w).shape == (n, 3) and last.out_dim == 3


# --- every model ----------------------------------------------------------------------------------
def training_loss(model, users, items, labels):
    cache = model.encode()
    if model.pairwise:  # BPR: each positive against a shuffled item
        pos = model.score(users, items, cache)[:, 0]
        neg = model.score(users, items.roll(1), cache)[:, 0]
        logits, loss = pos.unsqueeze(1), F.softplus(neg - pos).mean()
    else:
        logits = model.score(users, items, cache)
        loss = HeadLosses(model.heads, TASKS)(logits, labels).sum()
    extra = model.extra_loss(logits, labels, cache)
    return loss if extra is None else loss + extra


def pairs(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, 2, generator=g) < 0.5).float()
    labels[:, 0] *= labels[:, 1]  # like implies click
    return torch.randint(0, N_USERS, (n,), generator=g), torch.randint(0, N_ITEMS, (n,), generator=g), labels


def test_score_all_chunks_users(monkeypatch):
    model = build("waata")
    model.eval()
    monkeypatch.setattr(type(model), "score_all_pairs", 2 * N_ITEMS)  # 2 users per score() call
    with torch.no_grad():
        cache = model.encode()
        chunked = model.score_all(torch.arange(N_USERS), cache)
        one_go = model.score(torch.arange(N_USERS).repeat_interleave(N_ITEMS), torch.arange(N_ITEMS).repeat(N_USERS),
                             cache)[:, 0].view(N_USERS, N_ITEMS)
    assert torch.allclose(chunked, one_go, atol=1e-6)


def test_graph_models_use_the_ckg():
    model = build("kgat")
    enc = model.graph
    assert enc.head.shape[0] == len(tiny_graph())
    reps = model.encode()
    assert reps.shape == (tiny_graph().n_entities, EMBED + 8 + 4)
    # users are the last entities: user 0 is entity 8
    assert torch.equal(enc.users(reps)[0], reps[N_ITEMS + N_OTHER])
    # the propagated representation of item 4 (only neighbour: user 3) changes when user 3's embedding does
    with torch.no_grad():
        before = model.encode()[4].clone()
        enc.transd.entity.weight[N_ITEMS + N_OTHER + 3] += 1.0
        model.eval()
        after = model.encode()[4]
    assert not torch.allclose(before[EMBED:], after[EMBED:])


# --- WAA-TA ablations -----------------------------------------------------------------------------
def waata_parts(**params) -> tuple[object, dict[str, torch.Tensor]]:
    model = build("waata", **params)
    model.train()
    users, items, labels = pairs(16, seed=4)
    cache = model.encode()
    logits = model.score(users, items, cache)
    model.extra_loss(logits, labels, cache)
    return model, model.last_loss_parts


def test_waata_full_model_loss_parts():
    model, parts = waata_parts()
    assert set(parts) == {"auxiliary", "orthogonal", "kg"}
    assert model.n_pairs == 2 and model.task_aux_heads is not None
    assert [h.name for h in model.heads] == TASKS and model.ranking_head == 0


def test_waata_ablations_remove_their_parts():
    names = lambda m: {n for n, _ in m.named_parameters()}  # noqa: E731
    m1, parts1 = waata_parts(auxiliary=False)  # WAA-TA1
    assert set(parts1) == {"orthogonal", "kg"} and not any("aux" in n for n in names(m1))
    m2, parts2 = waata_parts(decomposition=False)  # WAA-TA2
    assert set(parts2) == {"kg"} and not any("aux" in n for n in names(m2)) and m2.n_pairs == 1
    assert m2.shared_extractors.n == 1 and m2.task_extractors.n == len(TASKS)
    m3, parts3 = waata_parts(orthogonal=False)  # WAA-TA3
    assert set(parts3) == {"auxiliary", "kg"} and any("aux" in n for n in names(m3))
    _, parts = waata_parts(kg_weight=0.0)
    assert "kg" not in parts


def test_waata_shared_parameters():
    model = build("waata")
    shared = {id(p) for p in model.shared_parameters()}
    named = dict(model.named_parameters())
    for n, p in named.items():
        expect = n.startswith(("graph.", "shared_extractors."))
        assert (id(p) in shared) == expect, n
    assert any(n.startswith("graph.transd") for n in named) and any(n.startswith("graph.propagation") for n in named)


def test_waata_inputs_and_eval_keeps_no_features():
    model = build("waata", product_feature=False)
    assert model.shared_extractors.in_dim == 2 * model.graph.out_dim
    model.eval()
    with torch.no_grad():
        model.score(torch.tensor([0]), torch.tensor([1]), model.encode())
    assert model._features is None
    _, parts = model.extra_loss(None, None, None), model.last_loss_parts
    assert set(parts) == {"kg"}


# --- the CTR adapter ------------------------------------------------------------------------------
def test_adapter_spec_and_heads():
    model = build("esmm")
    assert isinstance(model, CTRAdapter)
    spec = model.model.spec
    assert spec.vocab_sizes == [N_USERS + 2, N_ITEMS + 2] and spec.categorical_fields == ["user_id", "item_id"]
    assert spec.numeric_fields == [] and spec.sequence_vocab == {} and spec.scenario_names == ["all"]
    assert model.model.params.ctcvr_task == "like" and model.model.params.ctr_task == "click"
    assert model.heads[model.ranking_head].name == "like_ctcvr"
    batch = model.batch(torch.tensor([0, 3]), torch.tensor([4, 1]))
    assert batch.categorical.tolist() == [[2, 6], [5, 3]] and batch.numeric.shape == (2, 0)
    # explicit settings win; the adapter validates the CTR model's parameters
    swapped = build("esmm", ctr_task="like", ctcvr_task="click")
    assert swapped.heads[swapped.ranking_head].name == "like"
    with pytest.raises(PolyrecError, match="n_experts"):
        build("mmoe", n_expert=3)


# --- registry errors ------------------------------------------------------------------------------
def test_build_errors():
    assert {"mf", "kgat", "waata"} <= set(TOPK_MODELS)
    with pytest.raises(PolyrecError, match="Did you mean 'kgat'"):
        build_topk_model("kgta", info(), EMBED, {})
    with pytest.raises(PolyrecError, match="unknown key 'n_pair'.*n_pairs"):
        build_topk_model("waata", info(), EMBED, {"n_pair": 3})
    with pytest.raises(PolyrecError, match="unknown key 'n_pair'.*n_pairs"):
        topk_model_params("waata", {"n_pair": 3})
    assert topk_model_params("ple", {"n_levels": 1}).n_levels == 1
    with pytest.raises(PolyrecError, match="Unknown model 'mff'"):
        topk_model_params("mff")
    with pytest.raises(PolyrecError, match="layer_dims"):
        build_topk_model("kgat", info(), EMBED, {"layer_dims": "wide"})
    for name in ("kgat", "waata"):
        with pytest.raises(PolyrecError, match="needs a knowledge graph"):
            build_topk_model(name, info(graph=False), EMBED, {})
    assert build_topk_model("mf", info(graph=False), EMBED, {}).score_all(torch.tensor([0]), None).shape == (1, N_ITEMS)
    bad = info()
    bad.n_items += 1
    with pytest.raises(PolyrecError, match="rebuild the graph"):
        build_topk_model("kgat", bad, EMBED, {})


# --- signal in the propagated layers (issue 21 item 7) ---------------------------------------------
def large_random_graph(n_entities: int = 30_000, n_edges: int = 200_000, seed: int = 0) -> KnowledgeGraph:
    """A CKG of MovieLens-100K's scale, where Xavier-initialised tables are tiny (|v| ~ 0.03)."""
    head, relation, tail = (x.numpy() for x in random_graph(n_entities, n_edges, 4, seed))
    return KnowledgeGraph(n_entities, 4, 1000, 1000, head, relation, tail, ["a", "a^-1", "b", "b^-1"], 0)


@pytest.mark.parametrize("bias_init, propagates_signal", [("zero", True), ("default", False)])
def test_propagated_layers_vary_across_entities_at_initialisation(bias_init, propagates_signal):
    """With the default (zero) bias init every propagated layer's energy mostly varies across entities; with
    random biases over tiny Xavier vectors (the committed benches' init) they are ~0: entities collapse."""
    torch.manual_seed(0)
    encoder = GraphEncoder(large_random_graph(), 16, GraphParams(propagation_bias_init=bias_init))
    shares = encoder.layer_shares()
    assert len(shares) == 3 and shares[0] > 0.99  # layer 0: zero-mean random vectors
    if propagates_signal:
        assert min(shares[1:]) > 0.2, shares
    else:
        assert max(shares[1:]) < 0.01, shares


def test_across_entity_share_by_hand():
    assert across_entity_share(torch.ones(5, 3)) == 0.0
    v = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert across_entity_share(v) == pytest.approx(1.0)
    v = torch.tensor([[2.0, 0.0], [0.0, 0.0]])  # mean (1, 0): variation 2 of energy 4
    assert across_entity_share(v) == pytest.approx(0.5)


def test_waata_matching_score_is_added_to_every_task():
    with_match, without = build("waata", seed=3), build("waata", seed=3, matching_score=False)
    with_match.eval(), without.eval()
    users, items = torch.tensor([0, 1, 3]), torch.tensor([1, 2, 4])
    with torch.no_grad():
        cache = with_match.encode()
        u, i = with_match.graph.users(cache)[users], with_match.graph.items(cache)[items]
        diff = with_match.score(users, items, cache) - without.score(users, items, cache)
    torch.testing.assert_close(diff, (u * i).sum(-1, keepdim=True).expand(3, len(TASKS)))
