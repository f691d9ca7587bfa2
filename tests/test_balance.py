"""Task balancers against hand-computed gradients on a tiny problem, plus NaN safety, exact resume,
sparse embeddings and validation.

The tiny problem: one shared parameter theta in R^2 and task losses L_t = c_t ||theta - a_t||^2,
whose gradients are g_t = 2 c_t (theta - a_t).
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from helpers import make_batch, make_spec
from polyrec.balance import BALANCERS, build_balancer
from polyrec.balance.gradnorm import last_shared_layer
from polyrec.balance.grads import task_gradients
from polyrec.balance.pcgrad import project_conflicts
from polyrec.errors import PolyrecError
from polyrec.models import build_model
from polyrec.data.spec import TaskInfo
from polyrec.train.losses import HeadLosses

A = torch.tensor([1.0, 0.0])
B = torch.tensor([-1.0, 1.0])
C = torch.tensor([0.5, 3.0])


def quadratic(theta0, points, scales=None):
    """theta (a leaf) and losses [T]: L_t = c_t ||theta - a_t||^2."""
    theta = nn.Parameter(torch.as_tensor(theta0, dtype=torch.float32).clone())
    scales = scales or [1.0] * len(points)
    losses = torch.stack([c * ((theta - a) ** 2).sum() for a, c in zip(points, scales)])
    return theta, losses


def grads_of(theta0, points, scales=None):
    theta0 = torch.as_tensor(theta0, dtype=torch.float32)
    scales = scales or [1.0] * len(points)
    return [2 * c * (theta0 - a) for a, c in zip(points, scales)]


def step(bal, theta0, points, scales=None, extra_fn=None):
    theta, losses = quadratic(theta0, points, scales)
    extra = extra_fn(theta) if extra_fn else None
    out = bal.backward(losses, extra, [theta])
    return theta.grad.clone(), out


def names(n):
    return ["t1", "t2", "t3"][:n]


# --- loss-level balancers ----------------------------------------------------------------------
def test_sum_and_fixed_combine_gradients_linearly():
    g1, g2 = grads_of([0.0, 0.0], [A, B])
    grad, out = step(build_balancer("sum", names(2), {}), [0.0, 0.0], [A, B])
    assert torch.allclose(grad, g1 + g2)
    assert out.item() == pytest.approx(1.0 + 2.0)
    grad, _ = step(build_balancer("fixed", names(2), {"weights": {"t1": 0.3, "t2": 2.0}}), [0.0, 0.0], [A, B])
    assert torch.allclose(grad, 0.3 * g1 + 2.0 * g2)
    # the regulariser is added with weight 1
    grad, _ = step(build_balancer("sum", names(2), {}), [0.0, 0.0], [A, B], extra_fn=lambda t: (t * t).sum())
    assert torch.allclose(grad, g1 + g2)  # d/dtheta ||theta||^2 = 0 at theta = 0
    grad, _ = step(build_balancer("sum", names(2), {}), [1.0, 2.0], [A, B], extra_fn=lambda t: (t * t).sum())
    g1, g2 = grads_of([1.0, 2.0], [A, B])
    assert torch.allclose(grad, g1 + g2 + 2 * torch.tensor([1.0, 2.0]))


def test_uncertainty_gradients_match_the_closed_form_and_s_is_not_clamped():
    bal = build_balancer("uncertainty", names(2), {}, task_kinds=["binary", "regression"])
    s = torch.tensor([-12.0, 0.3])
    with torch.no_grad():
        bal.log_var.copy_(s)
    theta0 = torch.tensor([0.2, -0.1])
    g1, g2 = grads_of(theta0, [A, B])
    theta, losses = quadratic(theta0, [A, B])
    L = losses.detach()
    out = bal.backward(losses, None, [theta])
    # binary: exp(-s) L + s/2; regression: exp(-s) L / 2 + s/2
    assert out.item() == pytest.approx(math.exp(12) * L[0].item() + 0.5 * -12
                                       + 0.5 * math.exp(-0.3) * L[1].item() + 0.5 * 0.3, rel=1e-5)
    expected_s = torch.stack([-torch.exp(-s[0]) * L[0] + 0.5, -0.5 * torch.exp(-s[1]) * L[1] + 0.5])
    assert torch.allclose(bal.log_var.grad, expected_s, rtol=1e-5)
    assert torch.allclose(theta.grad, torch.exp(-s[0]) * g1 + 0.5 * torch.exp(-s[1]) * g2, rtol=1e-5)
    assert torch.allclose(bal.weights, torch.stack([torch.exp(-s[0]), 0.5 * torch.exp(-s[1])]))
    assert bal.parameters() == [bal.log_var]

    # optimised alone on tiny fixed losses, s goes where the closed form says: far below any clamp
    bal = build_balancer("uncertainty", names(2), {}, task_kinds=["binary", "regression"])
    opt = torch.optim.Adam(bal.parameters(), lr=0.1)
    small = torch.tensor([1e-6, 1e-6], requires_grad=True)
    for _ in range(600):
        opt.zero_grad()
        bal.backward(small * 1.0, None, [])
        opt.step()
    # optimum: exp(-s) L = 1/2 (binary) -> s = log 2L; exp(-s) L = 1 (regression) -> s = log L
    assert bal.log_var[0].item() == pytest.approx(math.log(2e-6), abs=0.05)
    assert bal.log_var[1].item() == pytest.approx(math.log(1e-6), abs=0.05)
    assert bal.log_var.min().item() < -10


def test_uncertainty_skips_a_task_without_samples_even_at_extreme_log_variance():
    bal = build_balancer("uncertainty", names(2), {})
    with torch.no_grad():
        bal.log_var.copy_(torch.tensor([0.5, -100.0]))  # exp(100) overflows float32
    theta = nn.Parameter(torch.zeros(2))
    losses = torch.stack([((theta - A) ** 2).sum(), (theta * 0).sum()])  # task 2: no sample
    out = bal.backward(losses, None, [theta])
    assert torch.isfinite(out) and torch.isfinite(theta.grad).all()
    assert out.item() == pytest.approx(math.exp(-0.5) * 1.0 + 0.25, rel=1e-6)
    # the absent task's s gets no gradient (its 0.5 s term is dropped), the present one the closed form
    assert torch.allclose(bal.log_var.grad, torch.tensor([-math.exp(-0.5) + 0.5, 0.0]))


def test_task_kinds_default_to_binary_and_are_validated():
    assert build_balancer("uncertainty", names(2), {}).task_kinds == ["binary", "binary"]
    with pytest.raises(PolyrecError, match="count"):
        build_balancer("uncertainty", names(2), {}, task_kinds=["binary", "count"])
    with pytest.raises(PolyrecError, match="1 entries for 2 tasks"):
        build_balancer("sum", names(2), {}, task_kinds=["binary"])


def test_dwa_weights_follow_the_formula_after_two_epochs():
    bal = build_balancer("dwa", names(2), {"temperature": 2.0})
    assert bal.weights.tolist() == [1.0, 1.0]
    bal.epoch_end(1, torch.tensor([1.0, 2.0]))
    assert bal.weights.tolist() == [1.0, 1.0]  # epoch 2 still uses 1
    bal.epoch_end(2, torch.tensor([0.5, 1.5]))
    r = torch.tensor([0.5 / 1.0, 1.5 / 2.0])
    w = 2 * torch.exp(r / 2) / torch.exp(r / 2).sum()
    assert torch.allclose(bal.weights, w)
    g1, g2 = grads_of([0.0, 0.0], [A, B])
    grad, _ = step(bal, [0.0, 0.0], [A, B])
    assert torch.allclose(grad, w[0] * g1 + w[1] * g2)
    bal.epoch_end(3, torch.tensor([0.25, 3.0]))  # uses epochs 2 and 3 only
    r = torch.tensor([0.25 / 0.5, 3.0 / 1.5])
    assert torch.allclose(bal.weights, 2 * torch.softmax(r / 2, 0))
    # an epoch in which a task had no sample: no NaN, that task's ratio counts as 1
    bal.epoch_end(4, torch.tensor([0.0, 3.0]))
    bal.epoch_end(5, torch.tensor([0.2, 3.0]))
    assert torch.allclose(bal.weights, 2 * torch.softmax(torch.tensor([1.0, 1.0]) / 2, 0))


# --- gradnorm ---------------------------------------------------------------------------------
def test_gradnorm_targets_are_per_task_and_weights_sum_to_T():
    alpha, lr = 1.5, 0.05
    bal = build_balancer("gradnorm", names(2), {"alpha": alpha, "lr": lr})
    points, scales = [A, B], [1.0, 3.0]
    theta0 = torch.tensor([0.0, 0.0])
    _, losses = quadratic(theta0, points, scales)
    L0 = losses.detach()
    step(bal, theta0, points, scales)  # step 1: all loss ratios are 1, so targets = mean G for everyone
    assert bal.targets[0].item() == pytest.approx(bal.targets[1].item())
    w = bal.w.detach().clone()
    assert w.sum().item() == pytest.approx(2.0)

    theta1 = torch.tensor([0.8, 0.1])  # task 1 nearly solved, task 2 barely moved: ratios differ
    _, losses = quadratic(theta1, points, scales)
    L1 = losses.detach()
    g = grads_of(theta1, points, scales)
    grad, out = step(bal, theta1, points, scales)
    # the model's gradient is sum_t w_t g_t with the weights before this step's update
    assert torch.allclose(grad, w[0] * g[0] + w[1] * g[1])
    assert torch.allclose(bal.weights, w)
    assert out.item() == pytest.approx((w * L1).sum().item())
    norms = torch.stack([w[0] * g[0].norm(), w[1] * g[1].norm()])
    ratio = (L1 / L0) / (L1 / L0).mean()
    targets = norms.mean() * ratio.pow(alpha)
    assert torch.allclose(bal.targets, targets, rtol=1e-5)
    assert bal.targets[1] > bal.targets[0]  # the task that trains slower gets the larger target
    # d/dw_t sum_j |w_j ||g_j|| - target_j| with the targets held constant: sign(G_t - target_t) ||g_t||
    raw = torch.stack([g[0].norm(), g[1].norm()])
    assert torch.allclose(bal.w.grad, torch.sign(norms - targets) * raw, rtol=1e-5)
    assert bal.w.grad[1] < 0 < bal.w.grad[0]  # the slower task's weight is pushed up, the faster one's down
    assert bal.w.detach().sum().item() == pytest.approx(2.0, abs=1e-5)


def test_gradnorm_weight_update_is_one_adam_step_on_the_gradnorm_loss():
    alpha, lr = 1.0, 0.01
    bal = build_balancer("gradnorm", names(2), {"alpha": alpha, "lr": lr})
    points, scales = [A, B], [1.0, 1.0]
    theta0 = torch.tensor([0.3, -0.2])
    step(bal, theta0, points, scales)
    # step 1: all ratios 1 -> target_t = mean_G; gradient of |G_t - target| w.r.t. w_t = sign * ||g_t||
    g = grads_of(theta0, points, scales)
    n = torch.stack([g[0].norm(), g[1].norm()])
    sign = torch.sign(n - n.mean())
    w = torch.ones(2) - lr * sign  # Adam's first step moves by lr * sign(grad)
    w = 2 * w / w.sum()
    assert torch.allclose(bal.w.detach(), w, atol=1e-6)


def test_gradnorm_layer_choice():
    experts_w = nn.Parameter(torch.randn(4, 6, 5))
    experts_b = nn.Parameter(torch.randn(4, 1, 5))  # ParallelMLP bias shape: skipped
    emb = nn.Parameter(torch.randn(10, 3))
    bias = nn.Parameter(torch.randn(5))
    assert last_shared_layer([emb, experts_w, experts_b, bias]) == [experts_w]
    assert last_shared_layer([bias]) == [bias]
    spec = make_spec()
    model = build_model("mmoe", spec, 4, {"n_experts": 2, "expert_dims": [8, 6]})
    chosen = last_shared_layer(model.shared_parameters())
    assert chosen[0] is model.experts.weights[-1]
    ple = build_model("ple", spec, 4, {"n_levels": 2})
    assert last_shared_layer(ple.shared_parameters())[0] is ple.levels[1].shared_experts.weights[-1]


# --- pcgrad -------------------------------------------------------------------------------------
def test_pcgrad_matches_the_hand_computed_projection():
    # theta = 0: g1 = (-2, 0), g2 = (2, -2); g1.g2 = -4 < 0
    #   g1' = g1 - (-4 / 8) g2 = (-1, -1);   g2' = g2 - (-4 / 4) g1 = (0, -2);   sum = (-1, -3)
    bal = build_balancer("pcgrad", names(2), {})
    grad, out = step(bal, [0.0, 0.0], [A, B])
    assert torch.allclose(grad, torch.tensor([-1.0, -3.0]))
    assert out.item() == pytest.approx(3.0)
    g1, g2 = grads_of([0.0, 0.0], [A, B])
    p = project_conflicts(torch.stack([g1, g2]), [[1], [0]])
    assert torch.dot(p[0], g2) >= -1e-6 and torch.dot(p[1], g1) >= -1e-6
    assert torch.allclose(bal.weights, torch.tensor([math.sqrt(2) / 2, 2 / math.sqrt(8)]))
    # no conflict -> plain sum, weights 1
    bal = build_balancer("pcgrad", names(2), {})
    grad, _ = step(bal, [0.0, 0.0], [A, torch.tensor([2.0, 0.5])])
    g1, g2 = grads_of([0.0, 0.0], [A, torch.tensor([2.0, 0.5])])
    assert torch.allclose(grad, g1 + g2) and bal.weights.tolist() == [1.0, 1.0]


def test_pcgrad_three_tasks_is_seeded_and_every_projection_removes_its_conflict():
    g = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [-0.5, -1.0, 1.0]])
    # task 0 against order [2, 1]: projecting on g2 first, then g1
    out = project_conflicts(g, [[2, 1], [0, 2], [1, 0]])
    expected0 = g[0] - torch.dot(g[0], g[2]) / torch.dot(g[2], g[2]) * g[2]
    if torch.dot(expected0, g[1]) < 0:
        expected0 = expected0 - torch.dot(expected0, g[1]) / torch.dot(g[1], g[1]) * g[1]
    assert torch.allclose(out[0], expected0)
    assert torch.dot(out[0], g[1]) >= -1e-6  # the last projection leaves no conflict with g1
    a = build_balancer("pcgrad", names(3), {"seed": 3})
    b = build_balancer("pcgrad", names(3), {"seed": 3})
    assert a._orders(3) == b._orders(3)
    pts = [A, B, C]
    ga, _ = step(a, [0.1, 0.2], pts)
    gb, _ = step(b, [0.1, 0.2], pts)
    assert torch.equal(ga, gb)


def test_pcgrad_resume_continues_the_random_orders():
    pts, theta0 = [A, B, C], [0.1, 0.2]
    a = build_balancer("pcgrad", names(3), {"seed": 0})
    for _ in range(3):
        step(a, theta0, pts)
    state = copy.deepcopy(a.state_dict())
    expected = [step(a, theta0, pts)[0] for _ in range(4)]
    b = build_balancer("pcgrad", names(3), {"seed": 0})
    b.load_state_dict(state)
    assert all(torch.equal(step(b, theta0, pts)[0], e) for e in expected)
    c = build_balancer("pcgrad", names(3), {"seed": 0})  # not resumed: restarts the orders
    assert not all(torch.equal(step(c, theta0, pts)[0], e) for e in expected)


# --- metabalance --------------------------------------------------------------------------------
def test_metabalance_scaled_aux_norm_follows_the_moving_average_formula():
    r, beta = 0.7, 0.9
    bal = build_balancer("metabalance", names(2), {})  # target: t1 (the first task)
    points, scales = [A, B], [1.0, 4.0]
    theta0 = torch.tensor([0.0, 0.0])
    g_tar, g_aux = grads_of(theta0, points, scales)
    grad, out = step(bal, theta0, points, scales)
    # step 1 (averages from 0): ||scaled G_aux|| = r ||G_tar|| + (1 - r) ||G_aux||
    scaled = grad - g_tar
    assert scaled.norm().item() == pytest.approx(r * g_tar.norm().item() + (1 - r) * g_aux.norm().item(), rel=1e-5)
    assert torch.allclose(scaled / scaled.norm(), g_aux / g_aux.norm(), atol=1e-6)  # direction kept
    m_tar, m_aux = (1 - beta) * g_tar.norm(), (1 - beta) * g_aux.norm()

    theta1 = torch.tensor([0.5, 0.5])
    g_tar, g_aux = grads_of(theta1, points, scales)
    grad, _ = step(bal, theta1, points, scales)
    m_tar, m_aux = beta * m_tar + (1 - beta) * g_tar.norm(), beta * m_aux + (1 - beta) * g_aux.norm()
    scale = r * m_tar / m_aux + (1 - r)
    assert torch.allclose(grad, g_tar + scale * g_aux, rtol=1e-5)
    assert (grad - g_tar).norm().item() == pytest.approx(r * g_aux.norm().item() * (m_tar / m_aux).item()
                                                         + (1 - r) * g_aux.norm().item(), rel=1e-5)
    assert bal.weights[0].item() == 1.0 and bal.weights[1].item() == pytest.approx(scale.item(), rel=1e-5)


def test_metabalance_does_not_decay_the_average_of_a_task_without_samples():
    r, beta = 0.7, 0.9
    bal = build_balancer("metabalance", names(2), {})
    theta0 = torch.tensor([0.0, 0.0])
    g_tar, g_aux = grads_of(theta0, [A, B])
    step(bal, theta0, [A, B])
    m_tar, m_aux = (1 - beta) * g_tar.norm(), (1 - beta) * g_aux.norm()
    theta = nn.Parameter(theta0.clone())  # step 2: the auxiliary task has no sample
    bal.backward(torch.stack([((theta - A) ** 2).sum(), (theta * 0).sum()]), None, [theta])
    assert torch.allclose(theta.grad, g_tar)
    m_tar = beta * m_tar + (1 - beta) * g_tar.norm()
    grad, _ = step(bal, theta0, [A, B])  # step 3: m_aux was left alone on step 2
    m_tar, m_aux = beta * m_tar + (1 - beta) * g_tar.norm(), beta * m_aux + (1 - beta) * g_aux.norm()
    assert torch.allclose(grad, g_tar + (r * m_tar / m_aux + 1 - r) * g_aux, rtol=1e-5)


@pytest.mark.parametrize("mode", ["all", "larger", "smaller"])
def test_metabalance_modes_leave_the_other_aux_gradients_unchanged(mode):
    # target t2 (||g|| = 2 sqrt 2); t1 small aux (||g|| = 0.2), t3 large aux (||g|| = 10 sqrt 2)
    points, scales = [A, B, torch.tensor([1.0, -1.0])], [0.1, 1.0, 5.0]
    theta0 = torch.tensor([0.0, 0.0])
    g = grads_of(theta0, points, scales)
    bal = build_balancer("metabalance", names(3), {"target": "t2", "mode": mode, "relax": 0.5})
    grad, _ = step(bal, theta0, points, scales)
    n = [x.norm() for x in g]
    s_small = 0.5 * n[1] / n[0] + 0.5  # averages from 0: m_tar / m_j = ||g_tar|| / ||g_j||
    s_large = 0.5 * n[1] / n[2] + 0.5
    s1 = s_small if mode in ("all", "smaller") else torch.tensor(1.0)
    s3 = s_large if mode in ("all", "larger") else torch.tensor(1.0)
    assert torch.allclose(grad, g[1] + s1 * g[0] + s3 * g[2], rtol=1e-5)
    assert torch.allclose(bal.weights, torch.stack([s1, torch.tensor(1.0), s3]), rtol=1e-5)


def test_metabalance_keeps_the_regulariser_out_of_the_target_norm_and_checks_its_name():
    """The extra losses are their own, unscaled term: m_tar follows the target task's gradient alone."""
    r = 0.7
    bal = build_balancer("metabalance", names(2), {"target": "t2"})
    theta0 = torch.tensor([1.0, 1.0])
    g1, g2 = grads_of(theta0, [A, B])
    extra_grad = 2 * theta0  # d/dtheta ||theta||^2
    grad, out = step(bal, theta0, [A, B], extra_fn=lambda t: (t * t).sum())
    scale = r * g2.norm() / g1.norm() + (1 - r)
    assert torch.allclose(grad, g2 + scale * g1 + extra_grad, rtol=1e-5)
    big, _ = step(build_balancer("metabalance", names(2), {"target": "t2"}), theta0, [A, B],
                  extra_fn=lambda t: 1000 * (t * t).sum())  # a huge regulariser leaves the aux scale alone
    assert torch.allclose(big, g2 + scale * g1 + 1000 * extra_grad, rtol=1e-5)
    assert out.item() == pytest.approx(1.0 + 4.0 + 2.0)  # L1 + L2 + ||theta||^2
    with pytest.raises(PolyrecError, match="'t2'"):
        build_balancer("metabalance", names(2), {"target": "t_2"})


def test_metabalance_per_parameter_norms():
    bal = build_balancer("metabalance", names(2), {"norm": "parameter", "relax": 1.0})
    u = nn.Parameter(torch.tensor([1.0, 2.0]))
    v = nn.Parameter(torch.tensor([0.5]))
    losses = torch.stack([(u * u).sum() + 10 * v.sum(), 3 * (u.sum()) + v.sum() ** 2])
    bal.backward(losses, None, [u, v])
    # r = 1: each parameter's aux gradient is rescaled to the target's norm on that parameter
    gu_tar, gv_tar = 2 * torch.tensor([1.0, 2.0]), torch.tensor([10.0])
    gu_aux, gv_aux = torch.tensor([3.0, 3.0]), torch.tensor([1.0])
    assert torch.allclose(u.grad, gu_tar + gu_aux * gu_tar.norm() / gu_aux.norm())
    assert torch.allclose(v.grad, gv_tar + gv_aux * gv_tar.norm() / gv_aux.norm())


# --- every strategy on a real model ---------------------------------------------------------------
ALL = [("sum", {}), ("fixed", {"weights": {"click": 2.0}}), ("uncertainty", {}), ("dwa", {}),
       ("gradnorm", {}), ("gradnorm", {"layer": "all"}), ("pcgrad", {}), ("metabalance", {}),
       ("metabalance", {"norm": "parameter", "mode": "larger"})]
IDS = [f"{n}-{'-'.join(map(str, p.values())) or 'default'}" for n, p in ALL]


def test_every_balancer_is_covered():
    assert {n for n, _ in ALL} == set(BALANCERS)


def _model(model_name="mmoe", tasks=None, seed=0):
    spec = make_spec(tasks)
    torch.manual_seed(seed)
    model = build_model(model_name, spec, 4, {"n_experts": 2, "expert_dims": [8], "tower_dims": [4]}
                        if model_name == "mmoe" else {"expert_dims": [8], "tower_dims": [4]})
    return spec, model


@pytest.mark.parametrize(("name", "params"), [("pcgrad", {}), ("metabalance", {}), ("gradnorm", {}),
                                              ("gradnorm", {"layer": "all"})])
@pytest.mark.parametrize("model_name", ["mmoe", "ple"])
def test_gradient_balancers_give_non_shared_parameters_their_ordinary_gradients(name, params, model_name):
    spec, model = _model(model_name)
    heads = HeadLosses(model.heads, spec.task_names)
    shared = model.shared_parameters()
    heads_ = HeadLosses(model.heads, spec.task_names)
    for seed in range(200):  # the first batch on which the two tasks' shared gradients conflict
        batch, labels = make_batch(spec, 16, seed)
        labels[:, 1] = 1 - labels[:, 0]  # opposed tasks
        losses = heads_(model(batch), labels)
        g1, g2 = (torch.cat([x.reshape(-1) for x in torch.autograd.grad(losses[t], shared, retain_graph=True,
                                                                        materialize_grads=True)]) for t in range(2))
        if torch.dot(g1, g2) < 0:
            break
    else:  # (PLE at initialisation: none found; MMoE's projection below must then be exercised)
        assert model_name != "mmoe", "no batch with conflicting task gradients"
        batch, labels = make_batch(spec, 64, 0)
    shared_ids = {id(p) for p in shared}
    model.zero_grad(set_to_none=True)
    build_balancer("sum", spec.task_names, {}).backward(heads(model(batch), labels), None, shared)
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    bal = build_balancer(name, spec.task_names, params)
    bal.backward(heads(model(batch), labels), None, shared)
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == plain.keys()  # same parameters touched (unused ones stay None)
    if name == "gradnorm":  # its first step's weights are 1: every gradient is the plain sum's
        assert all(torch.allclose(got[n], plain[n], atol=1e-7) for n in plain)
    for n, p in model.named_parameters():
        if n in plain and id(p) not in shared_ids:
            assert torch.allclose(got[n], plain[n], atol=1e-7), n
    if name == "pcgrad":  # the shared gradient is the hand-made projection of the two task gradients
        used = [p for p in shared if p.grad is not None]
        losses = heads(model(batch), labels)
        g1, g2 = (torch.cat([x.reshape(-1) for x in torch.autograd.grad(losses[t], used, retain_graph=True)])
                  for t in range(2))
        dot = torch.dot(g1, g2)
        expected = (g1 - dot / g2.dot(g2) * g2) + (g2 - dot / g1.dot(g1) * g1) if dot < 0 else g1 + g2
        assert torch.allclose(torch.cat([p.grad.reshape(-1) for p in used]), expected, atol=1e-6)
    if name == "metabalance":
        assert any(not torch.allclose(got[n], plain[n]) for n, p in model.named_parameters()
                   if n in plain and id(p) in shared_ids)


@pytest.mark.parametrize(("name", "params"), ALL, ids=IDS)
@pytest.mark.parametrize("model_name", ["mmoe", "ple"])
def test_a_task_without_samples_gives_no_nan(name, params, model_name):
    # "like" is trained only where click == 1; with no click in the batch its loss is 0, gradient 0
    tasks = [TaskInfo("click", "binary"), TaskInfo("like", "binary", space="click"),
             TaskInfo("dwell", "regression")]
    spec, model = _model(model_name, tasks)
    heads = HeadLosses(model.heads, spec.task_names)
    kinds = [h.kind for h in model.heads]
    bal = build_balancer(name, heads.names, params, task_kinds=kinds)
    opt = torch.optim.Adam(list(model.parameters()) + bal.parameters(), lr=0.01)
    for i in range(4):
        batch, labels = make_batch(spec, 32, i)
        if i % 2 == 0:
            labels[:, 0] = 0.0  # no click -> "like" has no sample
        losses = heads(model(batch), labels)
        if i % 2 == 0:
            assert losses[1].item() == 0.0
        opt.zero_grad(set_to_none=True)
        out = bal.backward(losses, None, model.shared_parameters())
        assert torch.isfinite(out)
        for n, p in model.named_parameters():
            if p.grad is not None:
                assert torch.isfinite(p.grad.to_dense() if p.grad.is_sparse else p.grad).all(), n
        assert torch.isfinite(bal.weights).all()
        opt.step()
        bal.epoch_end(i + 1, losses.detach())
    assert torch.isfinite(bal.weights).all()


def test_zero_loss_in_first_step_on_the_quadratic_problem():
    for name, params in ALL:
        if name == "fixed":
            params = {"weights": {"t1": 2.0}}
        bal = build_balancer(name, names(2), params)
        theta = nn.Parameter(torch.zeros(2))
        losses = torch.stack([((theta - A) ** 2).sum(), (theta * 0).sum()])
        out = bal.backward(losses, None, [theta])
        assert torch.isfinite(out) and torch.isfinite(theta.grad).all(), name
        assert torch.isfinite(bal.weights).all(), name


def _train_steps(model, bal, opt, spec, heads, seeds):
    for s in seeds:
        batch, labels = make_batch(spec, 32, s)
        losses = heads(model(batch), labels)
        opt.zero_grad(set_to_none=True)
        bal.backward(losses, None, model.shared_parameters())
        opt.step()
        if s % 2 == 1:
            bal.epoch_end(s, losses.detach() * (1 + 0.1 * s))


@pytest.mark.parametrize(("name", "params"), ALL, ids=IDS)
def test_state_dict_round_trip_reproduces_the_next_step_exactly(name, params):
    tasks = [TaskInfo("click", "binary"), TaskInfo("like", "binary"), TaskInfo("dwell", "regression")]

    def fresh():
        spec, model = _model("mmoe", tasks, seed=5)
        heads = HeadLosses(model.heads, spec.task_names)
        bal = build_balancer(name, heads.names, params, task_kinds=[h.kind for h in model.heads])
        opt = torch.optim.Adam(list(model.parameters()) + bal.parameters(), lr=0.01)
        return spec, model, heads, bal, opt

    spec, model, heads, bal, opt = fresh()
    _train_steps(model, bal, opt, spec, heads, [0, 1, 2, 3])
    buf = io.BytesIO()  # through torch.save / weights_only load, as the trainer's checkpoint goes
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "bal": bal.state_dict()}, buf)
    _train_steps(model, bal, opt, spec, heads, [4, 5, 6])
    expected = copy.deepcopy(model.state_dict()), bal.weights.clone()

    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    spec, model2, heads, bal2, opt2 = fresh()
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    bal2.load_state_dict(ckpt["bal"])
    _train_steps(model2, bal2, opt2, spec, heads, [4, 5, 6])
    for k, v in expected[0].items():
        assert torch.equal(model2.state_dict()[k], v), k
    assert torch.equal(bal2.weights, expected[1])


@pytest.mark.parametrize(("name", "params"), [("pcgrad", {}), ("metabalance", {}),
                                              ("metabalance", {"norm": "parameter"}), ("gradnorm", {"layer": "all"})])
def test_sparse_embedding_gradients_equal_the_dense_ones(name, params):
    spec, _ = _model()
    batch, labels = make_batch(spec, 64, 2)
    results = []
    for sparse in (False, True):
        _, model = _model(seed=3)
        for m in model.modules():
            if isinstance(m, nn.Embedding):
                m.sparse = sparse
        heads = HeadLosses(model.heads, spec.task_names)
        bal = build_balancer(name, spec.task_names, params)
        bal.backward(heads(model(batch), labels), None, model.shared_parameters())
        table = model.embedding.embedding.table.weight
        assert table.grad.is_sparse == sparse
        results.append({n: (p.grad.to_dense() if p.grad.is_sparse else p.grad).clone()
                        for n, p in model.named_parameters() if p.grad is not None})
        results.append(bal.weights.clone())
    dense, w_dense, sparse, w_sparse = results
    assert dense.keys() == sparse.keys()
    for k in dense:
        assert torch.allclose(dense[k], sparse[k], atol=1e-6), k
    assert torch.allclose(w_dense, w_sparse, atol=1e-6)


def test_task_gradients_helper_shapes_and_unused_parameters():
    u = nn.Parameter(torch.tensor([1.0, 2.0]))
    unused = nn.Parameter(torch.ones(3))
    w = nn.Parameter(torch.ones(2, 2))
    losses = torch.stack([(u * u).sum(), (w.sum() * u[0])])
    g = task_gradients(losses, [u, unused, w])
    assert g.flat.shape == (2, 2 + 3 + 4)
    assert torch.allclose(g.flat[0], torch.tensor([2.0, 4.0] + [0.0] * 7))
    assert torch.allclose(g.flat[1], torch.tensor([4.0, 0.0] + [0.0] * 3 + [1.0] * 4))
    assert g.used == [True, False, True]
    g.write(g.flat.sum(0))
    assert unused.grad is None and torch.allclose(w.grad, torch.ones(2, 2))


# --- validation -------------------------------------------------------------------------------------
def test_unknown_parameters_and_names_raise_with_close_matches():
    with pytest.raises(PolyrecError, match="unknown key 'alpah'.*'alpha'"):
        build_balancer("gradnorm", names(2), {"alpah": 1.0})
    with pytest.raises(PolyrecError, match="'relax'"):
        build_balancer("metabalance", names(2), {"relx": 0.5})
    with pytest.raises(PolyrecError, match="'pcgrad'"):
        build_balancer("pcgard", names(2), {})
    with pytest.raises(PolyrecError, match="mode"):
        build_balancer("metabalance", names(2), {"mode": "bigger"})


# --- through the real trainer: logged weights, checkpoints, exact resume ---------------------------------
@pytest.mark.parametrize("name", ["uncertainty", "dwa", "gradnorm"])
def test_trainer_resume_with_each_balancer_replays_the_uninterrupted_run(name, tiny_recipe, tmp_path, monkeypatch):
    import json

    from helpers import quiet
    from polyrec.config import load_config
    from polyrec.runs import train_run
    from polyrec.train.trainer import Trainer

    cfg = load_config(None, [
        "data.dataset=tiny-synthetic", "model.name=mmoe", "model.embed_dim=4", "model.n_experts=2",
        "model.expert_dims=[8]", "model.tower_dims=[4]", "train.epochs=3", "train.batch_size=256",
        "train.progress=false", "train.seed=1", "train.patience=0", "train.log_every=2",
        f"train.balance={name}", "train.balance_params={}"])
    full = train_run(cfg, tmp_path / "full", log=quiet)
    steps = [json.loads(line) for line in (tmp_path / "full" / "steps.jsonl").read_text().splitlines()]
    weights = [list(s["weights"].values()) for s in steps]
    assert all(math.isfinite(w) for ws in weights for w in ws)
    if name != "pcgrad":  # pcgrad's weights are 1 whenever the two tasks happen not to conflict
        assert any(ws != [1.0, 1.0] for ws in weights), "the balancer never changed its weights"
    if name == "dwa":  # epochs 1-2 use 1, epoch 3 the DWA weights
        assert all(list(s["weights"].values()) == [1.0, 1.0] for s in steps if s["epoch"] < 3)

    real_epoch = Trainer._train_epoch

    def interrupting_epoch(self, table, epoch, step, progress):
        if epoch == 2:
            real_step, calls = self.optimizer.step, []

            def step_then_interrupt(*a, **k):
                calls.append(1)
                if len(calls) > 3:
                    raise KeyboardInterrupt
                return real_step(*a, **k)

            self.optimizer.step = step_then_interrupt
        return real_epoch(self, table, epoch, step, progress)

    monkeypatch.setattr(Trainer, "_train_epoch", interrupting_epoch)
    run = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, run, log=quiet)
    monkeypatch.setattr(Trainer, "_train_epoch", real_epoch)
    resumed = train_run(cfg, run, resume=True, log=quiet)
    assert (run / "steps.jsonl").read_text() == (tmp_path / "full" / "steps.jsonl").read_text()
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]
