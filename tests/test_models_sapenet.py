"""SAPENet and M3oE: the equations of docs/specs/sapenet.md, the ablation switches, per-scenario routing,
balance weights, the S=1 / T=1 cases and the field self-attention layer."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import make_batch, make_spec, splice, take
from polyrec.data.batching import Batch
from polyrec.errors import PolyrecError
from polyrec.layers.attention import FieldSelfAttention
from polyrec.layers.multiview import BalancedExperts, others_matrix
from polyrec.models import MODELS, build_model
from polyrec.models.m3oe import real_scenario_slots
from polyrec.data.spec import ModelSpec, TaskInfo
from polyrec.train.losses import HeadLosses

EMBED = 8
VARIANTS = {
    "m3oe": ("m3oe", {}),
    "sapenet": ("sapenet", {}),
    "sapenet-no-attention": ("sapenet", {"attention": False}),
    "sapenet-mmoe": ("sapenet", {"extraction": "mmoe"}),
}


def _build(variant: str, spec: ModelSpec | None = None, seed: int = 0, embed: int = EMBED, **extra):
    name, params = VARIANTS[variant]
    torch.manual_seed(seed)
    return build_model(name, spec or make_spec(), embed, {**params, **extra})


def _loss(model, batch, labels):
    return HeadLosses(model.heads, model.spec.task_names)(model(batch), labels).sum()


def _with_scenario(batch: Batch, scenario: torch.Tensor) -> Batch:
    return Batch(batch.categorical, batch.numeric, batch.sequences, scenario)


def test_registered():
    assert {"m3oe", "sapenet"} <= set(MODELS)
    with pytest.raises(PolyrecError, match="extraction"):
        build_model("sapenet", make_spec(), EMBED, {"extraction": "cgc"})
    with pytest.raises(PolyrecError, match="n_levels"):
        build_model("sapenet", make_spec(), EMBED, {"n_levels": 0})


# --- generic contract: forward/backward, batch of one, eval independence -----------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_backward_and_batch_of_one(variant):
    spec = make_spec()
    model = _build(variant, spec)
    batch, labels = make_batch(spec, 32, seed=1)
    model.train()
    out = model(batch)
    assert out.shape == (32, 2) and torch.isfinite(out).all()
    model.zero_grad()
    _loss(model, batch, labels).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is None or torch.isfinite(g).all() for g in grads.values())
    for must in ("embedding.", "fusion.star.weight", "fusion.star.scen_weight", "scenario_view.balance_logit",
                 "task_view.alpha_param", "towers."):
        assert any(n.startswith(must) and g is not None and g.abs().sum() > 0 for n, g in grads.items()), must
    one, y1 = make_batch(spec, 1, seed=2)
    for mode in (True, False):
        model.train(mode)
        model.zero_grad()
        loss = _loss(model, one, y1)
        loss.backward()
        assert torch.isfinite(loss)
    with torch.no_grad():
        assert torch.isfinite(model(one)).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_eval_output_of_a_sample_ignores_the_rest_of_its_batch(variant):
    spec = make_spec()
    model = _build(variant, spec).eval()
    a, _ = make_batch(spec, 16, seed=3)
    b, _ = make_batch(spec, 16, seed=4)
    mixed = splice(a, b, [0, 7])
    with torch.no_grad():
        out_a, out_mixed, alone = model(a), model(mixed), model(take(a, slice(7, 8)))
    assert not torch.allclose(out_a[1:7], out_mixed[1:7])
    torch.testing.assert_close(out_mixed[[0, 7]], out_a[[0, 7]], atol=1e-6, rtol=0)
    torch.testing.assert_close(alone[0], out_a[7], atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_output_changes_when_only_the_scenario_id_changes(variant):
    spec = make_spec()
    model = _build(variant, spec).eval()
    batch, _ = make_batch(spec, 8, seed=5)
    with torch.no_grad():
        outs = [model(_with_scenario(batch, torch.full((8,), s))) for s in range(spec.n_scenarios)]
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            assert (outs[i] - outs[j]).abs().min() > 1e-6, (i, j)  # every sample, every task


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_sample_trains_only_its_own_scenarios_towers_and_gates(variant):
    spec = make_spec()
    model = _build(variant, spec)
    batch, labels = make_batch(spec, 12, seed=6)
    batch = _with_scenario(batch, torch.full((12,), 2))
    model.zero_grad()
    _loss(model, batch, labels).backward()
    t = model.n_tasks
    for w in model.towers.weights:  # units are (s, t) pairs, s-major
        per_unit = w.grad.abs().flatten(1).sum(1).view(spec.n_scenarios, t)
        assert (per_unit[2] > 0).all()
        assert (per_unit[[0, 1, 3]] == 0).all()
    if hasattr(model, "pair_gates"):
        e = model.pair_gates.out_features // (spec.n_scenarios * t)
        g = model.pair_gates.weight.grad.abs().sum(1).view(spec.n_scenarios, t, e)
        assert (g[2].sum(-1) > 0).all() and (g[[0, 1, 3]] == 0).all()
    # the STAR per-scenario weights: only slot 2's
    sw = model.fusion.star.scen_weight.grad.abs().flatten(1).sum(1)
    assert sw[2] > 0 and (sw[[0, 1, 3]] == 0).all()


# --- step 3: STAR starts every scenario from the shared weights ----------------------------
@pytest.mark.parametrize("variant", ["m3oe", "sapenet"])
def test_star_per_scenario_weights_start_at_ones_and_zeros(variant):
    spec = make_spec()
    model = _build(variant, spec)
    star = model.fusion.star
    assert star.scen_weight.shape[0] == spec.n_scenarios  # the unknown slot 0 has its own row
    assert (star.scen_weight == 1).all() and (star.scen_bias == 0).all()
    x = torch.randn(5, star.weight.shape[0])
    shared = x @ star.weight + star.bias
    for s in range(spec.n_scenarios):
        torch.testing.assert_close(star(x, torch.full((5,), s)), shared)
        torch.testing.assert_close(model.fusion(x, torch.full((5,), s)),
                                   model.fusion.main(shared) + model.fusion.skip(x))


# --- step 5: balanced mixing ----------------------------------------------------------------------
def test_others_matrix_counts_real_scenarios_only():
    o = others_matrix([False, True, True, True])  # unknown slot + 3 real scenarios
    expected = torch.tensor([[0, 1 / 3, 1 / 3, 1 / 3], [0, 0, 0.5, 0.5], [0, 0.5, 0, 0.5], [0, 0.5, 0.5, 0]])
    torch.testing.assert_close(o, expected)
    assert (others_matrix([True]) == 0).all()
    torch.testing.assert_close(others_matrix([False, True]), torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
    assert real_scenario_slots(make_spec()) == [False, True, True, True]


@pytest.mark.parametrize("per_unit,alpha", [(True, "free"), (False, "sigmoid")])
def test_balanced_experts_match_the_formula(per_unit, alpha):
    torch.manual_seed(0)
    real = [False, True, True, True]
    view = BalancedExperts(4, 6, [5], real, per_unit=per_unit, alpha=alpha)
    with torch.no_grad():  # distinct lambdas/alphas per unit so a mix-up shows
        view.balance_logit.copy_(torch.linspace(-1.5, 2.0, view.balance_logit.numel()))
        view.alpha_param.copy_(torch.linspace(0.3, 1.7, view.alpha_param.numel()))
    x = torch.randn(3, 6)
    u = view.experts(x)
    lam, a = view.balance(), view.alpha()
    n_real = sum(real)
    for i in range(4):
        others = [j for j in range(4) if real[j] and j != i]
        bar = lam[i] * u[:, i] + (1 - lam[i]) / len(others) * sum(u[:, j] for j in others)
        if not per_unit:
            assert lam[i] == lam[0] and a[i] == a[0]
        if i == 0:
            assert len(others) == n_real
        torch.testing.assert_close(view(x)[:, i], a[i] * bar)


def _set_alphas(view: BalancedExperts, value: float) -> None:
    with torch.no_grad():
        view.alpha_param.fill_(value)


@pytest.mark.parametrize("variant", ["m3oe", "sapenet"])
def test_lambda_stays_strictly_inside_0_1_even_when_pushed_hard(variant):
    spec = make_spec()
    batch, labels = make_batch(spec, 16, seed=7)
    for direction in (1.0, -1.0):  # push lambda to 1 (and, from a fresh model, to 0) with a huge learning rate
        model = _build(variant, spec)
        views = [model.scenario_view, model.task_view]
        for v in views:
            lam = v.balance()
            assert ((lam > 0) & (lam < 1)).all()
            torch.testing.assert_close(lam, torch.full_like(lam, 1e-4 + (1 - 2e-4) * torch.sigmoid(torch.tensor(1.0))))
        thetas = [v.balance_logit for v in views]
        rest = [p for p in model.parameters() if all(p is not t for t in thetas)]
        opt = torch.optim.Adam([{"params": thetas, "lr": 5.0}, {"params": rest, "lr": 1e-3}])
        for _ in range(30):
            opt.zero_grad()
            push = sum(v.balance().sum() for v in views)
            (_loss(model, batch, labels) - direction * 1e3 * push).backward()
            opt.step()
        for v in views:
            lam = v.balance()
            assert torch.isfinite(lam).all() and ((lam > 0) & (lam < 1)).all(), (direction, lam)
            # the free parameter went past float32 sigmoid saturation, where a bare sigmoid gives exactly 0 or 1
            assert (direction * v.balance_logit.detach() > 17).all(), v.balance_logit
        with torch.no_grad():
            assert torch.isfinite(model(batch)).all()
            for v in views:  # any value of the free parameter
                v.balance_logit.fill_(direction * 1e6)
                assert ((v.balance() > 0) & (v.balance() < 1)).all()
            assert torch.isfinite(model(batch)).all()


def _manual_logits(model, batch: Batch) -> torch.Tensor:
    """logit_{s,t} = Tower_{s,t}(h_t^ext + alpha_s g_bar_s + alpha_t q_bar_t) with explicit loops (spec steps 5-6)."""
    s_n, t_n = model.n_slots, model.n_tasks
    h = model.trunk(batch)
    ext = model.extract(h, batch.scenario)  # [B, 1 or S, T, D]
    g, q = model.scenario_view.experts(h), model.task_view.experts(h)
    lam_s, a_s = model.scenario_view.balance(), model.scenario_view.alpha()
    lam_t, a_t = model.task_view.balance(), model.task_view.alpha()
    real = real_scenario_slots(model.spec)
    out = torch.empty(len(batch), t_n)
    for b in range(len(batch)):
        s = int(batch.scenario[b])
        others = [j for j in range(s_n) if real[j] and j != s]
        g_bar = lam_s[s] * g[b, s] + ((1 - lam_s[s]) / len(others) * sum(g[b, j] for j in others) if others else 0)
        for t in range(t_n):
            o_t = [k for k in range(t_n) if k != t]
            q_bar = lam_t[t] * q[b, t] + ((1 - lam_t[t]) / len(o_t) * sum(q[b, k] for k in o_t) if o_t else 0)
            f = ext[b, min(s, ext.shape[1] - 1), t] + a_s[s] * g_bar + a_t[t] * q_bar
            unit, x = s * t_n + t, f
            for i, (w, bias) in enumerate(zip(model.towers.weights, model.towers.biases)):
                x = x @ w[unit] + bias[unit, 0]
                if model.towers.hidden[i]:
                    x = torch.relu(x)
            out[b, t] = x.squeeze(-1)
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_matches_the_spec_equations(variant):
    spec = make_spec()
    model = _build(variant, spec).eval()
    _set_alphas(model.scenario_view, 0.7)
    _set_alphas(model.task_view, -0.4)
    batch, _ = make_batch(spec, 10, seed=8)
    with torch.no_grad():
        torch.testing.assert_close(model(batch), _manual_logits(model, batch), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", ["one-scenario-no-unknown", "one-real-plus-unknown", "one-task"])
def test_single_scenario_or_task_drops_the_others_term(variant, case):
    tasks = [TaskInfo("click", "binary")] if case == "one-task" else None
    spec = make_spec(tasks)
    if case == "one-scenario-no-unknown":  # a dataset without a scenario column: one slot, "all"
        spec.scenario_names, spec.vocab_sizes = ["all"], spec.vocab_sizes[:-1]
        spec.categorical_fields = spec.categorical_fields[:-1]
    elif case == "one-real-plus-unknown":
        spec.scenario_names = ["<unknown>", "north"]
        spec.vocab_sizes = spec.vocab_sizes[:-1] + [2]
    model = _build(variant, spec)
    batch, labels = make_batch(spec, 16, seed=9)
    if case == "one-scenario-no-unknown":
        batch = Batch(batch.categorical[:, :-1], batch.numeric, batch.sequences, batch.scenario)
    view = model.task_view if case == "one-task" else model.scenario_view
    real_rows = [i for i, r in enumerate(real_scenario_slots(spec)) if r] if view is model.scenario_view else [0]
    assert (view.others[real_rows] == 0).all()
    h = model.trunk(batch)
    u = view.experts(h)
    for i in real_rows:  # bar_i = lambda_i u_i exactly: no others term, no division by zero
        torch.testing.assert_close(view(h)[:, i], view.alpha()[i] * view.balance()[i] * u[:, i])
    model.zero_grad()
    loss = _loss(model, batch, labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(batch), _manual_logits(model, batch), atol=1e-5, rtol=1e-5)


# --- ablation switches --------------------------------------------------------------------------
def _count_attention_calls(model, batch) -> int:
    calls = []
    handles = [m.register_forward_hook(lambda *_: calls.append(1)) for m in model.modules()
               if isinstance(m, FieldSelfAttention)]
    model(batch)
    for h in handles:
        h.remove()
    return len(calls)


def test_attention_switch():
    spec = make_spec()
    batch, _ = make_batch(spec, 4, seed=10)
    on, off = _build("sapenet", spec), _build("sapenet-no-attention", spec)
    assert isinstance(on.attention, FieldSelfAttention) and _count_attention_calls(on, batch) == 1
    assert on.fusion.star.weight.shape[0] == on.embedding.n_fields * EMBED
    assert off.attention is None and _count_attention_calls(off, batch) == 0
    assert not any("attention" in n for n, _ in off.named_parameters())
    n_attention = sum(p.numel() for p in on.attention.parameters())
    assert sum(p.numel() for p in on.parameters()) - sum(p.numel() for p in off.parameters()) == n_attention
    # the attention is really in the path: zeroing its output projection turns `on` into the residual only
    with torch.no_grad():
        on.attention.out.weight.zero_()
        on.attention.out.bias.zero_()
        e = on.embedding.fields(batch)
        torch.testing.assert_close(on.attention(e), e)


def _gates(model, batch) -> dict[str, torch.Tensor]:
    model._gates = {}
    try:
        model(batch)
        return dict(model._gates)
    finally:
        model._gates = None


def test_extraction_ple_has_per_task_gates_on_two_levels():
    spec = make_spec()
    model = _build("sapenet", spec)
    batch, _ = make_batch(spec, 6, seed=11)
    assert len(model.levels) == 2 and not hasattr(model, "pair_gates")
    m, t = model.params.n_experts, model.n_tasks
    for i, level in enumerate(model.levels):
        assert level.task_gates.n == t  # one gate per task, not per (scenario, task)
        assert level.task_gates.out_dim == 2 * m  # over its M own + M shared experts
        assert level.ns == level.nt == m
        assert (level.shared_gate is None) == (i == 1)  # intermediate level keeps the shared stream
    gates = _gates(model, batch)
    assert sorted(gates) == ["level1_task_gates", "level2_task_gates"]
    for w in gates.values():
        assert w.shape == (6, t, 2 * m)
        torch.testing.assert_close(w.sum(-1), torch.ones(6, t))
    assert len(_build("sapenet", spec, n_levels=3).levels) == 3


@pytest.mark.parametrize("variant", ["sapenet-mmoe", "m3oe"])
def test_extraction_mmoe_has_one_gate_per_scenario_task_pair(variant):
    spec = make_spec()
    model = _build(variant, spec)
    batch, _ = make_batch(spec, 6, seed=12)
    assert not hasattr(model, "levels")
    e = model.experts.n
    assert e == (4 if variant == "m3oe" else model.params.mmoe_experts)
    assert model.pair_gates.out_features == spec.n_scenarios * model.n_tasks * e  # S*T gates of E logits
    h = model.trunk(batch)
    assert model.extract(h, batch.scenario).shape == (6, spec.n_scenarios, model.n_tasks, model.experts.out_dim)
    gates = _gates(model, batch)
    assert list(gates) == ["pair_gates"]
    w = gates["pair_gates"]
    assert w.shape == (6, model.n_tasks, e)
    all_pairs = torch.softmax(model.pair_gates(h).view(6, spec.n_scenarios, model.n_tasks, e), -1)
    torch.testing.assert_close(w, all_pairs[torch.arange(6), batch.scenario])  # each sample's own scenario's gates


def test_shared_parameters():
    for variant in VARIANTS:
        model = _build(variant)
        shared = {id(p) for p in model.shared_parameters()}
        names = {n for n, p in model.named_parameters() if id(p) in shared}
        assert any(n.startswith("embedding") for n in names) and any(n.startswith("fusion") for n in names)
        assert not any(n.startswith(("towers", "pair_gates")) or "task_gates" in n for n in names)
        spec = model.spec
        batch, labels = make_batch(spec, 64, seed=15)
        assert set(batch.scenario.tolist()) == set(range(spec.n_scenarios))
        for t in range(model.n_tasks):  # every shared parameter is reached by every task's loss
            model.zero_grad()
            HeadLosses(model.heads, spec.task_names)(model(batch), labels)[t].backward()
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.shared_parameters()), t


# --- the field self-attention layer ------------------------------------------------------------------
def _reference_attention(layer: FieldSelfAttention, e: torch.Tensor) -> torch.Tensor:
    b, f, d = e.shape
    h, dk = layer.n_heads, layer.head_dim
    q, k, v = layer.qkv(e).split(h * dk, dim=-1)
    heads = []
    for i in range(h):
        qi, ki, vi = (z[..., i * dk:(i + 1) * dk] for z in (q, k, v))
        heads.append(torch.softmax(qi @ ki.transpose(1, 2) / math.sqrt(dk), -1) @ vi)
    return e + layer.out(torch.cat(heads, -1))


@pytest.mark.parametrize("n_fields,dim,heads", [(1, 4, 2), (3, 16, 2), (7, 10, 3), (5, 1, 4), (12, 6, 1)])
def test_field_attention_any_shape(n_fields, dim, heads):
    torch.manual_seed(n_fields * 100 + dim)
    layer = FieldSelfAttention(dim, heads)
    e = torch.randn(4, n_fields, dim)
    out = layer(e)
    assert out.shape == e.shape and layer.head_dim == math.ceil(dim / heads)
    torch.testing.assert_close(out, _reference_attention(layer, e), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer(e[[2, 0]]), out[[2, 0]], atol=1e-6, rtol=0)  # per sample
    if n_fields > 1:  # fields attend to each other: changing field 0 moves every other field's output
        e2 = e.clone()
        e2[:, 0] += 1.0
        assert ((layer(e2)[:, 1:] - out[:, 1:]).abs().amax(-1) > 0).all()


@pytest.mark.parametrize("embed", [3, 16])
def test_sapenet_with_other_field_counts_and_dims(embed):
    spec = make_spec()
    spec.numeric_fields, spec.sequence_vocab = ["age"], {}  # fewer fields
    model = _build("sapenet", spec, embed=embed, n_heads=4)
    batch, labels = make_batch(spec, 8, seed=13)
    assert model.embedding.n_fields == 4
    loss = _loss(model, batch, labels)
    loss.backward()
    assert torch.isfinite(loss)


# --- it learns --------------------------------------------------------------------------------------
def _same_rows_in_every_scenario(spec: ModelSpec, n: int, seed: int) -> tuple[Batch, torch.Tensor]:
    """n base rows repeated in every scenario slot (scenario field hidden); labels flip between odd and even slots."""
    base, _ = make_batch(spec, n, seed=seed)
    k = spec.n_scenarios
    cat = base.categorical.repeat(k, 1)
    cat[:, -1] = 0  # the inputs are identical across slots: only the routing by batch.scenario tells them apart
    batch = Batch(cat, base.numeric.repeat(k, 1), {n_: v.repeat(k, 1) for n_, v in base.sequences.items()},
                  torch.arange(k).repeat_interleave(n))
    y = (base.numeric[:, 0] > 0).float().repeat(k)
    flip = batch.scenario % 2 == 1
    return batch, torch.stack([torch.where(flip, 1 - y, y), torch.where(flip, y, 1 - y)], 1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_learns_labels_that_depend_only_on_the_scenario(variant):
    """The same rows get opposite labels in odd and even scenario slots: a scenario-blind model stays at
    log 2 per task; one that routes by scenario fits them."""
    spec = make_spec()
    model = _build(variant, spec)
    batch, labels = _same_rows_in_every_scenario(spec, 12, seed=14)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        loss = _loss(model, batch, labels)
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * 2 * math.log(2)
    assert ((model.eval()(batch) > 0).float() == labels).all()


def test_per_scenario_task_loss_reduction_matches_the_spec_formula():
    """L_t = sum_s mean_{i in s} BCE (train.loss_reduction=scenario_task), against a hand loop; the default
    pools the scenarios (mean over the batch)."""
    import torch.nn.functional as F

    from polyrec.data.spec import Head
    from polyrec.train.losses import HeadLosses

    torch.manual_seed(0)
    logits = torch.randn(10, 2)
    labels = (torch.rand(10, 2) > 0.5).float()
    scenario = torch.tensor([1, 1, 1, 1, 1, 1, 2, 2, 3, 1])  # slot 0 (unknown) absent
    heads = [Head("click", "click", "binary"), Head("like", "like", "binary")]
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    expected = sum(bce[scenario == s].mean(0) for s in (1, 2, 3))
    got = HeadLosses(heads, ["click", "like"], per_scenario=True)(logits, labels, scenario)
    assert torch.allclose(got, expected)
    assert torch.allclose(HeadLosses(heads, ["click", "like"])(logits, labels, scenario), bce.mean(0))
    # with a sample space: like only on clicked rows, per scenario
    spaced = [heads[0], Head("like", "like", "binary", space="click")]
    got = HeadLosses(spaced, ["click", "like"], per_scenario=True)(logits, labels, scenario)
    clicked = labels[:, 0] == 1
    want_like = sum(bce[(scenario == s) & clicked, 1].mean() for s in (1, 2, 3) if ((scenario == s) & clicked).any())
    assert torch.allclose(got[1], torch.as_tensor(want_like))
    with pytest.raises(ValueError, match="scenario"):
        HeadLosses(heads, ["click", "like"], per_scenario=True)(logits, labels)
