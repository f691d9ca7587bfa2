"""Registry-wide research contracts (issue: correct research results): every registered model declares the
layer GradNorm normalises, and it is a shared weight matrix that every task's loss reaches; balancers learn
each head's kind from the heads. A new model or balancer is checked by being registered."""

from __future__ import annotations

import pytest
import torch

from helpers import make_batch, make_spec
from polyrec.models import MODELS, build_model
from polyrec.train.losses import HeadLosses


def _grad_of(loss: torch.Tensor, param: torch.nn.Parameter) -> torch.Tensor | None:
    (grad,) = torch.autograd.grad(loss, [param], retain_graph=True, allow_unused=True)
    return grad


@pytest.mark.parametrize("name", sorted(MODELS))
def test_last_shared_layer_is_a_shared_matrix_every_task_reaches(name):
    spec = make_spec()
    torch.manual_seed(0)
    model = build_model(name, spec, 8, {})
    layer = model.last_shared_layer()
    shared = model.shared_parameters()
    if layer is None:  # a model that shares nothing (singletask) says so, and has no shared parameters
        assert shared == []
        return
    assert any(layer is p for p in shared), "the declared layer is not among the shared parameters"
    assert layer.dim() >= 2 and layer.shape[-2] > 1, f"not a weight matrix: {tuple(layer.shape)}"
    model.train()
    batch, labels = make_batch(spec, 64, seed=3)
    losses = HeadLosses(model.heads, spec.task_names)(model(batch), labels)
    trained = [h.name for h in model.heads if h.train]
    assert len(losses) == len(trained)
    for head, loss in zip(trained, losses):
        grad = _grad_of(loss, layer)
        assert grad is not None and grad.abs().sum() > 0, f"{head}'s loss does not reach {tuple(layer.shape)}"


def test_topk_models_declare_their_last_shared_layer():
    from test_topk_models import TASKS, build, pairs

    from polyrec.topk.models import topk_model_names

    for name in topk_model_names():
        try:
            model = build(name)
        except Exception as exc:  # a CTR model the adapter cannot run on id pairs is not a top-K model
            pytest.fail(f"{name}: {exc}")
        layer = model.last_shared_layer()
        if layer is None:
            assert model.shared_parameters() == [], name
            continue
        assert any(layer is p for p in model.shared_parameters()), name
        assert layer.dim() >= 2, name
        users, items, labels = pairs(16, seed=1)
        model.train()
        cache = model.encode()
        if model.pairwise:
            pos = model.score(users, items, cache)[:, 0]
            neg = model.score(users, items.roll(1), cache)[:, 0]
            per_head = [torch.nn.functional.softplus(neg - pos).mean()]
        else:
            per_head = list(HeadLosses(model.heads, TASKS)(model.score(users, items, cache), labels))
        for loss in per_head:
            grad = _grad_of(loss, layer)
            assert grad is not None and grad.abs().sum() > 0, name


def test_gradnorm_uses_the_declared_layer_not_parameter_order():
    """STAR's parameter order ends in a per-scenario bias, M3oE's in the per-task experts: the old guess."""
    from polyrec.balance.gradnorm import gradnorm_layer, last_shared_layer
    from polyrec.models.base import SharedParameters

    spec = make_spec()
    for name, expect in (("star", lambda m: m.fcn[-1].weight), ("m3oe", lambda m: m.experts.weights[-1]),
                         ("sapenet", lambda m: m.levels[-1].shared_experts.weights[-1]),
                         ("omoe", lambda m: m.experts.weights[-1])):
        model = build_model(name, spec, 8, {})
        shared = SharedParameters(model.shared_parameters(), model.last_shared_layer())
        assert gradnorm_layer(shared)[0] is expect(model), name
        assert last_shared_layer(list(shared))[0] is not expect(model), f"{name}: the guess was right after all"


def test_balancers_learn_task_kinds_from_the_heads_in_a_real_run(tiny_recipe, tmp_path, monkeypatch):
    """A rating (regression) head trained with uncertainty weighting gets the regression form."""
    from helpers import quiet

    import polyrec.balance.uncertainty as uncertainty
    from polyrec.config import load_config
    from polyrec.runs import train_run

    seen: list[list[str]] = []
    original = uncertainty.UncertaintyBalancer.__init__

    def spy(self, task_names, params, task_kinds=None):
        seen.append(list(task_kinds) if task_kinds is not None else None)
        original(self, task_names, params, task_kinds)

    monkeypatch.setattr(uncertainty.UncertaintyBalancer, "__init__", spy)
    cfg = load_config(None, ["data.dataset=tiny-synthetic", "model.name=sharedbottom", "model.embed_dim=4",
                             "model.bottom_dims=[8]", "model.tower_dims=[4]", "train.epochs=1",
                             "train.balance=uncertainty", "train.progress=false", "train.tensorboard=false",
                             "train.monitor=click/auc",
                             "data.tasks=[click, {name: score, column: ts, type: regression}]"])
    run = train_run(cfg, tmp_path / "run", log=quiet)
    assert seen == [["binary", "regression"]]
    assert run.metrics["test"]["heads"]["score"]["rmse"] >= 0



# --- weight decay: what each registered model decays -----------------------------------------------------------
DECAYED = {  # train.weight_decay touches these and nothing else (embedding tables: train.embedding_weight_decay)
    "aitm": ["towers.weights.0", "towers.weights.1", "towers.weights.2", "transfer.0.net.0.weight",
             "ait.0.h.weights.0", "task_outputs.weights.0"],
    "escm2": ["towers.weights.0", "towers.weights.1", "towers.weights.2"],
    "esmm": ["towers.weights.0", "towers.weights.1", "towers.weights.2"],
    "fdn": ["shared_extractors.weights.0", "task_extractors.weights.0", "task_aux_heads.weights.0",
            "towers.weights.0", "towers.weights.1"],
    "m2m": ["experts.weights.0", "meta_attention.w0", "meta_attention.generator.weight", "towers.0.w0",
            "towers.0.generator.weight", "towers.1.w0", "towers.1.generator.weight", "towers_out.weights.0"],
    "m3oe": ["fusion.star.weight", "fusion.main.net.0.weight", "fusion.skip.net.0.weight", "experts.weights.0",
             "pair_gates.weight", "scenario_view.experts.weights.0", "task_view.experts.weights.0",
             "towers.weights.0", "towers.weights.1"],
    "mmoe": ["experts.weights.0", "experts.weights.1", "task_gates.weight", "towers.weights.0", "towers.weights.1"],
    "svd": [], "svdpp": [],  # factors and biases are embedding tables; their L2 is the model's own (model.reg)
    "omoe": ["experts.weights.0", "experts.weights.1", "gate.weight", "towers.weights.0", "towers.weights.1"],
    "pepnet": ["ep_gate.mlp.weights.0", "ep_gate.mlp.weights.1", *(f"task_gates.{i}.mlp.weights.{j}" for i in range(3)
                                                                   for j in range(2)),
               "towers.0.weights.0", "towers.1.weights.0", "towers.2.weights.0"],
    "ple": [*(f"levels.{i}.{part}" for i in range(2) for part in (
        "shared_experts.weights.0", "task_experts.weights.0", "task_gates.weights.0", "shared_gate.weight")
        if not (i == 1 and part == "shared_gate.weight")), "towers.weights.0", "towers.weights.1"],
    "sapenet": ["attention.qkv.weight", "attention.out.weight", "fusion.star.weight", "fusion.main.net.0.weight",
                "fusion.skip.net.0.weight", *(f"levels.{i}.{part}" for i in range(2) for part in (
                    "shared_experts.weights.0", "task_experts.weights.0", "task_gates.weights.0", "shared_gate.weight")
                    if not (i == 1 and part == "shared_gate.weight")),
                "scenario_view.experts.weights.0", "task_view.experts.weights.0", "towers.weights.0", "towers.weights.1"],
    "sarnet": ["query.weight", "shared_experts.weights.0", "scenario_experts.weights.0", "task_gates.weights.0",
               "towers.weights.0", "towers.weights.1"],
    "sharedbottom": ["bottom.net.0.weight", "bottom.net.2.weight", "towers.weights.0", "towers.weights.1"],
    "singletask": ["towers.weights.0", "towers.weights.1", "towers.weights.2"],
    "star": ["fcn.0.weight", "fcn.1.weight", "task_out.weight", "task_aux.weights.0", "task_aux.weights.1"],
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_weight_decay_touches_weight_matrices_only(name):
    from polyrec.config import TrainConfig
    from polyrec.train.optim import build_optimizer, decayed_parameter_names

    assert name in DECAYED, f"list what {name} decays in DECAYED"
    model = build_model(name, make_spec(), 8, {})
    assert decayed_parameter_names(model) == DECAYED[name]
    log_var = torch.nn.Parameter(torch.zeros(2))  # a balancer's own parameter (uncertainty's log-variances)
    opt = build_optimizer(model, TrainConfig(weight_decay=0.1, sparse_embeddings=False), [log_var])
    by_id = {id(p): n for n, p in model.named_parameters()}
    decayed = sorted(by_id[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"])
    assert decayed == sorted(DECAYED[name])
    assert all(g["weight_decay"] == 0 for g in opt.param_groups if any(p is log_var for p in g["params"]))
    in_groups = [p for g in opt.param_groups for p in g["params"]]
    assert len(in_groups) == len(list(model.parameters())) + 1  # every parameter in exactly one group


# --- loss forms and deviations ------------------------------------------------------------------------------
def test_models_default_to_their_papers_loss_reduction():
    from typer.testing import CliRunner

    from polyrec.cli import app
    from polyrec.config import load_config

    assert load_config(None, ["model.name=sapenet"]).train.loss_reduction == "scenario_task"
    assert load_config(None, ["model.name=m3oe"]).train.loss_reduction == "scenario_task"
    assert load_config(None, ["model.name=mmoe"]).train.loss_reduction == "task"
    assert load_config(None, ["model.name=sapenet", "train.loss_reduction=task"]).train.loss_reduction == "task"
    out = CliRunner().invoke(app, ["models", "list"], terminal_width=300).output
    sapenet_line = next(line for line in out.splitlines() if line.strip("│ ").startswith("sapenet"))
    assert "scenario_task" in sapenet_line


def test_pooled_loss_variants_are_bench_rows():
    from polyrec.bench.spec import make_row

    row = make_row("sapenet-pooled-loss", "sapenet-pooled-loss")
    assert row.model == "sapenet" and row.set == {"train.loss_reduction": "task"}


def test_bench_tables_print_the_models_deviations():
    from polyrec.bench.aggregate import deviation_lines

    lines = "\n".join(deviation_lines(["escm2", "mmoe", "fdn"]))
    assert "`escm2`: counterfactual weight" in lines and "`fdn`: orthogonality" in lines and "mmoe" not in lines
    assert deviation_lines(["mmoe"]) == []
