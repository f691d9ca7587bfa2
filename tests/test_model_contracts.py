"""Contracts every registered model keeps, parametrised over the registries (a new model is tested by being
registered): forward/backward, a batch of one, eval-mode batch independence, every task's loss reaches every
shared parameter, a state_dict round trip; and the pinned set of shared parameters of each model.

CTR models run on the synthetic spec of tests/helpers.py; top-K models (and the CTR models the adapter runs on
id pairs) on the tiny graph of tests/test_topk_models.py. Dimensions are tiny so the whole file runs in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import polyrec.models  # noqa: F401  (registers the CTR models)
import polyrec.topk.models  # noqa: F401  (registers the top-K models)
from helpers import make_batch, make_spec, splice, take
from polyrec.data.batching import Batch
from polyrec.models import MODELS, build_model
from polyrec.models.base import model_params
from polyrec.topk.models import TOPK_MODELS, topk_model_names
from polyrec.train.losses import HeadLosses
from test_topk_models import N_ITEMS, TASKS, build, pairs, training_loss

EMBED = 8
# non-default parameters that switch on code paths of their own, checked beside every model's defaults
VARIANTS = {"escm2-dr": ("escm2", {"variant": "dr"}),
            "fdn-plain": ("fdn", {"orthogonal": False, "auxiliary": False}),
            "sapenet-mmoe": ("sapenet", {"extraction": "mmoe"})}
CTR = {**{name: (name, {}) for name in sorted(MODELS)}, **VARIANTS}
TOPK = topk_model_names()  # the top-K models, then every CTR model run by the adapter
SHARED_PINNED = json.loads((Path(__file__).parent / "data" / "shared_parameters.json").read_text())


def _ctr(key: str, seed: int = 0):
    """The model as a run builds it: its spec completed by spec_from_training on synthetic training rows."""
    name, params = CTR[key]
    cls = MODELS.get(name)
    spec = make_spec()
    train, labels = make_batch(spec, 64, seed=11)
    spec = cls.spec_from_training(spec, model_params(name, dict(params)), train.categorical.numpy(), labels.numpy())
    torch.manual_seed(seed)
    return build_model(name, spec, EMBED, dict(params))


def _ctr_loss(model, batch: Batch, labels: torch.Tensor) -> torch.Tensor:
    logits = model(batch)
    total = HeadLosses(model.heads, model.spec.task_names)(logits, labels).sum()
    extra = model.extra_loss(logits, labels)  # regularisers, as the trainer adds them
    return total + extra if extra is not None else total


def _shared_names(model: torch.nn.Module) -> list[str]:
    """The shared parameters' names in the order balancers see them (order changes float sums in PCGrad)."""
    names = {id(p): n for n, p in model.named_parameters()}
    shared = [names[id(p)] for p in model.shared_parameters()]
    assert len(set(shared)) == len(shared), "a parameter is listed twice"
    return shared


# --- CTR models -----------------------------------------------------------------------------------
@pytest.mark.parametrize("key", CTR)
def test_forward_backward_train_and_eval(key):
    model = _ctr(key)
    batch, labels = make_batch(model.spec, 32, seed=1)
    model.train()
    out = model(batch)
    assert out.shape == (32, len(model.heads)) and torch.isfinite(out).all()
    loss = _ctr_loss(model, batch, labels)
    assert torch.isfinite(loss)
    model.zero_grad()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    # every output head reads the inputs: id embeddings and numeric values (no head ignores its features)
    embeddings = [m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    assert embeddings
    for h in range(len(model.heads)):
        model.zero_grad()
        numeric = batch.numeric.clone().requires_grad_()
        model(Batch(batch.categorical, numeric, batch.sequences, batch.scenario))[:, h].sum().backward()
        assert any(w.grad is not None and w.grad.abs().sum() > 0 for w in embeddings), model.heads[h]
        if model.id_only:  # matrix factorisation reads the user and item ids only, by design
            assert numeric.grad is None or not numeric.grad.any(), model.heads[h]
        else:
            assert numeric.grad is not None and numeric.grad.abs().sum() > 0, model.heads[h]
    model.eval()
    with torch.no_grad():
        out_eval = model(batch)
    assert out_eval.shape == (32, len(model.heads)) and torch.isfinite(out_eval).all()


@pytest.mark.parametrize("key", CTR)
def test_batch_of_one(key):
    model = _ctr(key)
    batch, labels = make_batch(model.spec, 1, seed=2)
    model.train()
    loss = _ctr_loss(model, batch, labels)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        out = model(batch)
    assert out.shape == (1, len(model.heads)) and torch.isfinite(out).all()


@pytest.mark.parametrize("key", CTR)
def test_eval_output_of_a_row_ignores_the_rest_of_its_batch(key):
    model = _ctr(key)
    a, _ = make_batch(model.spec, 16, seed=3)
    b, _ = make_batch(model.spec, 16, seed=4)
    keep = [0, 5]
    mixed = splice(a, b, keep)  # rows 0 and 5 from a, every other row different
    model.eval()
    with torch.no_grad():
        out_a, out_mixed, alone = model(a), model(mixed), model(take(a, slice(0, 1)))
    assert not torch.allclose(out_a[1:5], out_mixed[1:5])  # the other rows really changed
    torch.testing.assert_close(out_mixed[keep], out_a[keep], atol=1e-6, rtol=0)
    torch.testing.assert_close(alone[0], out_a[0], atol=1e-5, rtol=0)


def _reached(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> list[bool]:
    if not params:
        return []
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [g is not None and bool(g.abs().sum() > 0) for g in grads]


@pytest.mark.parametrize("key", CTR)
def test_every_tasks_loss_reaches_every_shared_parameter(key):
    """What gradient balancers act on must be shared by all trained heads (a tower declared shared fails here).
    The converse is not checked: ParallelMLP keeps all tasks' towers in one tensor that every loss reaches."""
    model = _ctr(key)
    model.train()
    batch, labels = make_batch(model.spec, 64, seed=3)
    losses = HeadLosses(model.heads, model.spec.task_names)(model(batch), labels)
    trained = [h.name for h in model.heads if h.train]
    assert len(losses) == len(trained)
    shared = model.shared_parameters()
    names = {id(p): n for n, p in model.named_parameters()}
    for head, loss in zip(trained, losses):
        missed = [names[id(p)] for p, ok in zip(shared, _reached(loss, shared)) if not ok]
        assert not missed, f"{head}'s loss does not reach the shared {missed}"


@pytest.mark.parametrize("key", CTR)
def test_state_dict_round_trip_gives_identical_outputs(key):
    model = _ctr(key, seed=0)
    batch, labels = make_batch(model.spec, 16, seed=6)
    model.train()  # one step, so the weights (and moving statistics) differ from a fresh init
    torch.optim.SGD(model.parameters(), lr=0.1).zero_grad()
    _ctr_loss(model, batch, labels).backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    fresh = _ctr(key, seed=1)
    fresh.load_state_dict(model.state_dict())
    model.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(batch), model(batch), atol=0, rtol=0)


@pytest.mark.parametrize("key", CTR)
def test_shared_parameters_are_the_pinned_set(key):
    """The explicit declarations give exactly the sets the old name rule gave (tests/data/shared_parameters.json)."""
    assert key in SHARED_PINNED["ctr"], f"pin {key}'s shared parameter names in tests/data/shared_parameters.json"
    assert _shared_names(_ctr(key)) == SHARED_PINNED["ctr"][key]


# --- top-K models ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TOPK)
def test_topk_model_trains_and_ranks(name):
    model = build(name)
    assert model.pairwise == (name in ("mf", "kgat"))
    assert model.heads[model.ranking_head].task == "like" and model.heads[model.ranking_head].space is None
    users, items, labels = pairs(16, seed=1)
    model.train()
    loss = training_loss(model, users, items, labels)
    assert torch.isfinite(loss)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is None or torch.isfinite(g).all() for g in grads.values())
    if name in TOPK_MODELS:  # the adapted CTR models have heads the id pairs do not train (e.g. ESMM's CVR)
        assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
    assert all(p.grad is not None for p in model.shared_parameters())

    model.eval()
    with torch.no_grad():
        cache = model.encode()
        users = torch.tensor([2, 0, 3])
        top = model.score_all(users, cache)
        expanded = model.score(users.repeat_interleave(N_ITEMS), torch.arange(N_ITEMS).repeat(3), cache)
    assert top.shape == (3, N_ITEMS)
    assert torch.allclose(top, expanded[:, model.ranking_head].view(3, N_ITEMS), atol=1e-5)


@pytest.mark.parametrize("name", TOPK)
def test_topk_batch_of_one(name):
    model = build(name)
    users, items, labels = pairs(1, seed=4)
    model.train()
    loss = training_loss(model, users, items, labels)
    assert torch.isfinite(loss)
    loss.backward()
    model.eval()
    with torch.no_grad():
        out = model.score(users, items, model.encode())
    assert out.shape == (1, len(model.heads)) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", TOPK)
def test_topk_eval_score_independent_of_batch(name):
    model = build(name, dropout=0.3) if name != "mf" else build(name)
    model.eval()
    u1, i1, _ = pairs(12, seed=2)
    u2, i2, _ = pairs(12, seed=3)
    with torch.no_grad():
        cache = model.encode()
        a = model.score(u1, i1, cache)
        mixed = model.score(torch.cat([u1[:4], u2[4:]]), torch.cat([i1[:4], i2[4:]]), cache)
        alone = model.score(u1[:1], i1[:1], cache)
        if cache is not None:  # no (message) dropout in eval
            assert torch.equal(model.encode(), cache)
    assert torch.allclose(a[:4], mixed[:4], atol=1e-6)
    assert torch.allclose(a[:1], alone, atol=1e-6)


@pytest.mark.parametrize("name", TOPK)
def test_topk_every_tasks_loss_reaches_every_shared_parameter(name):
    model = build(name)
    model.train()
    users, items, labels = pairs(32, seed=1)
    cache = model.encode()
    if model.pairwise:
        pos, neg = model.score(users, items, cache)[:, 0], model.score(users, items.roll(1), cache)[:, 0]
        logits, losses = pos.unsqueeze(1), [torch.nn.functional.softplus(neg - pos).mean()]
    else:
        logits = model.score(users, items, cache)
        losses = list(HeadLosses(model.heads, TASKS)(logits, labels))
    shared = model.shared_parameters()
    names = {id(p): n for n, p in model.named_parameters()}
    extra = model.extra_loss(logits, labels, cache)  # graph models train their KG embedding (TransD) here
    by_extra = {names[id(p)] for p, ok in zip(shared, _reached(extra, shared)) if ok} if extra is not None else set()
    for loss in losses:
        missed = {names[id(p)] for p, ok in zip(shared, _reached(loss, shared)) if not ok}
        assert missed <= by_extra, f"a task's loss does not reach the shared {sorted(missed - by_extra)}"


@pytest.mark.parametrize("name", TOPK)
def test_topk_state_dict_round_trip_gives_identical_scores(name):
    model = build(name, seed=0)
    users, items, labels = pairs(16, seed=5)
    model.train()
    training_loss(model, users, items, labels).backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
    fresh = build(name, seed=1)
    fresh.load_state_dict(model.state_dict())
    model.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh.score(users, items, fresh.encode()),
                                   model.score(users, items, model.encode()), atol=0, rtol=0)
        torch.testing.assert_close(fresh.score_all(users[:3], fresh.encode()),
                                   model.score_all(users[:3], model.encode()), atol=0, rtol=0)


@pytest.mark.parametrize("name", sorted(TOPK_MODELS))
def test_topk_shared_parameters_are_the_pinned_set(name):
    assert name in SHARED_PINNED["topk"], f"pin {name}'s shared parameter names in tests/data/shared_parameters.json"
    assert _shared_names(build(name)) == SHARED_PINNED["topk"][name]


def test_a_deep_copy_keeps_its_declaration():
    """The declaration holds the parts, not their ids: a copy's shared set is its own parameters, the same names."""
    import copy

    model = _ctr("mmoe")
    clone = copy.deepcopy(model)
    assert _shared_names(clone) == _shared_names(model)
    assert not any(p is q for p in clone.shared_parameters() for q in model.parameters())
