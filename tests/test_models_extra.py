"""OMoE, AITM, ESCM2 and FDN: each model's own
equations (one gate; AIT attention and calibrator; counterfactual risks; orthogonality/auxiliary terms)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import make_batch, make_spec, quiet
from polyrec.balance import build_balancer
from polyrec.config import TrainConfig
from polyrec.data.batching import Batch, TensorTable
from polyrec.data.encoders import EncodedSplit
from polyrec.errors import PolyrecError
from polyrec.models import build_model
from polyrec.models.fdn import orthogonality
from polyrec.data.spec import TaskInfo
from polyrec.train.losses import HeadLosses
from polyrec.train.trainer import Trainer, table_evaluator

EMBED = 8
# every model, plus the non-default variants that change the computation
CONFIGS = [
    ("omoe", {}), ("aitm", {}), ("escm2", {}), ("escm2", {"variant": "dr"}), ("fdn", {}),
    ("fdn", {"orthogonal": False, "auxiliary": False}),
]
IDS = [name + "".join(f"-{k}={v}" for k, v in params.items()) for name, params in CONFIGS]


def _build(name, params=None, spec=None, seed=0):
    torch.manual_seed(seed)
    return build_model(name, spec or make_spec(), EMBED, dict(params or {}))


def _loss(model, batch, labels):
    logits = model(batch)
    total = HeadLosses(model.heads, model.spec.task_names)(logits, labels).sum()
    extra = model.extra_loss(logits, labels)
    return total + extra if extra is not None else total


def _hand_batch() -> tuple[Batch, torch.Tensor]:
    """4 rows written out field by field (3 categorical ids incl. the scenario, 2 numeric, 1 sequence)."""
    categorical = torch.tensor([[1, 4, 1], [7, 0, 2], [3, 24, 3], [11, 9, 0]], dtype=torch.int32)
    numeric = torch.tensor([[0.5, -1.0], [1.5, 0.0], [-0.3, 2.0], [0.0, 0.1]])
    genres = torch.tensor([[1, 2, 0], [8, 0, 0], [0, 0, 0], [3, 4, 5]], dtype=torch.int32)  # 0 = padding
    scenario = categorical[:, 2].to(torch.int64)
    labels = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])  # click, like (like => click)
    return Batch(categorical, numeric, {"genres": genres}, scenario), labels


@pytest.mark.parametrize("name", ["omoe", "aitm", "escm2", "fdn"])
def test_regression_task_alongside_binary(name):
    spec = make_spec([TaskInfo("click", "binary"), TaskInfo("like", "binary"), TaskInfo("rating", "regression")])
    model = _build(name, spec=spec)
    batch, labels = make_batch(spec, 16, seed=5)
    loss = _loss(model, batch, labels)
    loss.backward()
    assert torch.isfinite(loss) and model(batch).shape == (16, len(model.heads))


# --- OMoE ----------------------------------------------------------------------------------
def test_omoe_has_exactly_one_gate_shared_by_every_task():
    model = _build("omoe", {"n_experts": 3})
    gates = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert gates == [model.gate] and model.gate.out_features == 3
    batch, _ = make_batch(model.spec, 8, seed=6)
    seen = {}
    model.towers.register_forward_pre_hook(lambda mod, args: seen.setdefault("tower_in", args[0]))
    model._gates = {}
    model.eval()
    with torch.no_grad():
        model(batch)
        x = model.embedding.flat(batch)
        weights = torch.softmax(model.gate(x), -1)
        expected = torch.einsum("be,bed->bd", weights, model.experts(x))
    assert list(model._gates) == ["gate"] and model._gates["gate"].shape == (8, 1, 3)  # one gate, not one per task
    torch.testing.assert_close(model._gates["gate"][:, 0], weights)
    torch.testing.assert_close(model._gates["gate"].sum(-1), torch.ones(8, 1))
    # every tower reads the one mixture: a single [B, D] input, equal to sum_e w_e expert_e(x)
    assert seen["tower_in"].shape == (8, model.experts.out_dim)
    torch.testing.assert_close(seen["tower_in"], expected, atol=1e-6, rtol=1e-5)


# --- AITM ----------------------------------------------------------------------------------
def test_aitm_calibrator_equals_the_formula_on_crafted_logits():
    spec = make_spec([TaskInfo("click", "binary"), TaskInfo("like", "binary"), TaskInfo("buy", "binary")])
    model = _build("aitm", {"calibrator_weight": 0.6}, spec=spec)
    logits = torch.tensor([[0.0, 2.0, -1.0], [3.0, -3.0, 4.0], [-1.0, -2.0, -3.0], [1.0, 1.0, 5.0]])
    labels = torch.zeros(4, 3)
    p = torch.sigmoid(logits).tolist()
    by_hand = 0.6 * sum(max(r[t] - r[t - 1], 0.0) for r in p for t in (1, 2)) / 4
    assert model.extra_loss(logits, labels).item() == pytest.approx(by_hand, rel=1e-6)
    # the funnel follows task_order, not the column order
    rev = _build("aitm", {"task_order": ["buy", "like", "click"]}, spec=spec)
    by_hand_rev = 0.6 * sum(max(r[t - 1] - r[t], 0.0) for r in p for t in (1, 2)) / 4
    assert rev.extra_loss(logits, labels).item() == pytest.approx(by_hand_rev, rel=1e-6)
    # a monotone funnel costs nothing; weight 0 removes the term
    assert model.extra_loss(torch.tensor([[2.0, 1.0, 0.0]]), torch.zeros(1, 3)).item() == 0.0
    assert _build("aitm", {"calibrator_weight": 0.0}, spec=spec).extra_loss(logits, labels) is None


def test_aitm_attention_is_a_per_sample_softmax_over_two_candidates():
    model = _build("aitm")
    batch, _ = make_batch(model.spec, 8, seed=7)
    model._gates = {}
    model.eval()
    with torch.no_grad():
        model(batch)
    w = model._gates["ait_like"]
    assert list(model._gates) == ["ait_like"] and w.shape == (8, 1, 2)  # click (first) has no AIT
    torch.testing.assert_close(w.sum(-1), torch.ones(8, 1))
    assert (w > 0).all() and not torch.allclose(w[0], w[1])
    # the AIT module against its equations, one sample at a time
    ait = model.ait[0]
    torch.manual_seed(0)
    own, transferred = torch.randn(5, 32), torch.randn(5, 32)
    with torch.no_grad():
        z, weights = ait(own, transferred)
        weight_mats, bias = ait.h.weights[0], ait.h.biases[0]  # [3, d, d], [3, 1, d]
        for i in range(5):
            h = [[u @ weight_mats[j] + bias[j, 0] for j in range(3)] for u in (own[i], transferred[i])]
            scores = torch.stack([h[u][0] @ h[u][1] / math.sqrt(32) for u in range(2)])
            a = torch.softmax(scores, 0)
            torch.testing.assert_close(weights[i], a, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(z[i], a[0] * h[0][2] + a[1] * h[1][2], atol=1e-5, rtol=1e-5)


def test_aitm_information_flows_down_the_funnel_only():
    model = _build("aitm")
    batch, _ = make_batch(model.spec, 16, seed=8)
    tower_w = model.towers.weights[0]  # [T, in, out]; unit 0 = click, 1 = like

    def grad_of(column):
        model.zero_grad()
        model(batch)[:, column].sum().backward()
        return tower_w.grad.clone()

    g_like = grad_of(1)
    assert g_like[0].abs().sum() > 0 and g_like[1].abs().sum() > 0  # like reads click's tower through AIT
    g_click = grad_of(0)
    assert g_click[1].abs().sum() == 0  # ...but click never reads like's


def test_aitm_rejects_a_bad_funnel():
    spec = make_spec([TaskInfo("click", "binary"), TaskInfo("like", "binary"), TaskInfo("rating", "regression")])
    for order in (["click", "rating"], ["click", "nope"], ["click"], ["click", "click"]):
        with pytest.raises(PolyrecError):
            _build("aitm", {"task_order": order}, spec=spec)


# --- ESCM2 ---------------------------------------------------------------------------------
def test_escm2_heads_follow_esmm_naming():
    model = _build("escm2")
    assert [h.name for h in model.heads] == ["click", "like_ctcvr", "like_cvr_on_click"]
    assert [h.train for h in model.heads] == [True, True, False]
    assert model.heads[2].space == "click" and model.heads[2].task == "like"
    batch, _ = make_batch(model.spec, 32, seed=9)
    model.eval()
    with torch.no_grad():
        out = model(batch).double()
    torch.testing.assert_close(out[:, 1], torch.logit(torch.sigmoid(out[:, 0]) * torch.sigmoid(out[:, 2])),
                               atol=1e-5, rtol=1e-5)


def test_escm2_ips_term_equals_a_hand_computation():
    model = _build("escm2", {"counterfactual_weight": 0.5, "propensity_min": 0.2})
    # columns: click logit, ctcvr logit (unused by the term), cvr logit
    logits = torch.tensor([[0.0, 0.0, 1.0], [-2.0, 0.0, -0.5], [3.0, 0.0, 2.0], [1.0, 0.0, 0.3]],
                          requires_grad=True)
    labels = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    total = 0.0
    for (ctr, _, cvr), (o, r) in zip(logits.tolist(), labels.tolist()):
        if o:
            e = -math.log(sig(cvr)) if r else -math.log(1 - sig(cvr))
            total += e / max(sig(ctr), 0.2)  # row 2's pCTR = 0.119 is clipped to 0.2
    term = model.extra_loss(logits, labels)
    assert term.item() == pytest.approx(0.5 * total / 4, rel=1e-6)  # averaged over all 4 rows
    term.backward()
    g = logits.grad
    assert (g[:, 0] == 0).all() and (g[:, 1] == 0).all()  # propensity detached; ctcvr untouched
    assert (g[[0, 1, 3], 2] != 0).all() and g[2, 2] == 0  # only clicked rows train the CVR logit
    # no clicked row: exactly 0, not NaN, and no gradient
    x = logits.detach().clone().requires_grad_()
    none = model.extra_loss(x, torch.zeros(4, 2))
    assert none.item() == 0.0 and not torch.isnan(none)
    none.backward()
    assert (x.grad == 0).all()


def test_escm2_dr_term_equals_a_hand_computation():
    model = _build("escm2", {"variant": "dr", "counterfactual_weight": 1.0, "propensity_min": 0.05})
    batch, labels = _hand_batch()
    model.train()
    logits = model(batch)
    imputed = model._imputed
    assert imputed.shape == (4,) and (imputed >= 0).all()
    o, r = labels[:, 0], labels[:, 1]
    e = F.binary_cross_entropy_with_logits(logits[:, 2], r, reduction="none")
    w = o / torch.sigmoid(logits[:, 0]).detach().clamp(min=0.05)  # the propensity is a constant
    delta = e - imputed
    expected = (imputed + w * delta + w * delta ** 2).mean()
    torch.testing.assert_close(model.extra_loss(logits, labels), expected)
    # jointly learnt, nothing detached but the propensity: same gradient as the formula's w.r.t. every logit
    got_grad, = torch.autograd.grad(model.extra_loss(logits, labels), logits, retain_graph=True)
    want_grad, = torch.autograd.grad(expected, logits, retain_graph=True)
    torch.testing.assert_close(got_grad, want_grad)
    assert got_grad[:, 2].abs().sum() > 0 and (got_grad[:, :2] == 0).all()
    # the imputation tower learns from the term
    model.zero_grad()
    model.extra_loss(logits, labels).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.imputation.parameters())
    # eval forwards skip the imputation tower, and the term then refuses to guess
    model.eval()
    with torch.no_grad():
        eval_logits = model(batch)
    with pytest.raises(PolyrecError):
        model.extra_loss(eval_logits, labels)


def test_escm2_rejects_unknown_variant():
    with pytest.raises(PolyrecError):
        _build("escm2", {"variant": "snips"})


# --- FDN -----------------------------------------------------------------------------------
def test_fdn_orthogonality_is_zero_for_orthogonal_features_and_positive_otherwise():
    # zero-mean columns over a batch of 4: every shared column orthogonal to every specific one
    shared = torch.tensor([[1.0, 2.0], [-1.0, -2.0], [1.0, 2.0], [-1.0, -2.0]]).unsqueeze(1)  # [B, K=1, D=2]
    specific = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]]).unsqueeze(1)
    assert orthogonality(shared, specific).item() == pytest.approx(0.0, abs=1e-12)
    assert orthogonality(shared, shared).item() > 0.1
    torch.manual_seed(0)
    a, b = torch.randn(64, 2, 8), torch.randn(64, 2, 8)
    mixed = a + 0.5 * b  # shares a direction with a
    assert orthogonality(a, mixed) > 5 * orthogonality(a, b) > 0
    # a cross-correlation: an offset common to the batch changes nothing (raw ReLU products would count it)
    torch.testing.assert_close(orthogonality(a + 3.0, b - 2.0), orthogonality(a, b))
    assert orthogonality(shared + 1.0, specific + 1.0).item() == pytest.approx(0.0, abs=1e-12)
    # invariant to the scale of the features (no reward for shrinking them), and 0 for a batch of one
    torch.testing.assert_close(orthogonality(10 * a, 0.1 * mixed), orthogonality(a, mixed))
    one = orthogonality(a[:1], mixed[:1])
    assert one.item() == 0.0 and torch.isfinite(one)


def _fdn_terms(params):
    model = _build("fdn", params)
    batch, labels = make_batch(model.spec, 32, seed=10)
    model.train()
    logits = model(batch)
    return model, logits, labels, model.extra_loss(logits, labels)


def test_fdn_switches_remove_their_terms():
    _, _, _, both = _fdn_terms({})
    ortho_model, _, _, ortho = _fdn_terms({"auxiliary": False})
    aux_model, aux_logits, labels, aux = _fdn_terms({"orthogonal": False})
    _, _, _, neither = _fdn_terms({"orthogonal": False, "auxiliary": False})
    assert neither is None
    assert ortho.item() > 0 and aux.item() > 0
    torch.testing.assert_close(both, ortho + aux)  # same seed: same weights, the two terms add up
    _, _, _, ortho2 = _fdn_terms({"auxiliary": False, "orthogonal_weight": 2.0})
    torch.testing.assert_close(ortho2, 2 * ortho)
    _, _, _, aux3 = _fdn_terms({"orthogonal": False, "auxiliary_weight": 3.0})
    torch.testing.assert_close(aux3, 3 * aux)
    # the orthogonality term pairs shared extractor m with task k's specific extractor m, for every k and m
    with torch.no_grad():
        x = ortho_model.embedding.flat(make_batch(ortho_model.spec, 32, seed=10)[0])
        s_m = ortho_model.shared_extractors(x)  # [B, M, D]
        p_km = ortho_model.task_extractors(x).view(32, 2, 2, -1)  # [B, T, M, D]
    by_hand = sum(orthogonality(s_m[:, m:m + 1], p_km[:, k, m:m + 1]) for k in range(2) for m in range(2))
    torch.testing.assert_close(ortho.detach(), by_hand)
    # the auxiliary term: every specific feature's head predicts its task's label
    with torch.no_grad():
        sp = aux_model.task_extractors(aux_model.embedding.flat(make_batch(aux_model.spec, 32, seed=10)[0]))
        heads = aux_model.task_aux_heads(sp).squeeze(-1)  # [B, T*M], task-major
    expected = sum(F.binary_cross_entropy_with_logits(heads[:, j], labels[:, j // 2]) for j in range(4))
    torch.testing.assert_close(aux.detach(), expected)
    # eval forwards carry no regulariser
    aux_model.eval()
    with torch.no_grad():
        out = aux_model(make_batch(aux_model.spec, 4, seed=1)[0])
    assert aux_model.extra_loss(out, labels[:4]) is None


def test_fdn_tower_reads_all_shared_features_and_only_its_own_specific_ones():
    model = _build("fdn", {"n_pairs": 2})
    batch, _ = make_batch(model.spec, 16, seed=13)
    model.eval()
    for k in range(2):
        model.zero_grad()
        model(batch)[:, k].sum().backward()
        specific = model.task_extractors.weights[0].grad.abs().sum((1, 2))  # per unit, task-major (k, m)
        assert (specific[2 * k:2 * k + 2] > 0).all() and specific.sum() == specific[2 * k:2 * k + 2].sum()
        assert (model.shared_extractors.weights[0].grad.abs().sum((1, 2)) > 0).all()


def test_fdn_auxiliary_loss_mixes_bce_and_mse_and_respects_task_spaces():
    spec = make_spec([TaskInfo("click", "binary"), TaskInfo("like", "binary", space="click"),
                      TaskInfo("rating", "regression")])
    model = _build("fdn", {"n_pairs": 1}, spec=spec)
    aux_logits = torch.tensor([[[0.5], [-1.0], [3.0]], [[2.0], [1.0], [4.5]], [[-0.5], [0.2], [2.0]]])
    labels = torch.tensor([[1.0, 1.0, 4.0], [0.0, 0.0, 5.0], [1.0, 0.0, 1.0]])
    clicked = labels[:, 0] == 1
    expected = (F.binary_cross_entropy_with_logits(aux_logits[:, 0, 0], labels[:, 0])
                + F.binary_cross_entropy_with_logits(aux_logits[clicked, 1, 0], labels[clicked, 1])
                + ((aux_logits[:, 2, 0] - labels[:, 2]) ** 2).mean())
    torch.testing.assert_close(model.auxiliary_loss(aux_logits, labels), expected)


# --- through the trainer ---------------------------------------------------------------------
def _synthetic_table(spec, n: int, seed: int) -> TensorTable:
    """n rows with signal: click and like depend on a numeric value and the item id."""
    batch, _ = make_batch(spec, n, seed)
    rng = np.random.default_rng(seed)
    z = batch.numeric[:, 0].numpy() + (batch.categorical[:, 1].numpy() % 3 - 1)
    click = (rng.random(n) < 1 / (1 + np.exp(-2 * z))).astype(np.float32)
    like = click * (rng.random(n) < 1 / (1 + np.exp(-2 * z + 1))).astype(np.float32)
    split = EncodedSplit(categorical=batch.categorical.numpy(), numeric=batch.numeric.numpy(),
                         sequences={k: v.numpy() for k, v in batch.sequences.items()},
                         scenario=batch.scenario.numpy().astype(np.int32),
                         labels=np.stack([click, like], 1), user=None)
    return TensorTable(split)


@pytest.mark.parametrize("name,params", CONFIGS, ids=IDS)
def test_trains_through_the_trainer_without_nan(name, params):
    spec = make_spec()
    model = _build(name, params, spec=spec)
    train, val = _synthetic_table(spec, 600, seed=11), _synthetic_table(spec, 300, seed=12)
    cfg = TrainConfig(epochs=3, batch_size=64, eval_batch_size=256, lr=3e-3, patience=0, progress=False,
                      log_every=5, seed=3)
    balancer = build_balancer("sum", [h.name for h in model.heads if h.train], {})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    evaluate = table_evaluator(model, val, cfg.eval_batch_size, spec.scenario_names)
    result = Trainer(model, cfg, balancer, evaluate, run_dir=None, log=quiet).fit(train)
    assert len(result.history) == 3
    for record in result.history:
        assert all(math.isfinite(v) for v in record["train_loss"].values())
        assert math.isfinite(record["val"]["overall/mean_auc"])
    losses = [sum(r["train_loss"].values()) for r in result.history]
    assert losses[-1] < losses[0]  # it learns
    assert result.best_score > 0.6  # the signal is easy: a learning model beats chance on validation
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
