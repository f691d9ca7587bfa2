"""Every registered model with a regression task; ESMM; ParallelMLP. (The registry-wide contracts, forward/backward,
batches of one, per-sample independence, are in tests/test_model_contracts.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from helpers import make_batch, make_spec
from polyrec.metrics.report import evaluate
from polyrec.models import MODELS, build_model
from polyrec.models.esmm import logit_of_product
from polyrec.data.spec import TaskInfo
from polyrec.layers.mlp import MLP, ParallelMLP
from polyrec.train.losses import HeadLosses

ALL_MODELS = sorted(MODELS)
EMBED = 8


def _build(name, spec=None, seed=0):
    torch.manual_seed(seed)
    return build_model(name, spec or make_spec(), EMBED, {})


def test_registry_holds_the_documented_models():
    assert {"mmoe", "ple", "sharedbottom", "singletask", "esmm"} <= set(MODELS)


def _loss(model, batch, labels):
    logits = model(batch)
    total = HeadLosses(model.heads, model.spec.task_names)(logits, labels).sum()
    extra = model.extra_loss(logits, labels)  # regularisers, as the trainer adds them
    return total + extra if extra is not None else total


@pytest.mark.parametrize("name", [m for m in ALL_MODELS if m != "esmm"])
def test_regression_task_alongside_binary(name):
    spec = make_spec([TaskInfo("click", "binary"), TaskInfo("like", "binary"), TaskInfo("rating", "regression")])
    model = _build(name, spec)
    batch, labels = make_batch(spec, 16, seed=5)
    loss = _loss(model, batch, labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert model(batch).shape == (16, len(model.heads))


# --- ESMM -----------------------------------------------------------------------------------
def test_esmm_heads_and_ctcvr_is_product_of_probabilities():
    spec = make_spec()
    model = _build("esmm", spec)
    assert [h.name for h in model.heads] == ["click", "like_ctcvr", "like_cvr_on_click"]
    assert [h.train for h in model.heads] == [True, True, False]
    assert model.heads[2].space == "click" and model.heads[2].task == "like"
    batch, _ = make_batch(spec, 64, seed=6)
    model.eval()
    with torch.no_grad():
        out = model(batch).double()
    ctr, ctcvr, cvr = out[:, 0], out[:, 1], out[:, 2]
    expected = torch.logit(torch.sigmoid(ctr) * torch.sigmoid(cvr))
    torch.testing.assert_close(ctcvr, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ctcvr, cvr, atol=1e-3)  # the ctcvr head is not simply the cvr logit


def test_logit_of_product_is_stable_for_large_logits():
    grid = torch.tensor([-60.0, -30.0, -5.0, -0.5, 0.0, 0.7, 5.0, 30.0, 60.0])
    a, b = torch.meshgrid(grid, grid, indexing="ij")
    got = logit_of_product(a, b)
    assert torch.isfinite(got).all()
    a64, b64 = a.double(), b.double()
    log_p = F.logsigmoid(a64) + F.logsigmoid(b64)
    ref = log_p - torch.log(-torch.expm1(log_p))  # float64 reference
    torch.testing.assert_close(got.double(), ref, atol=1e-3, rtol=1e-4)


def test_esmm_cvr_head_scored_only_on_clicked_rows():
    spec = make_spec()
    model = _build("esmm", spec)
    batch, labels = make_batch(spec, 400, seed=7)
    model.eval()
    with torch.no_grad():
        probs = torch.sigmoid(model(batch)).numpy()
    y = labels.numpy()
    res = evaluate(probs, y, model.heads, spec.task_names, batch.scenario.numpy(), spec.scenario_names)
    clicked = y[:, 0] == 1
    cvr = res["heads"]["like_cvr_on_click"]
    assert cvr["n"] == clicked.sum() < len(y)
    assert cvr["auc"] == pytest.approx(roc_auc_score(y[clicked, 1], probs[clicked, 2]))
    assert res["heads"]["like_ctcvr"]["n"] == len(y)
    for sid, name in enumerate(spec.scenario_names):
        rows = batch.scenario.numpy() == sid
        if rows.any():
            assert res["cells"][name]["like_cvr_on_click"]["n"] == (rows & clicked).sum()


def test_esmm_cvr_tower_learns_through_the_ctcvr_loss():
    spec = make_spec()
    model = _build("esmm", spec)
    batch, labels = make_batch(spec, 64, seed=8)
    head_losses = HeadLosses(model.heads, spec.task_names)
    assert head_losses.names == ["click", "like_ctcvr"]  # the cvr head itself is never trained directly
    cvr_unit = model.ctcvr_idx

    def tower_grads(loss_index):
        model.zero_grad()
        head_losses(model(batch), labels)[loss_index].backward()
        return [w.grad[cvr_unit].clone() for w in model.towers.weights]

    from_ctcvr = tower_grads(1)
    assert all(g.abs().sum() > 0 for g in from_ctcvr)  # every CVR tower layer gets gradient from CTCVR
    from_ctr = tower_grads(0)
    assert all(g.abs().sum() == 0 for g in from_ctr)  # ...and none from the CTR loss


# --- ParallelMLP ----------------------------------------------------------------------------
def _separate_mlps(par: ParallelMLP, dims, out_dim, act, batch_norm):
    mlps = []
    for i in range(par.n):
        m = MLP(par.in_dim, dims, out_dim, 0.0, act, batch_norm)
        linears = [layer for layer in m.net if isinstance(layer, torch.nn.Linear)]
        assert len(linears) == len(par.weights)
        with torch.no_grad():
            for lin, w, b in zip(linears, par.weights, par.biases):
                lin.weight.copy_(w[i].T)
                lin.bias.copy_(b[i, 0])
        mlps.append(m)
    return mlps


@pytest.mark.parametrize("dims,out_dim,act", [([16, 8], 1, "relu"), ([12], None, "gelu"), ([], 5, "relu")])
@pytest.mark.parametrize("shared_input", [True, False])
def test_parallel_mlp_equals_separate_mlps(dims, out_dim, act, shared_input):
    torch.manual_seed(0)
    n, d_in, b = 3, 10, 7
    par = ParallelMLP(n, d_in, dims, out_dim, act=act)
    mlps = _separate_mlps(par, dims, out_dim, act, False)
    x = torch.randn(b, d_in) if shared_input else torch.randn(b, n, d_in)
    got = par(x)
    assert got.shape == (b, n, par.out_dim)
    for i, m in enumerate(mlps):
        xi = x if shared_input else x[:, i]
        torch.testing.assert_close(got[:, i], m(xi), atol=1e-5, rtol=1e-5)
    # units really differ (independent weights), so a mix-up of units would be caught
    assert not torch.allclose(got[:, 0], got[:, 1])


def test_parallel_mlp_with_batch_norm_equals_separate_mlps():
    torch.manual_seed(1)
    n, d_in, dims = 2, 6, [8, 4]
    par = ParallelMLP(n, d_in, dims, 1, batch_norm=True)
    mlps = _separate_mlps(par, dims, 1, "relu", True)
    x = torch.randn(9, n, d_in)
    for mode in ("train", "eval"):  # train: batch statistics; eval: the running statistics just updated
        par.train(mode == "train")
        for m in mlps:
            m.train(mode == "train")
        got = par(x)
        for i, m in enumerate(mlps):
            torch.testing.assert_close(got[:, i], m(x[:, i]), atol=1e-5, rtol=1e-5)


def test_parallel_mlp_gradients_match_separate_mlps():
    torch.manual_seed(2)
    par = ParallelMLP(3, 5, [6], 2)
    mlps = _separate_mlps(par, [6], 2, "relu", False)
    x = torch.randn(4, 5)
    par(x).pow(2).sum().backward()
    for i, m in enumerate(mlps):
        m(x).pow(2).sum().backward()
        torch.testing.assert_close(par.weights[0].grad[i], m.net[0].weight.grad.T, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(par.biases[-1].grad[i, 0].numpy(), m.net[-1].bias.grad.numpy(), atol=1e-5)


# --- per-head losses ------------------------------------------------------------------------
def test_head_losses_mask_sample_space_and_mix_binary_with_regression():
    from polyrec.data.spec import Head

    heads = [Head("click", "click", "binary"), Head("rating", "rating", "regression"),
             Head("like_on_click", "like", "binary", space="click"), Head("skip", "like", "binary", train=False)]
    task_names = ["click", "like", "rating"]
    losses = HeadLosses(heads, task_names)
    assert losses.names == ["click", "rating", "like_on_click"]
    torch.manual_seed(0)
    logits = torch.randn(6, 4)
    labels = torch.tensor([[1, 1, 4.0], [0, 0, 2.0], [1, 0, 3.0], [0, 0, 1.0], [1, 1, 5.0], [0, 0, 2.5]])
    got = losses(logits, labels)
    clicked = labels[:, 0] == 1
    expected = torch.stack([
        F.binary_cross_entropy_with_logits(logits[:, 0], labels[:, 0]),
        ((logits[:, 1] - labels[:, 2]) ** 2).mean(),
        F.binary_cross_entropy_with_logits(logits[clicked, 2], labels[clicked, 1]),
    ])
    torch.testing.assert_close(got, expected)
    # a batch with no row in a head's space: that head's loss is 0 (not NaN) and sends no gradient
    none_clicked = labels.clone()
    none_clicked[:, 0] = 0
    none_clicked[:, 1] = 0
    x = logits.clone().requires_grad_()
    out = losses(x, none_clicked)
    assert torch.isfinite(out).all() and out[2] == 0
    out.sum().backward()
    assert (x.grad[:, 2] == 0).all() and (x.grad[:, 0] != 0).all()
