"""Multi-scenario models (STAR, SAR-Net, M2M, PEPNet) and their per-scenario layers.

Synthetic spec (helpers.make_spec): 3 scenarios + the unknown slot x 2 binary tasks; categorical,
numeric and sequence fields. Every check below can fail: each "unchanged" assertion is paired with
one showing that the quantity does change when it should.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import make_batch, make_spec, splice, take
from polyrec.data.batching import Batch
from polyrec.errors import PolyrecError
from polyrec.layers.scenario import PartitionedNorm, scenario_matmul
from polyrec.models import MODELS, build_model
from polyrec.models.pepnet import GateNU
from polyrec.data.spec import ModelSpec, TaskInfo
from polyrec.train.losses import HeadLosses

SCENARIO_MODELS = ["star", "sarnet", "m2m", "pepnet"]
EMBED = 8


def _build(name, spec=None, seed=0, **params):
    torch.manual_seed(seed)
    return build_model(name, spec or make_spec(), EMBED, params)


def _with_scenario(batch: Batch, scenario: torch.Tensor) -> Batch:
    """The same rows with other scenario ids (features, the scenario feature column included, unchanged)."""
    return Batch(batch.categorical, batch.numeric, batch.sequences, scenario)


def _rows(batch: Batch, idx: list[int]) -> Batch:
    i = torch.tensor(idx)
    return Batch(batch.categorical[i], batch.numeric[i], {k: v[i] for k, v in batch.sequences.items()},
                 batch.scenario[i])


def _loss(model, batch, labels):
    return HeadLosses(model.heads, model.spec.task_names)(model(batch), labels).sum()


def _warm_up(model, spec, steps=3):
    """A few train-mode forwards, so moving statistics (STAR's PN) are no longer at their init."""
    model.train()
    with torch.no_grad():
        for i in range(steps):
            model(make_batch(spec, 64, seed=100 + i)[0])
    model.eval()


def _train_a_little(model, spec, steps=5):
    """A few Adam steps on random batches: every parameter moves away from its init."""
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for i in range(steps):
        batch, labels = make_batch(spec, 64, seed=200 + i)
        opt.zero_grad()
        _loss(model, batch, labels).backward()
        opt.step()
    model.eval()


def test_registered():
    assert set(SCENARIO_MODELS) <= set(MODELS)


# --- every scenario model -------------------------------------------------------------------
@pytest.mark.parametrize("name", SCENARIO_MODELS)
def test_forward_backward_reaches_every_parameter(name):
    spec = make_spec()
    model = _build(name, spec)
    batch, labels = make_batch(spec, 48, seed=1)
    model.train()
    out = model(batch)
    assert out.shape == (48, 2) and torch.isfinite(out).all()
    _loss(model, batch, labels).backward()
    unused = {"embedding.numeric_vectors"} if name in ("sarnet", "m2m") else set()  # flat input: raw numerics
    for n, p in model.named_parameters():
        if n not in unused:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n


@pytest.mark.parametrize("name", SCENARIO_MODELS)
@pytest.mark.parametrize("scenario", [0, 1, 3])
def test_batch_of_one_train_and_eval(name, scenario):
    spec = make_spec()
    model = _build(name, spec)
    batch, labels = make_batch(spec, 1, seed=2)
    batch = _with_scenario(batch, torch.tensor([scenario]))
    model.train()
    loss = _loss(model, batch, labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        out = model(batch)
    assert out.shape == (1, 2) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", SCENARIO_MODELS)
def test_eval_output_ignores_the_rest_of_the_batch_and_its_scenarios(name):
    spec = make_spec()
    model = _build(name, spec)
    _warm_up(model, spec)
    a, _ = make_batch(spec, 16, seed=3)
    a = _with_scenario(a, torch.tensor([1] * 8 + [2] * 4 + [3] * 4))
    with torch.no_grad():
        full = model(a)
        alone = model(take(a, slice(0, 1)))
        # row 0 (scenario 1) next to rows of other scenarios only
        others = model(take(a, slice(8, 16)))
        mixed = model(_rows(a, [0, *range(8, 16)]))
    torch.testing.assert_close(alone[0], full[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed[0], full[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed[1:], others, atol=1e-5, rtol=0)
    assert not torch.allclose(full[0], full[1])  # rows really differ


@pytest.mark.parametrize("name", SCENARIO_MODELS)
def test_output_changes_when_only_the_scenario_id_changes(name):
    spec = make_spec()
    model = _build(name, spec)
    _train_a_little(model, spec)
    batch, _ = make_batch(spec, 8, seed=4)
    with torch.no_grad():
        outs = [model(_with_scenario(batch, torch.full((8,), s))) for s in range(spec.n_scenarios)]
    for s in range(1, spec.n_scenarios):
        diff = (outs[s] - outs[0]).abs()
        assert (diff > 0).all() and diff.mean() > 1e-5, s  # every row and task moves, well above float noise
    # and the scenario comes from batch.scenario only: same ids, same output
    torch.testing.assert_close(model(_with_scenario(batch, torch.full((8,), 2))), outs[2])


@pytest.mark.parametrize("name", SCENARIO_MODELS)
def test_a_sample_trains_only_its_own_scenario_parameters(name):
    spec = make_spec()
    model = _build(name, spec)
    batch, labels = make_batch(spec, 32, seed=5)
    batch = _with_scenario(batch, torch.arange(32) % 4)
    model.train()
    rows = batch.scenario == 2
    logits = model(batch)
    F.binary_cross_entropy_with_logits(logits[rows], labels[rows]).backward()
    banks = [(n, p) for n, p in model.named_parameters()  # per-scenario rows (SAR-Net experts: S*k units)
             if n == "scenario_emb" or ".scen_" in n or n.startswith(("transform.", "scenario_experts."))]
    assert len(banks) >= {"star": 9, "sarnet": 5}.get(name, 1)
    for n, p in banks:
        g = p.grad.unflatten(0, (spec.n_scenarios, -1))
        assert g[2].abs().sum() > 0, n
        assert g[[0, 1, 3]].abs().sum() == 0, n


@pytest.mark.parametrize("name", SCENARIO_MODELS)
def test_shared_parameters_are_reached_by_every_task(name):
    spec = make_spec()
    model = _build(name, spec)
    batch, _ = make_batch(spec, 32, seed=6)
    shared = model.shared_parameters()
    names = {id(p): n for n, p in model.named_parameters()}
    assert shared and not any(names[id(p)].startswith(("towers", "task_")) for p in shared)
    model.train()
    for t in range(2):
        model.zero_grad()
        model(batch)[:, t].sum().backward()
        for p in shared:
            assert p.grad is not None and p.grad.abs().sum() > 0, (t, names[id(p)])


@pytest.mark.parametrize("name", SCENARIO_MODELS)
def test_dataset_without_scenarios_and_without_sequences(name):
    spec = ModelSpec(vocab_sizes=[10, 20], categorical_fields=["u", "i"], numeric_fields=["x"], sequence_vocab={},
                     scenario_names=["all"], tasks=[TaskInfo("click", "binary"), TaskInfo("like", "binary")])
    model = _build(name, spec)
    g = torch.Generator().manual_seed(0)
    batch = Batch(torch.stack([torch.randint(0, 10, (5,), generator=g), torch.randint(0, 20, (5,), generator=g)], 1)
                  .int(), torch.randn(5, 1, generator=g), {}, torch.zeros(5, dtype=torch.int64))
    model.train()
    model(batch).sum().backward()
    model.eval()
    assert torch.isfinite(model(batch)).all()


@pytest.mark.parametrize("name,key", [("star", "domain_fields"), ("sarnet", "debias_fields"),
                                      ("pepnet", "prior_fields"), ("pepnet", "domain_fields")])
def test_unknown_field_names_are_errors(name, key):
    with pytest.raises(PolyrecError, match="nope"):
        _build(name, **{key: ["nope"]})


@pytest.mark.parametrize("name,key", [("star", "domain_fields"), ("sarnet", "debias_fields"),
                                      ("pepnet", "prior_fields"), ("pepnet", "domain_fields")])
def test_named_fields_are_used(name, key):
    spec = make_spec()
    model = _build(name, spec, **{key: ["item_id", "price"]})
    batch, labels = make_batch(spec, 16, seed=7)
    model.train()
    _loss(model, batch, labels).backward()
    assert torch.isfinite(model(batch)).all()


# --- per-scenario layers --------------------------------------------------------------------
def test_scenario_matmul_equals_a_loop_over_rows():
    torch.manual_seed(0)
    scen = torch.tensor([2, 0, 1, 2, 3])
    x2, w3 = torch.randn(5, 6), torch.randn(4, 6, 3)
    got = scenario_matmul(x2, w3, scen)
    torch.testing.assert_close(got, torch.stack([x2[b] @ w3[scen[b]] for b in range(5)]))
    x3, w4 = torch.randn(5, 2, 6), torch.randn(4, 2, 6, 3)
    got = scenario_matmul(x3, w4, scen)
    ref = torch.stack([torch.stack([x3[b, j] @ w4[scen[b], j] for j in range(2)]) for b in range(5)])
    torch.testing.assert_close(got, ref)
    got = scenario_matmul(x3, w3, scen)  # one matrix per slot shared by the units
    torch.testing.assert_close(got, torch.stack([x3[b] @ w3[scen[b]] for b in range(5)]))


def test_partitioned_norm_trains_on_each_scenarios_own_batch_statistics():
    torch.manual_seed(0)
    pn = PartitionedNorm(4, 5, momentum=0.5)
    with torch.no_grad():
        pn.scen_gamma.uniform_(0.5, 1.5)
        pn.scen_beta.normal_()
    z = torch.randn(12, 5) * 3 + 1
    scen = torch.tensor([1, 1, 1, 1, 2, 2, 2, 3, 1, 2, 1, 2])  # scenario 3 has one row, 0 has none
    out = pn(z, scen)
    for s in (1, 2):
        rows = scen == s
        ref = F.batch_norm(z[rows], None, None, training=True, eps=pn.eps)
        torch.testing.assert_close(out[rows], pn.gamma * pn.scen_gamma[s] * ref + pn.beta + pn.scen_beta[s])
        torch.testing.assert_close(pn.running_mean[s], 0.5 * z[rows].mean(0))
        torch.testing.assert_close(pn.running_var[s], 0.5 + 0.5 * z[rows].var(0))
    # one row: not normalised by its own (zero) variance; moving statistics used and left alone
    assert pn.updates.tolist() == [0, 1, 1, 0]
    assert torch.isfinite(out).all() and out[7].abs().sum() > 0
    torch.testing.assert_close(pn.running_mean[3], torch.zeros(5))
    # a scenario's train output does not depend on the other scenarios' rows
    z2 = z.clone()
    z2[scen != 1] = torch.randn(int((scen != 1).sum()), 5)
    out2 = pn(z2, scen)
    torch.testing.assert_close(out2[scen == 1], out[scen == 1])
    assert not torch.allclose(out2[scen == 2], out[scen == 2])


def test_partitioned_norm_eval_uses_per_scenario_moving_statistics():
    torch.manual_seed(1)
    pn = PartitionedNorm(4, 3)
    for _ in range(5):
        pn(torch.randn(20, 3) * 2 + 5, torch.tensor([1] * 10 + [2] * 10))
    pn.eval()
    z, scen = torch.randn(6, 3), torch.tensor([1, 2, 0, 3, 1, 2])
    out = pn(z, scen)
    mean, var = pn.moving_stats()
    torch.testing.assert_close(out, (z - mean[scen]) / torch.sqrt(var[scen] + pn.eps))
    # never-trained slots (0: unknown, 3) fall back to the all-rows moving statistics
    torch.testing.assert_close(mean[0], pn.global_mean)
    torch.testing.assert_close(mean[3], pn.global_mean)
    assert not torch.allclose(mean[1], pn.global_mean)
    torch.testing.assert_close(pn(z[:1], scen[:1]), out[:1])  # batch of one, same value


# --- STAR -----------------------------------------------------------------------------------
def test_star_eval_uses_the_scenarios_own_pn_statistics():
    spec = make_spec()
    model = _build("star", spec)
    _warm_up(model, spec)
    batch, _ = make_batch(spec, 32, seed=8)
    batch = _with_scenario(batch, torch.arange(32) % 4)
    with torch.no_grad():
        before = model(batch)
        model.pn.running_mean[2] += 1.0  # another scenario's statistics change
        model.pn.running_var[2] *= 3.0
        after = model(batch)
    other = batch.scenario != 2
    torch.testing.assert_close(after[other], before[other], atol=0, rtol=0)
    assert (after[~other] - before[~other]).abs().min() > 1e-6


def test_star_scenario_weights_start_at_ones_so_all_scenarios_share_the_fcn():
    spec = make_spec()
    model = _build("star", spec)
    for layer in [*model.fcn, model.task_out]:
        assert (layer.scen_weight == 1).all() and (layer.scen_bias == 0).all()
    assert (model.pn.scen_gamma == 1).all() and (model.pn.scen_beta == 0).all()
    batch, _ = make_batch(spec, 8, seed=9)
    model.eval()
    with torch.no_grad():
        model.scenario_emb.copy_(model.scenario_emb[1].expand_as(model.scenario_emb))  # same aux input
        outs = [model(_with_scenario(batch, torch.full((8,), s))) for s in range(4)]
        for s in range(1, 4):
            torch.testing.assert_close(outs[s], outs[0])  # fresh model: one FCN for all scenarios
        model.fcn[0].scen_weight[3, 0] += 0.5  # scenario 3's own weights move...
        assert not torch.allclose(model(_with_scenario(batch, torch.full((8,), 3))), outs[3])
        torch.testing.assert_close(model(_with_scenario(batch, torch.full((8,), 1))), outs[1])  # ...no one else's


def test_star_auxiliary_logit_is_added_per_task():
    spec = make_spec()
    model = _build("star", spec)
    batch, _ = make_batch(spec, 8, seed=10)
    model.eval()
    with torch.no_grad():
        base = model(batch)
        model.task_aux.biases[-1][1] += 0.75  # task 1's auxiliary output bias
        torch.testing.assert_close(model(batch), base + torch.tensor([0.0, 0.75]))


# --- SAR-Net --------------------------------------------------------------------------------
def test_sarnet_without_bias_features_has_no_debias_expert():
    model = _build("sarnet", make_spec())
    assert model.task_debias is None


def test_sarnet_gates_and_train_only_debias_expert():
    spec = make_spec()
    model = _build("sarnet", spec, debias_scenario=True)
    batch, _ = make_batch(spec, 16, seed=11)
    model.eval()
    model._gates = {}
    with torch.no_grad():
        out = model(batch)
    gates = model._gates["task_gates"]
    p = model.params
    assert gates.shape == (16, 2, p.n_scenario_experts + p.n_shared_experts)
    torch.testing.assert_close(gates.sum(-1), torch.ones(16, 2))
    model._gates = None
    with torch.no_grad():
        model.task_debias[:, 1] += 1.0
        torch.testing.assert_close(model(batch), out)  # eval: main network only
        model.train()
        shifted = model(batch)
        model.task_debias[:, 1] -= 1.0
        expected = torch.stack([torch.zeros(16), model.scenario_emb[batch.scenario].sum(1)], 1)
        torch.testing.assert_close(shifted - model(batch), expected)  # train: debias logit (of e_s) added


def test_sarnet_attends_to_the_sequence_and_empty_sequences_are_safe():
    spec = make_spec()
    model = _build("sarnet", spec)
    batch, _ = make_batch(spec, 6, seed=12)
    model.eval()
    ids = batch.sequences["genres"].clone()
    ids[0] = 0  # an empty sequence
    ids[1] = torch.tensor([3, 3, 3, 3, 3])
    with torch.no_grad():
        out = model(Batch(batch.categorical, batch.numeric, {"genres": ids}, batch.scenario))
        ids2 = ids.clone()
        ids2[1] = torch.tensor([5, 5, 5, 5, 5])
        out2 = model(Batch(batch.categorical, batch.numeric, {"genres": ids2}, batch.scenario))
    assert torch.isfinite(out).all()
    assert not torch.allclose(out[1], out2[1])


# --- M2M ------------------------------------------------------------------------------------
def test_m2m_meta_attention_is_a_softmax_over_the_samples_own_experts():
    spec = make_spec()
    model = _build("m2m", spec)
    a, _ = make_batch(spec, 12, seed=13)
    b, _ = make_batch(spec, 12, seed=14)
    model.eval()
    model._gates = {}
    with torch.no_grad():
        model(a)
        wa = model._gates["meta_attention"]
        model(splice(a, b, [0]))  # b, except row 0 from a
        wmix = model._gates["meta_attention"]
    model._gates = None
    assert wa.shape == (12, 2, model.params.n_experts)
    torch.testing.assert_close(wa.sum(-1), torch.ones(12, 2))  # over experts, per sample and task
    assert (wa > 0).all()
    torch.testing.assert_close(wmix[0], wa[0])  # the other samples of the batch play no part
    assert not torch.allclose(wmix[1:], wa[1:])
    assert not torch.allclose(wa[:, 0], wa[:, 1])  # task-specific


def test_m2m_meta_tower_weights_come_from_the_scenario_embedding():
    spec = make_spec()
    model = _build("m2m", spec)
    batch, _ = make_batch(spec, 8, seed=15)
    batch = _with_scenario(batch, torch.full((8,), 1))
    model.eval()
    with torch.no_grad():
        before = model(batch)
        model.scenario_emb[2] += 1.0  # another scenario's embedding: no effect on scenario 1
        torch.testing.assert_close(model(batch), before)
        model.scenario_emb[1] += 1.0
        assert not torch.allclose(model(batch), before)


# --- PEPNet ---------------------------------------------------------------------------------
def _gate_outputs(model):
    outs = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: outs.append(o)) for m in model.modules()
             if isinstance(m, GateNU)]
    return outs, hooks


def test_pepnet_gate_inputs_are_detached_and_gates_lie_in_0_2():
    spec = make_spec()
    model = _build("pepnet", spec)
    batch, labels = make_batch(spec, 16, seed=16)
    model.train()
    outs, hooks = _gate_outputs(model)
    logits = model(batch)
    for h in hooks:
        h.remove()
    assert len(outs) == 1 + len(model.towers)  # EPNet + one PPNet gate per tower layer
    for o in outs:
        assert (o > 0).all() and (o < 2).all()
    table = model.embedding.embedding.table.weight
    # the gate path sends no gradient into the embeddings (stop-gradient on E, prior ids and O_ep)...
    gate_sum = sum(o.sum() for o in outs)
    grads = torch.autograd.grad(gate_sum, [table, model.embedding.numeric_vectors, model.ep_gate.mlp.weights[0],
                                           model.scenario_emb], allow_unused=True, retain_graph=True)
    assert all(g is None or g.abs().sum() == 0 for g in grads[:2])
    assert grads[2].abs().sum() > 0 and grads[3].abs().sum() > 0  # ...but trains the gates and e_s
    # the PPNet gates do not reach back into EPNet either (O_ep is detached at their input)
    ppnet_sum = sum(o.sum() for o in outs[1:])
    g_ep = torch.autograd.grad(ppnet_sum, model.ep_gate.mlp.weights[0], allow_unused=True, retain_graph=True)[0]
    assert g_ep is None or g_ep.abs().sum() == 0
    # embeddings still learn from the main path
    loss = HeadLosses(model.heads, spec.task_names)(logits, labels).sum()
    g_main = torch.autograd.grad(loss, table)[0]
    assert g_main.abs().sum() > 0


def test_pepnet_epnet_scales_each_field():
    spec = make_spec()
    model = _build("pepnet", spec)
    batch, _ = make_batch(spec, 4, seed=17)
    outs, hooks = _gate_outputs(model)
    model.eval()
    with torch.no_grad():
        model(batch)
    for h in hooks:
        h.remove()
    assert outs[0].shape == (4, 1, model.embedding.n_fields)
    assert outs[1].shape == (4, 2, model.embedding.n_fields * EMBED)  # per task, on the tower input
